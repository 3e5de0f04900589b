"""Shared fixtures: real server processes on loopback, and users on them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.server import ServerProcess


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the session; tests isolate themselves by using their own users."""
    srv = ServerProcess(tmp_path_factory.mktemp("server") / "data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for tests that stop, kill or restart it."""
    srv = ServerProcess(tmp_path / "data")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def user(server: ServerProcess) -> Iterator[tuple[str, httpx.Client]]:
    name, token = server.add_user()
    with server.client(token) as c:
        yield name, c


@pytest.fixture
def mount(server: ServerProcess, tmp_path: Path) -> Iterator["MountProcess"]:
    """A mounted drive of a new user on the session's server."""
    from tests.fixtures.mount import MountProcess

    name, token = server.add_user()
    m = MountProcess(server, name, token, tmp_path / "m")
    m.mount()
    yield m
    m.cleanup()


def _two_mounts(srv: ServerProcess, root: Path) -> Iterator[tuple["MountProcess", "MountProcess"]]:
    from tests.fixtures.mount import MountProcess

    name, token = srv.add_user()
    a = MountProcess(srv, name, token, root / "a", device="deviceA")
    b = MountProcess(srv, name, token, root / "b", device="deviceB")
    try:
        a.mount()
        b.mount()
        yield a, b
    finally:
        a.cleanup()
        b.cleanup()


@pytest.fixture
def two_devices(server: ServerProcess, tmp_path: Path) -> Iterator[tuple["MountProcess", "MountProcess"]]:
    """Two mounts of one account on this machine, each with its own cache and device name."""
    yield from _two_mounts(server, tmp_path)


@pytest.fixture
def two_devices_own_server(fresh_server: ServerProcess, tmp_path: Path) -> Iterator[tuple["MountProcess", "MountProcess"]]:
    """Two devices on a server of the test's own, which the test may stop and start."""
    yield from _two_mounts(fresh_server, tmp_path)


@pytest.fixture
def owner_and_recipient(server: ServerProcess, tmp_path: Path) -> Iterator[tuple["MountProcess", "MountProcess"]]:
    """Two users, each with their own mounted drive."""
    from tests.fixtures.mount import MountProcess

    mounts = []
    try:
        for who in ("owner", "recipient"):
            name, token = server.add_user()
            m = MountProcess(server, name, token, tmp_path / who, device=f"{who}-device")
            m.mount()
            mounts.append(m)
        yield mounts[0], mounts[1]
    finally:
        for m in mounts:
            m.cleanup()
