"""Shared fixtures: real server processes on loopback, and users on them.

DRIVE_TEST_BACKEND picks what every server runs on: `embedded` (default: SQLite and a blob folder in its
data directory) or `scaled` (PostgreSQL and SeaweedFS's S3, one of each for the session, a database and a
key prefix per server). Tests marked `embedded_only` look into the embedded files and skip when scaled;
tests marked `needs_scaled` need PostgreSQL and S3 and skip when embedded.

Tests marked `client_side` are about what the client does with the server calls it makes (crashes, offline
work, sparse copies, pins, edit records, write-back batching, programs run on the mount); those calls are
tested on each backend by tests/server, tests/remote, tests/scaled and the other end-to-end tests.
scripts/test runs them once, in the embedded pass, to keep CI within its time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import tests.fixtures.server as server_fixture
from tests.fixtures.scaled import ScaledBackend
from tests.fixtures.mount import MountProcess
from tests.fixtures.server import ServerProcess

BACKEND = os.environ.get("DRIVE_TEST_BACKEND", "embedded")


def pytest_configure(config: pytest.Config) -> None:
    if BACKEND not in ("embedded", "scaled"):
        raise pytest.UsageError(f"DRIVE_TEST_BACKEND={BACKEND!r}: use embedded or scaled")
    config.addinivalue_line("markers", "embedded_only: looks into SQLite or the blob folder (skipped when scaled)")
    config.addinivalue_line("markers", "needs_scaled: needs PostgreSQL and S3 (run with DRIVE_TEST_BACKEND=scaled)")
    config.addinivalue_line("markers", "client_side: the client's own behaviour, the same on either backend "
                                       "(scripts/test runs it in the embedded pass only)")


def pytest_report_header(config: pytest.Config) -> str:
    return f"drivefs test backend: {BACKEND} (DRIVE_TEST_BACKEND)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if BACKEND == "scaled" and item.get_closest_marker("embedded_only"):
            item.add_marker(pytest.mark.skip(reason="embedded backend only (SQLite, the server's own blob URLs)"))
        if BACKEND == "embedded" and item.get_closest_marker("needs_scaled"):
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL and S3: run with DRIVE_TEST_BACKEND=scaled"))


@pytest.fixture(scope="session")
def scaled_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaledBackend]:
    """The session's PostgreSQL and SeaweedFS, started on first use and always stopped."""
    backend = ScaledBackend(tmp_path_factory.mktemp("scaled"))
    try:
        yield backend
    finally:
        backend.stop()


@pytest.fixture(scope="session", autouse=True)
def _servers_on_backend(request: pytest.FixtureRequest) -> Iterator[None]:
    """With DRIVE_TEST_BACKEND=scaled, every server process of the session runs on the scaled backend."""
    if BACKEND != "scaled":
        yield
        return
    backend: ScaledBackend = request.getfixturevalue("scaled_backend")
    server_fixture.provision = backend.provision
    try:
        yield
    finally:
        server_fixture.provision = None


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


def _one_mount(srv: ServerProcess, root: Path) -> Iterator[MountProcess]:
    name, token = srv.add_user()
    m = MountProcess(srv, name, token, root / "m")
    m.mount()
    yield m
    m.cleanup()


@pytest.fixture
def mount(server: ServerProcess, tmp_path: Path) -> Iterator[MountProcess]:
    """A mounted drive of a new user on the session's server."""
    yield from _one_mount(server, tmp_path)


@pytest.fixture
def mount_own_server(fresh_server: ServerProcess, tmp_path: Path) -> Iterator[MountProcess]:
    """A mounted drive on a server of the test's own, which the test may stop and start."""
    yield from _one_mount(fresh_server, tmp_path)


def _two_mounts(srv: ServerProcess, root: Path) -> Iterator[tuple[MountProcess, MountProcess]]:
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
def two_devices(server: ServerProcess, tmp_path: Path) -> Iterator[tuple[MountProcess, MountProcess]]:
    """Two mounts of one account on this machine, each with its own cache and device name."""
    yield from _two_mounts(server, tmp_path)


@pytest.fixture
def two_devices_own_server(fresh_server: ServerProcess, tmp_path: Path) -> Iterator[tuple[MountProcess, MountProcess]]:
    """Two devices on a server of the test's own, which the test may stop and start."""
    yield from _two_mounts(fresh_server, tmp_path)


@pytest.fixture
def owner_and_recipient(server: ServerProcess, tmp_path: Path) -> Iterator[tuple[MountProcess, MountProcess]]:
    """Two users, each with their own mounted drive."""
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
