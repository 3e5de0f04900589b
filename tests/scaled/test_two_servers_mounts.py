"""Two server processes on one PostgreSQL and one S3 store, a mount on each: changes propagate between them."""

from __future__ import annotations

import os

import pytest

from tests.e2e.test_sync import eventually, read_or_none
from tests.fixtures.mount import MountProcess

pytestmark = pytest.mark.needs_scaled


def test_mounts_on_two_servers_see_each_others_changes(scaled_server, tmp_path):
    first = scaled_server()
    second = scaled_server(env=dict(first.extra_env))
    name, token = first.add_user()
    a = MountProcess(first, name, token, tmp_path / "a", device="on-first")
    b = MountProcess(second, name, token, tmp_path / "b", device="on-second")
    try:
        a.mount()
        b.mount()
        os.listdir(a.path)
        os.listdir(b.path)
        data = os.urandom(3 * 2**20)
        (a.path / "via-first.bin").write_bytes(data)
        eventually(lambda: read_or_none(b.path / "via-first.bin") == data, timeout=5, what="A's file on B")
        (b.path / "via-second").mkdir()
        (b.path / "via-second" / "note.txt").write_text("from the second server")
        eventually(lambda: read_or_none(a.path / "via-second" / "note.txt") == b"from the second server",
                   timeout=5, what="B's file on A")
        os.rename(a.path / "via-first.bin", a.path / "via-second" / "moved.bin")
        eventually(lambda: read_or_none(b.path / "via-second" / "moved.bin") == data, timeout=5,
                   what="A's rename on B")
    finally:
        a.cleanup()
        b.cleanup()
