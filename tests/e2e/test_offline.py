"""The server goes away: cached files stay usable, changes queue, and everything converges when it returns."""

from __future__ import annotations

import errno
import json
import os
import time

import pytest

from tests.e2e.test_sync import eventually, read_or_none

pytestmark = pytest.mark.client_side  # once, in the embedded pass: see tests/conftest.py


def status(m) -> dict:
    return json.loads(m.drive("status", str(m.path), "--json").stdout)[0]


def test_offline_edits_queue_and_converge(two_devices_own_server):
    a, b = two_devices_own_server
    srv = a.server
    (a.path / "keep.txt").write_text("cached")
    (a.path / "dir").mkdir()
    a.flush()
    eventually(lambda: read_or_none(b.path / "keep.txt") == b"cached", what="setup on B")
    os.listdir(b.path / "dir")

    srv.stop()
    assert (a.path / "keep.txt").read_text() == "cached"  # cached data stays readable
    (a.path / "offline.txt").write_text("written offline")
    os.rename(a.path / "keep.txt", a.path / "dir" / "kept.txt")
    (a.path / "dir" / "new").mkdir()
    eventually(lambda: not status(a)["online"] and status(a)["pending_ops"] > 0, timeout=20,
               what="A reports offline with queued changes")
    # A new file is a create op and new content, but one item: a new file, a rename and a new folder.
    assert (status(a)["pending_items"], status(a)["pending_files"], status(a)["pending_ops"]) == (3, 1, 3)
    srv.start()
    eventually(lambda: read_or_none(b.path / "offline.txt") == b"written offline", timeout=30, what="B converges")
    eventually(lambda: read_or_none(b.path / "dir" / "kept.txt") == b"cached", timeout=10, what="rename on B")
    eventually(lambda: (b.path / "dir" / "new").is_dir(), timeout=10, what="mkdir on B")
    assert not (b.path / "keep.txt").exists()


def test_uncached_read_fails_fast_when_offline(fresh_server, tmp_path):
    from tests.fixtures.mount import MountProcess

    name, token = fresh_server.add_user()
    mount = MountProcess(fresh_server, name, token, tmp_path / "m")
    mount.mount()
    try:
        _uncached_read(mount)
    finally:
        mount.cleanup()


def _uncached_read(mount):
    data = os.urandom(2 * 2**20)
    (mount.path / "f.bin").write_bytes(data)
    mount.unmount()
    import shutil

    shutil.rmtree(mount.cache_dir)  # a cold cache that knows the file but holds none of its bytes
    mount.mount()
    os.listdir(mount.path)
    mount.server.stop()
    try:
        start = time.monotonic()
        with pytest.raises(OSError) as e:
            (mount.path / "f.bin").read_bytes()
        assert e.value.errno == errno.EIO
        assert time.monotonic() - start < 20  # one retry budget, not one per page the kernel asks again
    finally:
        mount.server.start()


def edit_on_both_while_apart(a, b, name: str, on_a: str, on_b: str) -> None:
    """`name` written on A and seen on B, then edited on both while their server is stopped (it is
    left stopped): the next commits meet as a conflict."""
    (a.path / name).write_text("base")
    a.flush()
    eventually(lambda: read_or_none(b.path / name) == b"base", what="base on B")
    a.server.stop()
    (a.path / name).write_text(on_a)
    (b.path / name).write_text(on_b)


def test_concurrent_offline_edits_make_one_conflicted_copy(two_devices_own_server):
    a, b = two_devices_own_server
    srv = a.server
    edit_on_both_while_apart(a, b, "report.txt", "edited on A", "edited on B, offline")
    srv.start()
    a.flush()
    b.flush()
    a.flush()

    def settled(m) -> bool:
        names = [n for n in os.listdir(m.path) if n.startswith("report")]
        return len(names) == 2

    eventually(lambda: settled(a) and settled(b), timeout=20, what="one conflicted copy on both devices")
    for m in (a, b):
        names = sorted(n for n in os.listdir(m.path) if n.startswith("report"))
        copy = [n for n in names if "conflicted copy from device" in n]
        assert len(copy) == 1 and copy[0].endswith(".txt"), names
        contents = {(m.path / "report.txt").read_text(), (m.path / copy[0]).read_text()}
        assert contents == {"edited on A", "edited on B, offline"}
    assert (a.path / "report.txt").read_text() == (b.path / "report.txt").read_text()


def test_folder_rename_against_new_file_inside_keeps_both(two_devices_own_server):
    a, b = two_devices_own_server
    srv = a.server
    (a.path / "Folder").mkdir()
    (a.path / "Folder" / "old.txt").write_text("old")
    a.flush()
    eventually(lambda: read_or_none(b.path / "Folder" / "old.txt") == b"old", what="setup on B")
    srv.stop()
    os.rename(a.path / "Folder", a.path / "Renamed")
    (b.path / "Folder" / "new.txt").write_text("made on B while apart")
    srv.start()
    a.flush()
    b.flush()
    for m in (a, b):
        eventually(lambda: read_or_none(m.path / "Renamed" / "new.txt") == b"made on B while apart", timeout=15,
                   what=f"new file inside the renamed folder on {m.device}")
        assert (m.path / "Renamed" / "old.txt").read_text() == "old"
        eventually(lambda: not (m.path / "Folder").exists(), timeout=10, what=f"old name gone on {m.device}")
