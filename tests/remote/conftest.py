"""Fixtures for the remote part: API clients for fresh users on the real server processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from remote.client import ApiClient, RetryPolicy
from tests.fixtures.server import ServerProcess


def connect(server: ServerProcess, token: str, **kw) -> ApiClient:
    kw.setdefault("device", "test-device")
    kw.setdefault("retry", RetryPolicy(max_total_s=10.0))
    return ApiClient(server.url, token, **kw)


@pytest.fixture
async def api(server: ServerProcess) -> AsyncIterator[ApiClient]:
    """An ApiClient for a new user on the session's server."""
    _name, token = server.add_user()
    async with connect(server, token) as client:
        yield client
