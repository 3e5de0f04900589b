#!/usr/bin/env python3
"""Measures what pyfuse3 + trio alone cost per request, so the mount's numbers can be set against a floor.

    scripts/fuse_floor.py [--size 1G]

Mounts a filesystem that keeps everything in memory and does nothing else (no index, no local copy,
no server), then runs the metadata and data workloads of `scripts/bench` on it and on a local folder:
2,000 creates of 4 KiB files in 20 folders, 2,000 stats with attributes expired, sequential 1 MiB
writes (bytes dropped) and reads (one buffer served again and again). Whatever this filesystem cannot
reach, drivefs built on the same libraries cannot reach either. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyfuse3
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# The mount's own timeouts, so the kernel sends this filesystem as many requests as it sends the mount.
from mountfs.fs import ATTR_TIMEOUT, ENTRY_TIMEOUT, FOLDER_ENTRY_TIMEOUT  # noqa: E402

MiB = 1 << 20


class Node:
    """One file or folder of the in-memory tree."""

    def __init__(self, ino: int, mode: int) -> None:
        self.ino = ino
        self.mode = mode
        self.size = 0
        self.children: dict[bytes, int] = {}


class FloorFs(pyfuse3.Operations):
    """Answers every request from a dict; file contents are not kept (reads return one fixed buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755)}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.read_buf = os.urandom(MiB)

    def _attr(self, n: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = n.ino
        a.st_mode = n.mode
        a.st_nlink = 1
        a.st_size = n.size
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.st_blksize = 4096
        a.st_blocks = (n.size + 511) // 512
        now = time.time_ns()
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = now
        a.entry_timeout = FOLDER_ENTRY_TIMEOUT if stat.S_ISDIR(n.mode) else ENTRY_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        return a

    def _new(self, parent: int, name: bytes, mode: int) -> Node:
        n = Node(self.next_ino, mode)
        self.next_ino += 1
        self.nodes[n.ino] = n
        self.nodes[parent].children[name] = n.ino
        return n

    async def lookup(self, parent_inode, name, ctx=None):
        ino = self.nodes[parent_inode].children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self.nodes[ino])

    async def getattr(self, inode, ctx=None):
        return self._attr(self.nodes[inode])

    async def setattr(self, inode, attr, fields, fh, ctx):
        n = self.nodes[inode]
        if fields.update_size:
            n.size = attr.st_size
        return self._attr(n)

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._attr(self._new(parent_inode, name, stat.S_IFDIR | mode))

    async def create(self, parent_inode, name, mode, flags, ctx):
        n = self._new(parent_inode, name, stat.S_IFREG | mode)
        return pyfuse3.FileInfo(fh=n.ino), self._attr(n)

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode, keep_cache=False)

    async def write(self, fh, off, buf):
        n = self.nodes[fh]
        n.size = max(n.size, off + len(buf))
        return len(buf)

    async def read(self, fh, off, size):
        n = self.nodes[fh]
        size = max(0, min(size, n.size - off))
        start = off % MiB
        if start + size <= MiB:
            return self.read_buf[start:start + size]
        return (self.read_buf * 2)[start:start + size]

    async def flush(self, fh):
        raise pyfuse3.FUSEError(errno.ENOSYS)  # as the mount does: the kernel stops sending FLUSH

    async def fsync(self, fh, datasync):
        pass

    async def release(self, fh):
        pass

    async def opendir(self, inode, ctx):
        return inode

    async def readdir(self, fh, start_id, token):
        names = sorted(self.nodes[fh].children.items())
        for i, (name, ino) in enumerate(names[start_id:], start_id):
            if not pyfuse3.readdir_reply(token, name, self._attr(self.nodes[ino]), i + 1):
                break

    async def releasedir(self, fh):
        pass

    async def unlink(self, parent_inode, name, ctx):
        self.nodes.pop(self.nodes[parent_inode].children.pop(name))

    async def rmdir(self, parent_inode, name, ctx):
        self.nodes.pop(self.nodes[parent_inode].children.pop(name))

    async def forget(self, inode_list):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_files = s.f_ffree = s.f_favail = 1 << 20
        s.f_namemax = 255
        return s


def serve(mountpoint: str) -> None:
    """Runs in its own process (as the mount's daemon does), so the workload does not share its GIL."""
    options = set(pyfuse3.default_options) | {"fsname=floorfs"}
    pyfuse3.init(FloorFs(), mountpoint, options)
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=False)


def wait_mounted(mnt: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the floor filesystem did not mount")
        time.sleep(0.05)


def create_small_files(root: Path, data: bytes) -> list[Path]:
    """The metadata workload's creates (shared with scripts/bench): 20 folders of 100 files, each
    created, written once and closed. Returns the files' paths."""
    paths = []
    for d in range(20):
        folder = root / f"d{d:02d}"
        folder.mkdir()
        for f in range(100):
            p = folder / f"f{f:03d}.dat"
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)
            paths.append(p)
    return paths


def stat_expired(paths: list[Path], rounds: int = 3) -> float:
    """Seconds to stat every path once the mount's entry and attribute timeouts have run out (so each
    stat reaches the filesystem), best of `rounds` (shared with scripts/bench)."""
    best = float("inf")
    for _ in range(rounds):
        time.sleep(max(ENTRY_TIMEOUT, ATTR_TIMEOUT) + 0.2)
        t0 = time.perf_counter()
        for p in paths:
            os.stat(p)
        best = min(best, time.perf_counter() - t0)
    return best


def small_files(root: Path) -> tuple[float, float]:
    """Creates/s and stats/s (attributes expired) of the metadata workload."""
    t0 = time.perf_counter()
    paths = create_small_files(root, os.urandom(4096))
    create = len(paths) / (time.perf_counter() - t0)
    stat = len(paths) / stat_expired(paths)
    for p in paths:
        os.unlink(p)
    for d in range(20):
        os.rmdir(root / f"d{d:02d}")
    return create, stat


def sequential(path: Path, size: int, fsync: bool) -> tuple[float, float]:
    """MiB/s writing `size` bytes in 1 MiB writes (+ fsync), then reading them back in 1 MiB reads."""
    buf = os.urandom(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t0 = time.perf_counter()
    for _ in range(size // MiB):
        os.write(fd, buf)
    if fsync:
        os.fsync(fd)
    os.close(fd)
    write = size / MiB / (time.perf_counter() - t0)
    fd = os.open(path, os.O_RDONLY)
    t0 = time.perf_counter()
    while os.read(fd, MiB):
        pass
    os.close(fd)
    read = size / MiB / (time.perf_counter() - t0)
    return write, read


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="file size for the write/read rows (default 1G)")
    ap.add_argument("--json", type=Path, help="also write the rows here as JSON")
    ap.add_argument("--serve", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    units = {"K": 1 << 10, "M": MiB, "G": 1 << 30}
    size = int(args.size[:-1]) * units[args.size[-1].upper()] if args.size[-1].isalpha() else int(args.size)
    with tempfile.TemporaryDirectory(prefix="fuse-floor-") as tmp:
        mnt, local = Path(tmp, "mnt"), Path(tmp, "local")
        mnt.mkdir()
        local.mkdir()
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(mnt)])
        try:
            wait_mounted(mnt, proc)
            fl_create, fl_stat = small_files(mnt)
            lo_create, lo_stat = small_files(local)
            fl_w, fl_r = sequential(mnt / "big", size, fsync=True)
            lo_w, lo_r = sequential(local / "big", size, fsync=True)
            rows = {"create": (fl_create, lo_create), "stat": (fl_stat, lo_stat),
                    "write": (fl_w, lo_w), "read": (fl_r, lo_r)}
            labels = {"create": "create 2,000 x 4 KiB in 20 folders (files/s)",
                      "stat": "stat 2,000 files, attrs expired (stats/s)",
                      "write": "sequential 1 MiB writes + fsync, bytes dropped (MiB/s)",
                      "read": "sequential 1 MiB reads of one buffer (MiB/s; local: page cache)"}
            print(f"{'workload':<66} {'floor fs':>10} {'local':>10}")
            for key, (a, b) in rows.items():
                print(f"{labels[key]:<66} {a:>10,.0f} {b:>10,.0f}")
            if args.json:
                args.json.write_text(json.dumps({k: {"floor": a, "local": b} for k, (a, b) in rows.items()}))
        finally:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
