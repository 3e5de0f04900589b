"""Fixtures for the scaled-out backend's own tests: servers on the session's PostgreSQL and SeaweedFS."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.scaled import ScaledBackend
from tests.server.conftest import ConfiguredServer


@pytest.fixture
def scaled_server(scaled_backend: ScaledBackend, tmp_path: Path) -> Iterator[Callable[..., ConfiguredServer]]:
    """Start servers of the test's own on the scaled backend: `start(*options, env=...)`. Without `env`
    each gets a new database and key prefix; pass another server's `extra_env` to share them."""
    started: list[ConfiguredServer] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ConfiguredServer:
        srv = ConfiguredServer(tmp_path / f"data{len(started)}", args=args)
        srv.extra_env.update(env if env is not None else scaled_backend.env())
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()
