"""What close, fsync and unmount return for is never lost: not to kill -9 of the daemon, not to --no-flush."""

from __future__ import annotations

import os

import httpx
import pytest

from tests.e2e.helpers import download, server_listing

pytestmark = pytest.mark.client_side  # once, in the embedded pass: see tests/conftest.py


def server_bytes(mount, path: str) -> bytes | None:
    """The server's current bytes of a file, or None if the server has no such file yet."""
    try:
        return download(mount.server.url, mount.token, path)
    except httpx.HTTPStatusError as e:
        if e.response.status_code == 404:
            return None
        raise


def test_kill_after_fsync_keeps_data(mount):
    old = os.urandom(200_000)
    (mount.path / "old.bin").write_bytes(old)
    mount.flush()
    assert server_bytes(mount, "old.bin") == old

    big = os.urandom(24 * 2**20 + 5)  # big enough that its upload is unlikely to finish before the kill
    new_old = os.urandom(150_000)
    fd = os.open(mount.path / "big.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    assert os.write(fd, big) == len(big)
    os.fsync(fd)
    gd = os.open(mount.path / "old.bin", os.O_RDWR)  # an already-synced file changed in place
    os.ftruncate(gd, 0)
    assert os.pwrite(gd, new_old, 0) == len(new_old)
    os.fsync(gd)
    mount.kill()  # both files still open: only fsync vouches for them
    for d in (fd, gd):
        try:
            os.close(d)
        except OSError:
            pass  # the mount is gone: closing may report ENOTCONN

    mount.mount()
    assert (mount.path / "big.bin").read_bytes() == big
    assert (mount.path / "old.bin").read_bytes() == new_old
    mount.flush()
    assert server_bytes(mount, "big.bin") == big
    assert server_bytes(mount, "old.bin") == new_old


def test_kill_after_close_keeps_data(mount):
    files = {f"f{i}.bin": os.urandom(i * 70_001) for i in range(6)}
    (mount.path / "d").mkdir()
    for name, data in files.items():
        (mount.path / "d" / name).write_bytes(data)  # open, write, close; no fsync
    big = os.urandom(16 * 2**20)
    (mount.path / "d" / "big.bin").write_bytes(big)
    mount.kill()

    mount.mount()
    for name, data in files.items():
        assert (mount.path / "d" / name).read_bytes() == data, name
    assert (mount.path / "d" / "big.bin").read_bytes() == big
    mount.flush()
    for name, data in files.items():
        assert server_bytes(mount, f"d/{name}") == data, name
    assert server_bytes(mount, "d/big.bin") == big


def test_kill_right_after_a_burst_of_new_files_keeps_every_one(mount):
    """New files, and their chmod and utime, are committed to the index in batches; until then the redo
    log alone vouches for the ones whose call returned. Killed in that window (seen by the log still holding records), they
    all come back, with their bytes, and reach the server."""
    redo = mount.cache_dir / "index.db-redo"
    made: dict[str, bytes] = {}
    held = []
    for attempt in range(3):
        folder = mount.path / f"burst{attempt}"
        folder.mkdir()
        for i in range(150):
            data = os.urandom(50 + i)
            (folder / f"n{i:03d}.txt").write_bytes(data)
            os.chmod(folder / f"n{i:03d}.txt", 0o600 + i % 2 * 0o40)  # as tar and cp -p do after each file
            os.utime(folder / f"n{i:03d}.txt", ns=(0, 1_600_000_000_000_000_000 + i))
            made[f"burst{attempt}/n{i:03d}.txt"] = data
        mount.kill()
        held.append(redo.stat().st_size)  # what the dead daemon could no longer commit
        mount.mount()
        for path, data in made.items():
            assert (mount.path / path).read_bytes() == data, path
            i = int(path[-7:-4])
            st = (mount.path / path).stat()
            assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o600 + i % 2 * 0o40, 1_600_000_000_000_000_000 + i), path
        assert redo.stat().st_size == 0
        if held[-1]:
            break
    assert held[-1] > 0, f"no kill came while creates were only in the redo log ({held})"
    mount.flush()
    for path, data in made.items():
        assert server_bytes(mount, path) == data, path


def test_unmount_no_flush_keeps_pending_writes(mount):
    files = {f"n{i}.txt": os.urandom(50_000 + i) for i in range(8)}
    files["big.bin"] = os.urandom(12 * 2**20)
    for name, data in files.items():
        (mount.path / name).write_bytes(data)
    os.rename(mount.path / "n0.txt", mount.path / "renamed.txt")
    files["renamed.txt"] = files.pop("n0.txt")
    mount.unmount(flush=False)
    # The server may or may not have them yet; nothing may be lost either way.
    on_server_before = {name for name in files if server_bytes(mount, name) == files[name]}

    mount.mount()
    for name, data in files.items():
        assert (mount.path / name).read_bytes() == data, name
    mount.flush()
    for name, data in files.items():
        assert server_bytes(mount, name) == data, name
    assert server_listing(mount.server.url, mount.token, "") == sorted(files)
    assert on_server_before <= set(files)


def test_unmount_flushes_everything(mount):
    (mount.path / "a" / "b").mkdir(parents=True)
    files = {f"a/b/s{i}.txt": (f"small {i}\n" * (i + 1)).encode() for i in range(20)}
    files["a/big.bin"] = os.urandom(20 * 2**20 + 1)
    files["empty"] = b""
    for name, data in files.items():
        (mount.path / name).write_bytes(data)
    (mount.path / "gone.txt").write_text("deleted before unmount")
    os.remove(mount.path / "gone.txt")
    mount.unmount()  # flushes: when it returns, the server has every byte

    for name, data in files.items():
        assert server_bytes(mount, name) == data, name
    assert server_listing(mount.server.url, mount.token, "") == ["a", "empty"]
    assert server_listing(mount.server.url, mount.token, "a/b") == sorted(f"s{i}.txt" for i in range(20))
