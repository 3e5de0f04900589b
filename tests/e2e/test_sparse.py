"""Sparse local copies on a real mount: a write into a big file that is not on this device fetches only
the chunks it touches, and every way of reading the copy afterwards (reads, commits, a restart, a kill,
a truncate, a conflict, an open handle outliving the copy, a pin) sees the file's bytes, never a hole's
zeros."""

from __future__ import annotations

import errno
import os
import random
import shutil
import time

import pytest

from cache.chunker import MAX_CHUNK
from tests.e2e.helpers import server_listing
from tests.e2e.test_edits import on_server
from tests.e2e.test_offline import status
from tests.e2e.test_sync import eventually, read_or_none

pytestmark = pytest.mark.client_side  # once, in the embedded pass: see tests/conftest.py

MiB = 2**20
SIZE = 24 * MiB


def edit(path, offset: int, data: bytes, model: bytearray | None = None) -> None:
    """Write `data` at `offset` of the file, closed after an fsync; and into `model`, if given."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)
        os.fsync(f.fileno())
    if model is not None:
        model[offset:offset + len(data)] = data


def uncached(m, name: str, seed: int, size: int = SIZE) -> bytearray:
    """A file of random bytes on the server that this device holds nothing of (its cache is new)."""
    data = bytearray(random.Random(seed).randbytes(size))
    (m.path / name).write_bytes(data)
    m.flush()
    m.unmount()
    shutil.rmtree(m.cache_dir)
    m.mount()
    assert status(m)["fetched_bytes"] == 0
    return data


def on_both(writer, other, seed: int) -> bytearray:
    """big.bin of random bytes written on `writer` and listed (not read) on `other`, whose local copy will
    be sparse once something writes into it there."""
    data = bytearray(random.Random(seed).randbytes(SIZE // 2))
    (writer.path / "big.bin").write_bytes(data)
    writer.flush()
    eventually(lambda: (other.path / "big.bin").exists(), what="the file on the other device")
    return data


def assert_no_hole_was_read(m) -> None:
    log = (m.cache_dir / "mount.log").read_text()
    assert "where no change was noted" not in log and "shorter than its holes" not in log


def test_a_write_into_an_uncached_big_file_fetches_only_around_it(mount):
    m = mount
    data = uncached(m, "big.bin", seed=1)
    edit(m.path / "big.bin", 13 * MiB + 5, b"x", data)
    m.flush()
    # The write fetched the chunk it falls in; the commit cut from there until the cuts met the old
    # ones, filling what it read. Nothing else came.
    s = status(m)
    assert 0 < s["filled_bytes"] <= s["fetched_bytes"] <= min(3 * MAX_CHUNK, SIZE // 3)
    assert on_server(m, "big.bin") == data
    # The rest is read through the chunk cache, as if there were no local copy: it stays sparse.
    assert (m.path / "big.bin").read_bytes() == data
    assert status(m)["filled_bytes"] == s["filled_bytes"]
    assert_no_hole_was_read(m)


def test_writes_reads_and_truncations_of_a_sparse_copy_match_a_model(mount):
    """Random writes, reads, truncations and appends, flushed now and then: every read and every commit
    gives the model's bytes (a hole read as zeros, or a fill over written bytes, would show)."""
    m = mount
    rng = random.Random(3)
    model = uncached(m, "f.bin", seed=2)
    path = m.path / "f.bin"
    for step in range(30):
        kind = rng.choice(["write", "write", "read", "read", "truncate", "append"])
        if kind == "write":
            offset = rng.randrange(len(model) + MiB)
            data = rng.randbytes(rng.choice([1, 5000, 700_000, 3 * MiB]))
            with open(path, "r+b") as f:
                f.seek(offset)
                f.write(data)
            model.extend(bytes(max(0, offset - len(model))))
            model[offset:offset + len(data)] = data
        elif kind == "read":
            offset, n = rng.randrange(len(model)), rng.choice([1, 4096, 2 * MiB])
            with open(path, "rb") as f:
                f.seek(offset)
                assert f.read(n) == model[offset:offset + n], f"step {step}: read at {offset}"
        elif kind == "truncate":  # often into the middle of a chunk not fetched yet
            size = rng.randrange(MiB, len(model))
            os.truncate(path, size)
            model = model[:size]
            if rng.random() < 0.5:
                grow = size + rng.randrange(1, 2 * MiB)
                os.truncate(path, grow)
                model += bytes(grow - size)
        else:
            more = rng.randbytes(rng.randrange(1, MiB))
            with open(path, "ab") as f:
                f.write(more)
            model += more
        if step % 7 == 6:
            m.flush()
            assert on_server(m, "f.bin") == model, f"after step {step} ({kind})"
    m.flush()
    assert on_server(m, "f.bin") == model
    assert status(m)["filled_bytes"] < SIZE  # it stayed sparse: not everything was fetched
    assert path.read_bytes() == model
    assert_no_hole_was_read(m)


def test_a_sparse_copy_survives_a_kill_and_a_restart(mount):
    m = mount
    data = uncached(m, "big.bin", seed=4)
    edit(m.path / "big.bin", 9 * MiB, b"before the kill", data)
    os.truncate(m.path / "big.bin", 18 * MiB + 12345)  # inside a chunk that was never fetched
    data = data[:18 * MiB + 12345]
    m.kill()
    m.mount()
    assert (m.path / "big.bin").stat().st_size == len(data)
    with open(m.path / "big.bin", "rb") as f:
        f.seek(14 * MiB)
        assert f.read(MiB) == data[14 * MiB:15 * MiB]  # a hole, filled after the restart
    edit(m.path / "big.bin", 2 * MiB, b"after", data)
    m.unmount()
    m.mount()
    m.flush()
    assert on_server(m, "big.bin") == data
    assert (m.path / "big.bin").read_bytes() == data
    assert_no_hole_was_read(m)


def test_with_the_server_away_a_hole_cannot_be_read_but_what_was_fetched_can(mount_own_server):
    m, server = mount_own_server, mount_own_server.server
    data = uncached(m, "big.bin", seed=5)
    edit(m.path / "big.bin", 5 * MiB, b"edited", data)
    m.flush()
    server.kill()
    with open(m.path / "big.bin", "rb") as f:
        f.seek(5 * MiB)
        assert f.read(6) == b"edited"
        f.seek(20 * MiB)
        started = time.monotonic()
        with pytest.raises(OSError) as e:
            f.read(4096)
        assert e.value.errno == errno.EIO
        assert time.monotonic() - started < 20  # not one retry budget per page the kernel asks again
    server.start()
    # Right after a failure, reads of the copy fail at once for a moment (the kernel retries a
    # failed read page by page); then they work again.
    eventually(lambda: read_or_none(m.path / "big.bin") == data, timeout=30, what="reads with the server back")
    assert on_server(m, "big.bin") == data


def test_two_sparse_copies_edited_against_each_other_keep_both_versions_whole(two_devices):
    """A commits its edit only after B's: its sparse copy, based on the old version, becomes a conflicted
    copy, which is a new file, so all of it is filled and sent."""
    a, b = two_devices
    data = on_both(a, b, seed=6)
    a.unmount()
    shutil.rmtree(a.cache_dir)
    a.mount()
    ours_a, theirs = bytearray(data), bytearray(data)
    with open(a.path / "big.bin", "r+b") as f:  # both copies are sparse: neither device read the file
        f.seek(9 * MiB)
        f.write(b"from A")
        f.flush()  # in A's copy; not committed while the file is open for writing
        ours_a[9 * MiB:9 * MiB + 6] = b"from A"
        edit(b.path / "big.bin", 3 * MiB, b"from B", theirs)
        b.flush()
        time.sleep(2)  # A's feed hears of B's version meanwhile (p95 well under 1 s)
    a.flush()
    names = server_listing(a.server.url, a.token, "/")
    copies = [n for n in names if n != "big.bin"]
    assert len(copies) == 1 and "conflict" in copies[0], names
    assert on_server(a, "big.bin") == theirs
    assert on_server(a, copies[0]) == ours_a
    eventually(lambda: read_or_none(b.path / copies[0]) == ours_a, what="the conflicted copy on B")
    assert (a.path / copies[0]).read_bytes() == ours_a
    for m in (a, b):
        assert (m.path / "big.bin").read_bytes() == theirs, m.device
        assert_no_hole_was_read(m)


def test_an_open_handle_reads_its_copy_after_another_device_replaces_the_file(two_devices):
    a, b = two_devices
    old = on_both(b, a, seed=7)
    edit(a.path / "big.bin", MiB, b"A's edit", old)  # A's copy is sparse
    a.flush()
    eventually(lambda: read_or_none(b.path / "big.bin") == old, what="A's edit on B")
    with open(a.path / "big.bin", "rb") as f:
        assert f.read(16) == old[:16]
        new = random.Random(8).randbytes(SIZE // 2 + 7)
        (b.path / "big.bin").write_bytes(new)
        b.flush()
        # Waited for by its size: reading the new version here would fill the kernel's page cache of
        # the file, which every handle shares.
        eventually(lambda: (a.path / "big.bin").stat().st_size == len(new), what="B's version on A")
        f.seek(8 * MiB)  # a hole of the copy the handle opened, which is gone from the cache now
        assert f.read(MiB) == old[8 * MiB:9 * MiB]
    assert (a.path / "big.bin").read_bytes() == new


def test_a_sparse_copy_edited_here_while_deleted_elsewhere_is_put_back_whole(two_devices):
    a, b = two_devices
    data = on_both(b, a, seed=9)
    with open(a.path / "big.bin", "r+b") as f:  # A's copy is sparse
        f.seek(7 * MiB)
        f.write(b"kept")
        f.flush()  # in A's copy; not committed while the file is open for writing
        data[7 * MiB:7 * MiB + 4] = b"kept"
        os.unlink(b.path / "big.bin")
        b.flush()
        time.sleep(2)  # A's feed hears of the delete meanwhile (p95 well under 1 s)
    a.flush()
    assert on_server(a, "big.bin") == data  # the rest of it came from the deleted file's chunks
    eventually(lambda: read_or_none(b.path / "big.bin") == data, what="the file back on B")
    assert_no_hole_was_read(a)


def test_a_pinned_sparse_copy_reads_whole_with_the_server_away(mount_own_server):
    m, server = mount_own_server, mount_own_server.server
    data = uncached(m, "big.bin", seed=10)
    edit(m.path / "big.bin", 5 * MiB, b"pinned", data)
    m.drive("pin", str(m.path / "big.bin"))  # fetches the chunks the copy does not hold yet
    m.flush()
    server.kill()
    assert (m.path / "big.bin").read_bytes() == data
    server.start()
    eventually(lambda: m.drive("flush", str(m.path), check=False).returncode == 0, timeout=60,
               what="a flush once the server is back")
    assert on_server(m, "big.bin") == data
