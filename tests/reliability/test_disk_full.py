"""The disk under the cache fills up: writes fail with ENOSPC (never EIO), nothing already written is
lost, and the mount recovers by itself once space returns.

The cache directory is a 64 MiB tmpfs mounted for the test (needs root, or CAP_SYS_ADMIN; skipped with
the reason otherwise) and filled with a filler file until the filesystem refuses more.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess

import pytest

from tests.fixtures.mount import MountProcess, is_mounted
from tests.reliability.helpers import (
    SEED,
    ServerView,
    converge,
    flush_until_ok,
    wait_for,
)

MiB = 1 << 20


@pytest.fixture
def small_cache_dir(tmp_path):
    d = tmp_path / "m" / "cache"
    d.mkdir(parents=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(d)],
                           capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("cannot mount a 64 MiB tmpfs for the cache dir: no mount command")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 64 MiB tmpfs for the cache dir (needs root): {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True, check=False)
        if is_mounted(d):  # a process still holds it: detach it now, it goes when they do
            subprocess.run(["umount", "-l", str(d)], capture_output=True, check=False)


def fill(path) -> int:
    """Write a file until the filesystem is full; return its size."""
    size = 0
    with open(path, "wb", buffering=0) as f:
        for block in (MiB, 64 << 10, 4096, 512, 1):
            while True:
                try:
                    n = f.write(b"\xff" * block)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
                size += n
                if n < block:
                    break
    return size


def write_counting(path, data: bytes, flags: int) -> tuple[int, list[int]]:
    """Write through the mount as far as it goes; (bytes acknowledged, errnos seen)."""
    errnos: list[int] = []
    done = 0
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        return 0, [e.errno]
    try:
        while done < len(data):
            try:
                n = os.write(fd, data[done:done + MiB])
            except OSError as e:
                errnos.append(e.errno)
                break
            done += n
        try:
            os.fsync(fd)
        except OSError as e:
            errnos.append(e.errno)
    finally:
        try:
            os.close(fd)
        except OSError as e:
            errnos.append(e.errno)
    return done, errnos


def test_full_cache_disk_gives_enospc_and_recovers(server, tmp_path, small_cache_dir, counts):
    rng = random.Random(SEED)
    name, token = server.add_user()
    a = MountProcess(server, name, token, tmp_path / "m", device="fullA")
    b = MountProcess(server, name, token, tmp_path / "b", device="fullB")
    assert a.cache_dir == small_cache_dir
    view = ServerView(server.url, token)
    try:
        a.mount()
        b.mount()
        os.listdir(b.path)
        files = {f"before{i}.bin": rng.randbytes(3 * MiB + i) for i in range(3)}
        for n, data in files.items():
            (a.path / n).write_bytes(data)
        flush_until_ok(a)
        unsynced = rng.randbytes(2 * MiB)
        (a.path / "unsynced.bin").write_bytes(unsynced)  # written just before the disk fills: maybe not up yet
        files["unsynced.bin"] = unsynced

        filler = small_cache_dir / "filler"
        filled = fill(filler)
        assert filled > 0
        st = os.statvfs(small_cache_dir)
        assert st.f_bavail == 0

        # new files, appends and folders while the disk is full: ENOSPC or success, never EIO
        seen: list[int] = []
        big = rng.randbytes(8 * MiB)
        done_new, errs = write_counting(a.path / "new.bin", big, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        seen += errs
        appended = rng.randbytes(8 * MiB)
        done_app, errs = write_counting(a.path / "before0.bin", appended, os.O_WRONLY | os.O_APPEND)
        seen += errs
        for i in range(5):
            try:
                (a.path / f"dir{i}").mkdir()
                (a.path / f"dir{i}" / "small.txt").write_bytes(b"x" * 10_000)
            except OSError as e:
                seen.append(e.errno)
        assert seen, "nothing failed although the cache disk is full"
        assert set(seen) == {errno.ENOSPC}, f"errnos while full: {[errno.errorcode[e] for e in seen]}"
        assert done_new < len(big) and done_app < len(appended)
        # what was written before stays readable, the partial writes keep what they acknowledged
        for n, data in files.items():
            want = data + appended[:done_app] if n == "before0.bin" else data
            assert (a.path / n).read_bytes() == want, n
        st_json = a.drive("status", str(a.path), "--json", check=False)
        assert st_json.returncode == 0, st_json.stderr

        # space returns: the mount goes on by itself, new writes work, everything reaches the server
        filler.unlink()
        files["before0.bin"] = files["before0.bin"] + appended[:done_app]
        if os.path.exists(a.path / "new.bin"):
            files["new.bin"] = big[:done_new]
            assert (a.path / "new.bin").read_bytes() == big[:done_new]
        after = rng.randbytes(5 * MiB)
        (a.path / "after.bin").write_bytes(after)
        files["after.bin"] = after
        for i in range(5):
            (a.path / f"dir{i}").mkdir(exist_ok=True)
            (a.path / f"dir{i}" / "small.txt").write_bytes(b"y" * 10_000)
            files[f"dir{i}/small.txt"] = b"y" * 10_000
        flush_until_ok(a, timeout=90)
        on_server = view.files()
        assert set(on_server) == set(files), (sorted(set(on_server) - set(files)), sorted(set(files) - set(on_server)))
        for n, data in files.items():
            assert on_server[n] == data, n
        converge([a, b], view)
        wait_for(lambda: not a.drive("status", str(a.path), "--json").stdout.count('"last_error": "'), 30,
                 "no error left in drive status")
        counts.add(faults_injected=1, files_verified=3 * len(files))
    finally:
        view.close()
        a.cleanup()
        b.cleanup()
