#!/usr/bin/env python3
"""Benchmarks drivefs: each workload on the mount, on local disk and against the raw blob store, in one run.

    scripts/bench                       # everything at --size 1G (the 10 GiB file only with --big)
    scripts/bench --size 256M --quick   # a few minutes
    scripts/bench --only write,cold-read --json out.json
    scripts/bench --big [--big-size 50G]

Starts a temporary server (`drive server`, embedded SQLite + blob directory) and mounts it with
`drive mount` on a scratch directory; the local-disk baseline runs the same workload in a plain folder
beside the mount's cache (same filesystem); the raw blob-store baseline moves the same amount of bytes
to and from the server's signed blob URLs with httpx, 8 requests in parallel, without the mount.
Prints a table (workload, mount, baseline, ratio, target, pass/fail) and writes it as JSON
(default bench-results/bench-<date>.json). Ratios are always "mount speed / baseline speed" (so
higher is better) except where the unit says otherwise. A benchmark, not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import trio  # noqa: E402

from cache.chunker import manifest_of  # noqa: E402
from fuse_floor import create_small_files, stat_expired  # noqa: E402  (scripts/, beside this file)
from remote.client import ApiClient  # noqa: E402
from remote.models import UploadChunk  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BLOCK = MiB
CONCURRENCY = 8
WORKLOADS = ("write", "flush", "cold-read", "warm-read", "random-read", "small-files", "tar", "ls",
             "overwrite", "insert", "big", "rss", "propagation", "transfer", "floor")
# Server settings the bench must not inherit: it always runs the embedded defaults.
_SERVER_ENV = ("DRIVE_DATABASE_URL", "DRIVE_BLOB_URL", "DRIVE_S3_ACCESS_KEY", "DRIVE_S3_SECRET_KEY",
               "DRIVE_SERVER_CONFIG")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    units = {"K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def fmt_size(n: float) -> str:
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= div:
            return f"{n / div:.4g} {unit}"
    return f"{int(n)} B"


# ---- data -------------------------------------------------------------------------------------------

class Payload:
    """Incompressible bytes that never repeat, made cheaply: a random 64 MiB base whose every 64 KiB
    starts with a stamp (seed, position). Every chunk (>= 256 KiB) holds stamps, so no chunk of one
    payload equals another chunk of it or of a payload with another seed: nothing dedupes."""

    BASE = 64 * MiB
    STAMP_EVERY = 64 * KiB
    _base: bytearray | None = None

    def __init__(self, seed: str) -> None:
        if Payload._base is None:
            Payload._base = bytearray(random.Random(1234).randbytes(self.BASE))
        self.seed = seed.encode()[:8].ljust(8, b"\0")

    def block(self, i: int) -> memoryview:
        """The i-th MiB (a view into a shared buffer: valid until the next call)."""
        base = Payload._base
        assert base is not None
        off = (i * BLOCK) % self.BASE
        for k in range(0, BLOCK, self.STAMP_EVERY):
            base[off + k:off + k + 16] = struct.pack("<8sQ", self.seed, i * BLOCK + k)
        return memoryview(base)[off:off + BLOCK]

    def expected(self, i: int) -> bytes:
        return bytes(self.block(i))


def write_file(path: Path, size: int, payload: Payload, fsync: bool = True) -> float:
    """Sequential 1 MiB writes, fsync, close; returns seconds."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(size // BLOCK):
            view = payload.block(i)
            while view:
                view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def read_file(path: Path, block: int = BLOCK) -> tuple[float, int]:
    """Sequential reads of `block` bytes to the end; returns (seconds, bytes)."""
    buf = bytearray(block)
    total = 0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            n = os.readv(fd, [buf])
            if not n:
                break
            total += n
    finally:
        os.close(fd)
    return time.perf_counter() - t0, total


def check_blocks(path: Path, size: int, payload: Payload, n: int = 4) -> None:
    """Spot-check a few 1 MiB blocks of `path` against the payload (the bench must not time wrong data)."""
    blocks = size // BLOCK
    with open(path, "rb") as f:
        for i in sorted({0, blocks - 1, *random.Random(7).sample(range(blocks), min(n, blocks))}):
            f.seek(i * BLOCK)
            if f.read(BLOCK) != payload.expected(i):
                raise SystemExit(f"bench: block {i} of {path} does not hold what was written")


def random_reads(path: Path, size: int, count: int = 1000, seed: int = 42) -> float:
    """`count` 4 KiB preads at random 4 KiB-aligned offsets; returns seconds."""
    rng = random.Random(seed)
    offsets = [rng.randrange(0, size // 4096) * 4096 for _ in range(count)]
    fd = os.open(path, os.O_RDONLY)
    try:
        t0 = time.perf_counter()
        for off in offsets:
            if len(os.pread(fd, 4096, off)) != 4096:
                raise SystemExit(f"bench: short read at {off} in {path}")
        return time.perf_counter() - t0
    finally:
        os.close(fd)


def drop_caches() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def dir_bytes(path: Path, allocated: bool = False) -> int:
    """Bytes of the files under `path`: their lengths, or with `allocated` the disk space they hold. The
    cache's partial chunks are sparse files of a chunk's full length holding only the blocks fetched, so
    bytes downloaded into the cache are its allocated bytes (whole chunks round up to 4 KiB)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            total += st.st_blocks * 512 if allocated else st.st_size
    return total


def make_source_tree(root: Path, files: int, seed: int = 3) -> int:
    """A fake source tree of `files` small text files in nested folders; returns its size in bytes."""
    rng = random.Random(seed)
    words = ["int", "return", "static", "void", "struct", "if", "else", "for", "while", "const", "char",
             "size_t", "NULL", "buffer", "length", "count", "index", "error", "value", "node", "list"]
    total = 0
    dirs = [root]
    for i in range(files):
        if i % 25 == 0:
            parent = rng.choice(dirs[-40:])
            d = parent / f"dir{i // 25:03d}"
            d.mkdir(parents=True, exist_ok=True)
            dirs.append(d)
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(2, 12))) + ";"
                 for _ in range(rng.randint(5, 400))]
        text = ("\n".join(lines) + "\n").encode()
        (dirs[-1] / f"file{i:05d}.{rng.choice(['c', 'h', 'py', 'txt', 'md'])}").write_bytes(text)
        total += len(text)
    return total


# ---- results ----------------------------------------------------------------------------------------

@dataclass
class Row:
    workload: str
    mount: float | None
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    ratio: float | None = None
    target: str = "report"
    passed: bool | None = None
    note: str = ""

    def cells(self) -> list[str]:
        def num(v: float | None) -> str:
            if v is None:
                return "-"
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        base = "-" if self.baseline is None else f"{num(self.baseline)} ({self.baseline_label})"
        verdict = {True: "PASS", False: "FAIL", None: "-"}[self.passed]
        return [self.workload, f"{num(self.mount)} {self.unit}", base,
                "-" if self.ratio is None else f"{self.ratio:.2f}x", self.target, verdict]


class Results:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.extra: dict[str, Any] = {}

    def add(self, row: Row) -> None:
        self.rows.append(row)
        log("  " + " | ".join(row.cells()) + (f"  ({row.note})" if row.note else ""))

    def speed(self, workload: str, mount: float, baseline: float, unit: str, label: str,
              min_ratio: float | None = None, note: str = "") -> None:
        """Both values are speeds (higher is better); ratio = mount / baseline."""
        ratio = mount / baseline if baseline else None
        target = f">= {min_ratio}x {label}" if min_ratio is not None else "report"
        passed = None if min_ratio is None or ratio is None else ratio >= min_ratio
        self.add(Row(workload, mount, unit, baseline, label, ratio, target, passed, note))

    def table(self) -> str:
        head = ["workload", "mount", "baseline", "ratio", "target", "result"]
        rows = [head] + [r.cells() for r in self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
        lines.insert(1, "-+-".join("-" * w for w in widths))
        return "\n".join(lines)


# ---- the environment: server, mount, sampler ---------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RssSampler:
    """Samples VmRSS of the mount daemon every 20 ms; keeps the peak per phase label."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.phase = "idle"
        self.peaks: dict[str, int] = {}
        self.hwm: dict[int, int] = {}
        # CPU seconds (user + system, all threads) the daemon spent per phase label.
        self.cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _status(self, pid: int) -> dict[str, int]:
        out = {}
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1]) * KiB
        except OSError:
            pass
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.sample()

    def sample(self) -> None:
        pid = self.pid
        if pid is None:
            return
        st = self._status(pid)
        if "VmRSS" in st:
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), st["VmRSS"])
            self.hwm[pid] = st.get("VmHWM", 0)

    @staticmethod
    def cpu_seconds(pid: int | None) -> float:
        """User + system CPU seconds of the whole process so far (0 if it is gone)."""
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, TypeError):
            return 0.0
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    @contextmanager
    def during(self, phase: str) -> Iterator[None]:
        old, self.phase = self.phase, phase
        pid, cpu0 = self.pid, self.cpu_seconds(self.pid)
        try:
            yield
        finally:
            self.sample()
            if pid is not None and pid == self.pid:
                self.cpu[phase] = self.cpu.get(phase, 0.0) + self.cpu_seconds(pid) - cpu0
            self.phase = old

    def stop(self) -> None:
        self._stop.set()


class Env:
    """A temporary server, one user, and their drive mounted with a cache in the work directory."""

    def __init__(self, work: Path, sampler: RssSampler) -> None:
        self.work = work
        self.data = work / "server"
        self.cache = work / "cache"
        self.mnt = work / "mnt"
        self.local = work / "local"
        self.config = work / "config"
        for d in (self.mnt, self.local, self.config):
            d.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k not in _SERVER_ENV}
        self.env["DRIVE_CONFIG_DIR"] = str(self.config)
        os.environ["DRIVE_CONFIG_DIR"] = str(self.config)  # for mountfs.registry lookups in this process
        self.server: subprocess.Popen | None = None
        self.token = ""
        self.sampler = sampler
        self.mounted = False

    def drive(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        out = subprocess.run([sys.executable, "-m", "mountfs.cli", *args], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise SystemExit(f"bench: drive {' '.join(args)} failed: {out.stderr.strip() or out.stdout.strip()}")
        return out

    def start(self) -> None:
        self.token = self.drive("user", "add", "bench", "--data", str(self.data)).stdout.strip()
        with open(self.work / "server.log", "ab") as logf:
            self.server = subprocess.Popen(
                [sys.executable, "-m", "mountfs.cli", "server", "--data", str(self.data), "--port", str(self.port),
                 "--log-level", "warning"], cwd=ROOT, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True)
        for _ in range(300):
            if self.server.poll() is not None:
                raise SystemExit(f"bench: the server exited; see {self.work / 'server.log'}")
            try:
                if httpx.get(self.url + "/health", timeout=0.5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise SystemExit("bench: the server did not start within 30 s")
        self.drive("login", "--server", self.url, "--user", "bench", "--token", self.token)

    def mount(self, fresh_cache: bool = False) -> None:
        if self.mounted:
            self.unmount()
        if fresh_cache:
            shutil.rmtree(self.cache, ignore_errors=True)
        self.drive("mount", str(self.mnt), "--cache-dir", str(self.cache), "--device", "bench")
        self.mounted = True
        self.sampler.pid = self.daemon_pid()

    def unmount(self) -> None:
        if self.mounted:
            self.drive("unmount", str(self.mnt))
            self.mounted = False
            self.sampler.pid = None

    def remount_cold(self) -> bool:
        """Unmount, delete the cache, remount, drop the kernel's caches; returns whether dropping worked."""
        self.unmount()
        shutil.rmtree(self.cache, ignore_errors=True)
        dropped = drop_caches()
        self.mount()
        os.listdir(self.mnt)
        return dropped

    def entry(self):
        from mountfs import registry

        e = registry.find(str(self.mnt))
        if e is None:
            raise SystemExit(f"bench: no mount registered at {self.mnt}")
        return e

    def daemon_pid(self) -> int:
        return self.entry().pid

    def fetched_bytes(self) -> int | None:
        """Bytes the daemon says it received from the blob store since it mounted (`drive status`)."""
        return self.status().get("fetched_bytes")

    def status(self) -> dict:
        """The daemon's `drive status` answer (over the control socket)."""
        from mountfs.control import ControlClient

        return ControlClient(self.entry().control_socket).status()

    def flush(self) -> float:
        """What `drive flush` does (over the control socket, without the CLI's start-up); returns seconds."""
        from mountfs.control import ControlClient

        t0 = time.perf_counter()
        res = ControlClient(self.entry().control_socket).flush()
        if not res.get("ok", False):
            raise SystemExit(f"bench: flush failed: {res.get('error')}")
        return time.perf_counter() - t0

    def wait_quiet(self, limit_s: float = 20.0) -> float:
        """Wait until the daemon uses under 5% of a CPU over 0.25 s (e.g. done digesting the feed's echo of
        its own changes); returns the seconds waited."""
        pid = self.daemon_pid()

        def cpu() -> float:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        t0 = time.perf_counter()
        last = cpu()
        while time.perf_counter() - t0 < limit_s:
            time.sleep(0.25)
            now = cpu()
            if now - last < 0.0125:
                break
            last = now
        return time.perf_counter() - t0

    def blob_count(self) -> int:
        root = self.data / "blobs"
        return sum(1 for _d, _s, files in os.walk(root) for f in files if ".tmp" not in f)

    def stop(self) -> None:
        try:
            if self.mounted:
                self.drive("unmount", str(self.mnt), "--no-flush", check=False, timeout=120)
        finally:
            if self.server is not None and self.server.poll() is None:
                os.killpg(self.server.pid, signal.SIGTERM)
                try:
                    self.server.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(self.server.pid, signal.SIGKILL)


# ---- the raw blob store -------------------------------------------------------------------------------

async def raw_upload(url: str, token: str, path: Path, refs: list, name: str) -> tuple[float, Any]:
    """PUT every chunk of `path` to signed URLs, 8 at a time (URLs asked in batches of 64); then commit
    the file (not timed). Returns (seconds, node)."""
    async with ApiClient(url, token, device="bench-raw", max_connections=CONCURRENCY) as api:
        me = await api.me()
        fd = os.open(path, os.O_RDONLY)
        try:
            t0 = time.perf_counter()
            send, recv = trio.open_memory_channel(CONCURRENCY)

            async def feed() -> None:
                async with send:
                    for i in range(0, len(refs), 64):
                        batch = refs[i:i + 64]
                        urls = await api.upload_urls([UploadChunk(r.hash, r.size, r.size) for r in batch])
                        for ref, u in zip(batch, urls):
                            await send.send((ref, u))

            async def put(inp) -> None:
                async with inp:
                    async for ref, u in inp:
                        await api.put_blob(u, os.pread(fd, ref.size, ref.offset))

            async with trio.open_nursery() as n:
                n.start_soon(feed)
                async with recv:
                    for _ in range(CONCURRENCY):
                        n.start_soon(put, recv.clone())
            seconds = time.perf_counter() - t0
        finally:
            os.close(fd)
        node = await api.commit_file(refs, sum(r.size for r in refs), parent_id=me.root_id, name=name)
        return seconds, node


async def raw_download(url: str, token: str, node_id: int, version: int, refs: list) -> tuple[float, int]:
    """GET every chunk of a version from signed URLs, 8 at a time (bytes dropped). Returns (seconds, bytes)."""
    got = 0
    async with ApiClient(url, token, device="bench-raw", max_connections=CONCURRENCY) as api:
        t0 = time.perf_counter()
        send, recv = trio.open_memory_channel(CONCURRENCY)
        hashes = list(dict.fromkeys(r.hash for r in refs))

        async def feed() -> None:
            async with send:
                for i in range(0, len(hashes), 64):
                    for u in await api.download_urls(node_id, version, hashes[i:i + 64]):
                        await send.send(u)

        async def get(inp) -> None:
            nonlocal got
            async with inp:
                async for u in inp:
                    _enc, body = await api.get_blob(u)
                    got += len(body)

        async with trio.open_nursery() as n:
            n.start_soon(feed)
            async with recv:
                for _ in range(CONCURRENCY):
                    n.start_soon(get, recv.clone())
        return time.perf_counter() - t0, got


async def transfer_roundtrip(url: str, token: str, path: Path, dest: Path, name: str) -> tuple[float, float]:
    """The client's own engine without the mount: Transfer.upload_file then download_file. Seconds each."""
    from remote.transfer import Transfer

    async with ApiClient(url, token, device="bench-transfer") as api:
        me = await api.me()
        tr = Transfer(api, concurrency=CONCURRENCY)
        t0 = time.perf_counter()
        node = await tr.upload_file(path, parent_id=me.root_id, name=name)
        up = time.perf_counter() - t0
        drop_caches()
        t0 = time.perf_counter()
        await tr.download_file(node, dest)
        down = time.perf_counter() - t0
        return up, down


# ---- the workloads ------------------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, env: Env, res: Results, sampler: RssSampler) -> None:
        self.args = args
        self.env = env
        self.res = res
        self.sampler = sampler
        self.size = args.size_bytes
        self.mfile = env.mnt / "big.bin"
        self.lfile = env.local / "big.bin"
        self.mpay = Payload("mount")
        self.lpay = Payload("local")
        self.have_mfile = False  # written and on the server
        self.have_lfile = False
        self.raw_node = None
        self.refs: list = []
        self.dropped: bool | None = None

    @contextmanager
    def phase(self, label: str) -> Iterator[None]:
        """A measured stretch: RSS peaks are kept per label, and with --profile py-spy records the daemon."""
        prof = None
        if self.args.profile and self.env.mounted:
            out = self.args.profile_dir / f"{label.replace(':', '-')}.{'svg' if self.args.profile == 'svg' else 'txt'}"
            prof = subprocess.Popen([str(ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid", str(self.env.daemon_pid()),
                                     "-r", "250", "-f", "flamegraph" if self.args.profile == "svg" else "raw",
                                     "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # py-spy attaches
        try:
            with self.sampler.during(label):
                yield
        finally:
            if prof is not None:
                prof.send_signal(signal.SIGINT)
                try:
                    prof.wait(30)
                except subprocess.TimeoutExpired:
                    prof.kill()

    @contextmanager
    def maybe_phase(self, where: str, label: str) -> Iterator[None]:
        if where == "mount":
            with self.phase(label):
                yield
        else:
            yield

    def want(self, name: str) -> bool:
        return self.args.only is None or name in self.args.only

    # -- the 1 GiB file -----------------------------------------------------------------------------

    def local_file(self) -> None:
        if not self.have_lfile:
            write_file(self.lfile, self.size, self.lpay)
            self.have_lfile = True

    def write(self) -> None:
        log(f"write: {fmt_size(self.size)} in 1 MiB writes, fsync, close (best of 2, alternating)")
        drop_caches()
        lsecs = [write_file(self.lfile, self.size, self.lpay)]
        self.have_lfile = True
        drop_caches()
        with self.phase("file:write"):
            msecs = [write_file(self.mfile, self.size, self.mpay)]
        after_close = [self._timed_flush()]
        self.have_mfile = True
        # A second round (another file on the mount), since one run on a shared disk is noisy.
        drop_caches()
        lsecs.append(write_file(self.lfile, self.size, self.lpay))
        drop_caches()
        second = self.env.mnt / "big2.bin"
        with self.phase("file:write"):
            msecs.append(write_file(second, self.size, Payload("mount2")))
        after_close.append(self._timed_flush())
        second.unlink()
        self.env.flush()
        mb = self.size / MiB
        self.res.speed("sequential write + fsync + close", mb / min(msecs), mb / min(lsecs), "MiB/s", "local disk",
                       0.7, note="best of 2; MiB/s mount " + ", ".join(f"{mb / x:.0f}" for x in msecs)
                       + "; local " + ", ".join(f"{mb / x:.0f}" for x in lsecs))
        self.res.extra["write"] = {"mount_s": msecs, "local_s": lsecs, "flush_after_close_s": after_close}
        self._flush_row(after_close, msecs)

    def _timed_flush(self) -> float:
        """Seconds from a writer's close to `drive flush` returning."""
        closed = time.perf_counter()
        with self.phase("file:flush"):
            self.env.flush()
        return time.perf_counter() - closed

    def _flush_row(self, after_close: list[float], write_s: list[float]) -> None:
        # Best of the two rounds, as for the write: one round on a shared machine is noisy. (Here the
        # first touch of memory the guest freed earlier can cost a host page fault per page, ~1 s per
        # GiB of new page cache: writing 2 GiB to /dev/shm took 1.3 s warm and 2.5-4.3 s after a
        # drop_caches or 20 s idle. It shows most in the first round of the write row.)
        if not self.want("flush"):
            return
        up = self.raw_baseline()["upload_s"]
        mb = self.size / MiB
        best = min(range(len(after_close)), key=after_close.__getitem__)
        self.res.speed("durable on server (drive flush after close)", mb / after_close[best], mb / up, "MiB/s",
                       "raw blob PUTs x8", 0.9,
                       note="best of 2; MiB/s " + ", ".join(f"{mb / x:.0f}" for x in after_close)
                       + f"; write+flush end to end {mb / (write_s[best] + after_close[best]):.0f} MiB/s")

    def ensure_mfile(self) -> None:
        if not self.have_mfile:
            log(f"setup: writing the {fmt_size(self.size)} file on the mount")
            with self.phase("file:write"):
                write_file(self.mfile, self.size, self.mpay)
                self.env.flush()
            self.have_mfile = True

    def raw_baseline(self) -> dict:
        """Upload the local file's chunks to the blob store and download them again, raw, 8 in parallel."""
        if "raw" in self.res.extra:
            return self.res.extra["raw"]
        self.local_file()
        log("raw blob store: PUT then GET the same amount of bytes, 8 requests in parallel")
        self.refs = manifest_of(self.lfile)
        drop_caches()
        up, node = trio.run(raw_upload, self.env.url, self.env.token, self.lfile, self.refs, "raw.bin")
        self.raw_node = node
        drop_caches()
        cpu0 = RssSampler.cpu_seconds(os.getpid())
        down, got = trio.run(raw_download, self.env.url, self.env.token, node.id, node.version, self.refs)
        raw = {"upload_s": up, "download_s": down, "bytes": got, "chunks": len(self.refs),
               "download_cpu_s": RssSampler.cpu_seconds(os.getpid()) - cpu0}
        self.res.extra["raw"] = raw
        return raw

    def cold_read(self) -> None:
        self.ensure_mfile()
        raw = self.raw_baseline()
        log("cold read: unmount, delete cache, drop caches, remount, read sequentially")
        self.dropped = self.env.remount_cold()
        with self.phase("file:cold-read"):
            sec, n = read_file(self.mfile)
        if n != self.size:
            raise SystemExit(f"bench: read {n} bytes of {self.size}")
        mb = self.size / MiB
        cpu = self.sampler.cpu.get("file:cold-read", 0.0)
        rss = self.sampler.peaks.get("file:cold-read", 0) / MiB
        note = (f"daemon CPU {cpu:.2f} s ({1000 * cpu / mb:.1f} ms/MiB; raw GETs' client "
                f"{raw['download_cpu_s']:.2f} s), peak RSS {rss:.0f} MiB")
        if not self.dropped:
            note += "; kernel caches NOT dropped (not permitted)"
        self.res.speed("sequential read, cold", mb / sec, raw["bytes"] / MiB / raw["download_s"], "MiB/s",
                       "raw blob GETs x8", 0.9, note=note)
        self.res.extra["cold_read_daemon_cpu_s"] = cpu
        check_blocks(self.mfile, self.size, self.mpay)

    def warm_read(self) -> None:
        self.ensure_mfile()
        self.local_file()
        read_file(self.lfile)
        read_file(self.mfile)  # warm whatever a cold start left cold (no-op after cold-read)
        lsecs, msecs = [], []
        for _ in range(3):  # best of 3, alternating: page-cache speed swings with what else runs
            lsecs.append(read_file(self.lfile)[0])
            with self.phase("file:warm-read"):
                msecs.append(read_file(self.mfile)[0])
        mb = self.size / MiB
        self.res.speed("sequential read, warm", mb / min(msecs), mb / min(lsecs), "MiB/s", "local disk", 0.5,
                       note="best of 3")

    def random_read(self) -> None:
        self.ensure_mfile()
        self.local_file()
        log("random reads: 1,000 x 4 KiB in the cold file")
        self.env.remount_cold()
        with self.phase("file:random-read"):
            msec = random_reads(self.mfile, self.size)
        fetched = dir_bytes(self.env.cache / "chunks", allocated=True)
        told = self.env.fetched_bytes()
        drop_caches()
        lsec = random_reads(self.lfile, self.size)
        said = f"; the daemon counts {fmt_size(told)} received" if told is not None else ""
        self.res.add(Row("1,000 random 4 KiB reads, cold: bytes fetched", fetched / MiB, "MiB",
                         self.size / MiB, "file size", fetched / self.size, "<= 0.5 of the file",
                         fetched <= self.size / 2,
                         note=f"ratio = fetched / file size (lower is better); fetched = disk space of the "
                              f"cache's chunk files (partial chunks are sparse){said}"))
        self.res.extra["random_read"] = {"allocated_bytes": fetched, "daemon_fetched_bytes": told}
        self.res.speed("1,000 random 4 KiB reads, cold: ops/s", 1000 / msec, 1000 / lsec, "ops/s", "local disk, cold")

    def overwrite(self) -> None:
        self.ensure_mfile()
        log("1-byte overwrite in the middle of the uncached file, fsync")
        self.env.remount_cold()
        before = self.env.blob_count()
        with self.phase("file:overwrite"):
            t0 = time.perf_counter()
            fd = os.open(self.mfile, os.O_WRONLY)
            try:
                os.pwrite(fd, b"\xff", self.size // 2)
                os.fsync(fd)
            finally:
                os.close(fd)
            wsec = time.perf_counter() - t0
            self.env.flush()
            total = time.perf_counter() - t0
        new = self.env.blob_count() - before
        # What the daemon received: the chunks fetched for the local copy are not kept in the chunk cache.
        status = self.env.status()
        fetched, cut = status.get("fetched_bytes") or 0, status.get("cut_bytes") or 0
        self.res.add(Row("1-byte overwrite, uncached file, fsync: chunks uploaded", new, "chunks", target="<= 1",
                         passed=new <= 1, note=f"write+fsync {wsec:.2f} s, durable after {total:.2f} s, "
                                               f"downloaded {fmt_size(fetched)} first, cut {fmt_size(cut)}"))
        self.res.extra["overwrite"] = {"write_fsync_s": wsec, "durable_s": total, "downloaded_bytes": fetched,
                                       "cut_bytes": cut}
        self._edit_rows()

    def _edit_rows(self) -> None:
        """Further edits of the file, now that it has a local copy: a 1-byte write elsewhere and a 1 MiB
        append, each made durable; what the commit cut tells whether it cut only around the change."""
        extra = {}
        for kind, flags, offset, data in (("1-byte write", os.O_WRONLY, self.size // 4, b"\x01"),
                                          ("1 MiB append", os.O_WRONLY | os.O_APPEND, None, os.urandom(MiB))):
            cut0 = self.env.status().get("cut_bytes") or 0
            with self.phase("file:edit"):
                t0 = time.perf_counter()
                fd = os.open(self.mfile, flags)
                try:
                    if offset is None:
                        os.write(fd, data)
                    else:
                        os.pwrite(fd, data, offset)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self.env.flush()
                secs = time.perf_counter() - t0
            cut = (self.env.status().get("cut_bytes") or 0) - cut0
            self.res.add(Row(f"{kind} into the 1 GiB file with a local copy, then durable", secs, "s",
                             note=f"the commit cut {fmt_size(cut)}"))
            extra[kind] = {"durable_s": secs, "cut_bytes": cut}
        self.res.extra["edits"] = extra  # the file is 1 MiB longer now: the insert after it does not mind

    def insert(self) -> None:
        self.ensure_mfile()
        log("1-byte insert in the middle, saved by write-temp + rename")
        before = self.env.blob_count()
        tmp = self.env.mnt / ".big.bin.tmp"
        half = self.size // 2
        with self.phase("file:insert"):
            t0 = time.perf_counter()
            with open(self.mfile, "rb") as src, open(tmp, "wb") as dst:
                left = half
                while left:
                    data = src.read(min(BLOCK, left))
                    dst.write(data)
                    left -= len(data)
                dst.write(b"!")
                while data := src.read(BLOCK):
                    dst.write(data)
                dst.flush()
                os.fsync(dst.fileno())
            os.rename(tmp, self.mfile)
            wsec = time.perf_counter() - t0
            self.env.flush()
            total = time.perf_counter() - t0
        new = self.env.blob_count() - before
        self.res.add(Row("1-byte insert, temp + rename: chunks uploaded", new, "chunks", target="<= 2",
                         passed=new <= 2, note=f"save {wsec:.2f} s, durable after {total:.2f} s"))
        self.res.extra["insert"] = {"save_s": wsec, "durable_s": total}
        self.have_mfile = False  # its content changed; later workloads rewrite it

    def transfer(self) -> None:
        """Informational: the client's transfer engine alone (upload_file / download_file)."""
        self.local_file()
        raw = self.raw_baseline()
        log("transfer engine alone: Transfer.upload_file / download_file of a new file")
        src = self.env.local / "transfer.bin"
        write_file(src, self.size, Payload("xfer"))
        drop_caches()
        up, down = trio.run(transfer_roundtrip, self.env.url, self.env.token, src, self.env.local / "transfer.out",
                            "transfer.bin")
        mb = self.size / MiB
        self.res.speed("info: Transfer.upload_file (no mount)", mb / up, mb / raw["upload_s"], "MiB/s", "raw blob PUTs x8")
        self.res.speed("info: Transfer.download_file (no mount)", mb / down, mb / raw["download_s"], "MiB/s",
                       "raw blob GETs x8")
        src.unlink()
        (self.env.local / "transfer.out").unlink(missing_ok=True)

    # -- many files ---------------------------------------------------------------------------------

    def small_files(self) -> None:
        log("small files: 2,000 x 4 KiB in 20 folders; stat; list; delete")
        data = os.urandom(4096)
        out: dict[str, dict[str, float]] = {}
        roots = {"local": self.env.local / "small", "mount": self.env.mnt / "small"}
        paths: dict[str, list[Path]] = {}
        # Both create before either deletes: on ext4 without a journal a create right after deletes
        # pays for every inode deleted in the last minutes, and the local run's deletes would bill the
        # mount's creates (and its spare data files) for them.
        for where, root in roots.items():
            root.mkdir()
            with self.maybe_phase(where, "small:create"):
                t0 = time.perf_counter()
                paths[where] = create_small_files(root, data)
                create = time.perf_counter() - t0
            t0 = time.perf_counter()
            for p in paths[where]:
                os.stat(p)
            stat_hot = time.perf_counter() - t0  # on the mount: while the write-back uploads them
            with self.maybe_phase(where, "small:sync"):
                t0 = time.perf_counter()
                if where == "mount":
                    self.env.flush()
                sync = time.perf_counter() - t0
            quiet = self.env.wait_quiet() if where == "mount" else 0.0
            out[where] = {"create": 2000 / create, "stat": 2000 / stat_hot, "sync_s": sync, "quiet_s": quiet}
        for where, root in roots.items():
            with self.maybe_phase(where, "small:stat"):
                stat_cold = stat_expired(paths[where])
            t0 = time.perf_counter()
            listed = sum(len(os.listdir(root / f"d{d:02d}")) for d in range(20))
            lst = time.perf_counter() - t0
            assert listed == 2000, listed
            with self.maybe_phase(where, "small:delete"):
                t0 = time.perf_counter()
                for p in paths[where]:
                    os.unlink(p)
                for d in range(20):
                    os.rmdir(root / f"d{d:02d}")
                delete = time.perf_counter() - t0
            os.rmdir(root)
            out[where].update({"stat_expired": 2000 / stat_cold, "list": 2000 / lst, "delete": 2000 / delete})
        m, lo = out["mount"], out["local"]
        self._absolute("create 2,000 x 4 KiB files in 20 folders", m["create"], lo["create"], "files/s", 3000)
        self._absolute("stat 2,000 files, daemon idle, attrs expired", m["stat_expired"], lo["stat_expired"],
                       "stats/s", 20000)
        self.rows_note(f"best of 3; after the flush the daemon was busy {m['quiet_s']:.1f} s more (the changes "
                       "feed returning its own 2,000 creates)")
        self.res.speed("stat 2,000 files right after creating them", m["stat"], lo["stat"], "stats/s", "local disk",
                       note="the write-back is uploading them meanwhile")
        self.res.speed("list 20 folders of 100", m["list"], lo["list"], "entries/s", "local disk")
        self.res.speed("delete 2,000 files + 20 folders", m["delete"], lo["delete"], "files/s", "local disk")
        self.res.add(Row("drive flush after creating 2,000 files", 2000 / m["sync_s"], "files/s", target="report",
                         note=f"{m['sync_s']:.1f} s until all are on the server"))
        fsec = self.env.flush()
        self.res.extra["small_files"] = {**{f"{w}_{k}": v for w, d in out.items() for k, v in d.items()},
                                         "flush_after_delete_s": fsec}

    def rows_note(self, note: str) -> None:
        self.res.rows[-1].note = note

    def _absolute(self, name: str, mount: float, local: float, unit: str, minimum: float) -> None:
        self.res.add(Row(name, mount, unit, local, "local disk", mount / local, f">= {minimum:,} {unit}",
                         mount >= minimum))

    def tar(self) -> None:
        files = self.args.tar_files
        log(f"tar: extract a {files}-file source tree, then drive flush")
        src = self.env.work / "srctree"
        nbytes = make_source_tree(src / "project", files)
        tarball = self.env.work / "src.tar"
        with tarfile.open(tarball, "w") as t:
            t.add(src / "project", arcname="project")
        shutil.rmtree(src)
        times = {}
        for where, root in (("local", self.env.local / "tar"), ("mount", self.env.mnt / "tar")):
            root.mkdir()
            drop_caches()
            with self.maybe_phase(where, "tar:x"):
                t0 = time.perf_counter()
                subprocess.run(["tar", "xf", str(tarball), "-C", str(root)], check=True)
                x = time.perf_counter() - t0
            with self.maybe_phase(where, "tar:flush"):
                t0 = time.perf_counter()
                if where == "local":
                    subprocess.run(["sync", "-f", str(root)], check=True)
                else:
                    self.env.flush()
                times[where] = (x, time.perf_counter() - t0)
        (mx, mf), (lx, lf) = times["mount"], times["local"]
        what = f"{files} files, {fmt_size(nbytes)}"
        self.res.add(Row(f"tar x ({what})", mx, "s", lx, "local tar x", lx / mx, "report"))
        self.res.add(Row("tar x, then drive flush (durable on server)", mx + mf, "s", lx + lf,
                         "local tar x + sync", (lx + lf) / (mx + mf), "report",
                         note=f"flush alone {mf:.2f} s = {files / mf:.0f} files/s"))
        self.res.extra["tar"] = {"files": files, "bytes": nbytes, "mount_x_s": mx, "mount_flush_s": mf,
                                 "local_x_s": lx, "local_sync_s": lf}
        tarball.unlink()

    def ls(self) -> None:
        n = 10_000
        log(f"ls -l of a folder of {n:,} files, cold and warm")
        ldir = self.env.local / "many"
        ldir.mkdir()
        for i in range(n):
            os.close(os.open(ldir / f"file{i:05d}.txt", os.O_WRONLY | os.O_CREAT, 0o644))
        trio.run(make_many, self.env.url, self.env.token, "many", n)

        def ls_l(d: Path) -> float:
            t0 = time.perf_counter()
            out = subprocess.run(["ls", "-l", str(d)], capture_output=True, check=True).stdout
            sec = time.perf_counter() - t0
            lines = out.count(b"\n") - 1
            if lines != n:
                raise SystemExit(f"bench: ls -l {d} showed {lines} files, not {n}")
            return sec
        self.env.remount_cold()
        with self.phase("ls"):
            m_cold = ls_l(self.env.mnt / "many")
            m_warm = ls_l(self.env.mnt / "many")
        drop_caches()
        l_cold = ls_l(ldir)
        l_warm = ls_l(ldir)
        self.res.add(Row(f"ls -l of {n:,} files, cold", m_cold, "s", l_cold, "local, cold", l_cold / m_cold,
                         "report"))
        self.res.add(Row(f"ls -l of {n:,} files, warm", m_warm, "s", l_warm, "local, warm", l_warm / m_warm,
                         ">= 0.3x local disk", l_warm / m_warm >= 0.3))
        shutil.rmtree(ldir)

    # -- big file, memory, propagation --------------------------------------------------------------

    def big(self) -> None:
        size = self.args.big_size_bytes
        need = 3 * size + 2 * GiB
        free = shutil.disk_usage(self.env.work).free
        if free < need:
            self.res.add(Row(f"{fmt_size(size)} file written, flushed, read back", None, "s", target="completes",
                             passed=None, note=f"SKIPPED: needs ~{fmt_size(need)} free, {fmt_size(free)} free"))
            return
        log(f"big: {fmt_size(size)} written, flushed, read back (cold)")
        path = self.env.mnt / "huge.bin"
        pay = Payload("huge")
        with self.phase("big:write"):
            w = write_file(path, size, pay)
        with self.phase("big:flush"):
            f = self.env.flush()
        self.env.remount_cold()
        with self.phase("big:cold-read"):
            r, n = read_file(path)
        ok = n == size
        check_blocks(path, size, pay)
        self.res.add(Row(f"{fmt_size(size)} file written, flushed, read back", w + f + r, "s", target="completes",
                         passed=ok, note=f"write {size / MiB / w:.0f} MiB/s, flush {size / MiB / f:.0f} MiB/s, "
                                         f"cold read {size / MiB / r:.0f} MiB/s"))
        self.res.extra["big"] = {"size": size, "write_s": w, "flush_s": f, "read_s": r}
        os.unlink(path)
        self.env.flush()

    def rss(self) -> None:
        peaks = self.sampler.peaks
        for group, label in (("file", f"the {fmt_size(self.size)} file workloads"),
                             ("big", f"the {fmt_size(self.args.big_size_bytes)} file"),
                             ("ls", "ls -l of 10,000 files")):
            mine = {k: v for k, v in peaks.items() if k.split(":")[0] == group}
            if mine:
                worst = max(mine, key=mine.__getitem__)
                mb = mine[worst] / MiB
                each = ", ".join(f"{k.split(':', 1)[-1]} {v / MiB:.0f}" for k, v in mine.items())
                self.res.add(Row(f"peak RSS of the mount process, {label}", mb, "MiB", target="<= 100 MiB",
                                 passed=mb <= 100, note=f"max VmRSS sampled every 20 ms (MiB: {each})"))
        self.res.extra["rss_peaks_bytes"] = peaks
        self.res.extra["vmhwm_by_pid_bytes"] = self.sampler.hwm

    def propagation(self) -> None:
        changes = self.args.changes
        log(f"propagation: {changes} changes between two devices (scripts/propagation.py)")
        out = self.env.work / "propagation.json"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "propagation.py"), "--changes", str(changes),
                        "--json", str(out)], cwd=ROOT, check=True, env=self.env.env)
        p = json.loads(out.read_text())
        self.res.add(Row(f"two-device propagation, p50 of {changes}", p["p50_ms"], "ms", target="<= 300 ms",
                         passed=p["p50_ms"] <= 300))
        self.res.add(Row(f"two-device propagation, p95 of {changes}", p["p95_ms"], "ms", target="<= 1000 ms",
                         passed=p["p95_ms"] <= 1000, note=f"max {p['max_ms']} ms"))

    def floor(self) -> None:
        """What pyfuse3 + trio reach with a filesystem that does nothing: a ceiling for the rows above."""
        log("floor: the same workloads on an in-memory pyfuse3 filesystem (scripts/fuse_floor.py)")
        out = self.env.work / "floor.json"
        subprocess.run([sys.executable, str(ROOT / "scripts" / "fuse_floor.py"), "--size", str(self.args.size_bytes),
                        "--json", str(out)], cwd=ROOT, check=True, env=self.env.env, stdout=subprocess.DEVNULL)
        f = json.loads(out.read_text())
        what = "pyfuse3 floor (in-memory fs, no work)"
        self.res.speed(f"{what}: creates", f["create"]["floor"], f["create"]["local"], "files/s", "local disk")
        self.res.speed(f"{what}: stats, attrs expired", f["stat"]["floor"], f["stat"]["local"], "stats/s",
                       "local disk")
        self.res.speed(f"{what}: 1 MiB writes + fsync", f["write"]["floor"], f["write"]["local"], "MiB/s",
                       "local disk")
        self.res.speed(f"{what}: 1 MiB reads", f["read"]["floor"], f["read"]["local"], "MiB/s",
                       "local page cache")
        self.res.extra["floor"] = f

    # -- the order ----------------------------------------------------------------------------------

    def run(self) -> None:
        steps: list[tuple[str, Callable[[], None]]] = [
            ("write", self.write), ("flush", lambda: None), ("cold-read", self.cold_read),
            ("warm-read", self.warm_read), ("random-read", self.random_read), ("overwrite", self.overwrite),
            ("insert", self.insert), ("transfer", self.transfer), ("small-files", self.small_files),
            ("tar", self.tar), ("ls", self.ls), ("big", self.big), ("rss", self.rss),
            ("propagation", self.propagation), ("floor", self.floor)]
        for name, step in steps:
            if name == "flush" and self.want("flush") and not self.want("write"):
                self.write()  # the flush row is measured right after the write
                continue
            if not self.want(name):
                continue
            if name == "big" and not self.args.big:
                continue
            if name == "transfer" and self.args.quick:
                continue
            step()


async def make_many(url: str, token: str, folder: str, n: int) -> None:
    """A folder of `n` empty files, made through the API (8 requests at a time)."""
    async with ApiClient(url, token, device="bench-setup") as api:
        me = await api.me()
        parent = await api.create_folder(me.root_id, folder)
        names = iter(range(n))

        async def worker() -> None:
            for i in names:
                await api.commit_file([], 0, parent_id=parent.id, name=f"file{i:05d}.txt")

        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENCY):
                nursery.start_soon(worker)


def machine() -> dict[str, str]:
    def sh(*cmd: str) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": sh("nproc"), "free_h": sh("free", "-h"), "kernel": sh("uname", "-r"), "cpu": cpu,
            "python": platform.python_version()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="workloads: " + ", ".join(WORKLOADS))
    ap.add_argument("--size", default=None, help="size of the big-file workloads (default 1G; 256M with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="a short run: --size 256M unless given, 30 propagation changes, no transfer-engine rows")
    ap.add_argument("--only", help="comma-separated workloads to run (default: all but big)")
    ap.add_argument("--big", action="store_true", help="also write, flush and read back a --big-size file")
    ap.add_argument("--big-size", default="10G", help="size for --big (default 10G; e.g. 50G)")
    ap.add_argument("--changes", type=int, default=None, help="propagation changes (default 100; 30 with --quick)")
    ap.add_argument("--tar-files", type=int, default=3000, help="files in the generated source tree (default 3000)")
    ap.add_argument("--json", type=Path, help="where to write the results (default bench-results/bench-<date>.json)")
    ap.add_argument("--dir", type=Path, help="parent of the scratch directory (default: the system temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (server data, cache, logs)")
    ap.add_argument("--profile", nargs="?", const="svg", choices=["svg", "raw"],
                    help="record the mount daemon with py-spy during each measured phase: flame graphs (svg, "
                         "default) or collapsed stacks (raw) in bench-results/profiles-<date>/")
    args = ap.parse_args()
    args.size_bytes = parse_size(args.size or ("256M" if args.quick else "1G"))
    args.size_bytes -= args.size_bytes % BLOCK
    args.big_size_bytes = parse_size(args.big_size) // BLOCK * BLOCK
    args.changes = args.changes or (30 if args.quick else 100)
    if args.only:
        args.only = {w.strip() for w in args.only.split(",") if w.strip()}
        unknown = args.only - set(WORKLOADS)
        if unknown:
            ap.error(f"unknown workloads: {', '.join(sorted(unknown))} (choose from {', '.join(WORKLOADS)})")
        if "big" in args.only:
            args.big = True
    work = Path(tempfile.mkdtemp(prefix="drivefs-bench-", dir=args.dir))
    need = 4 * args.size_bytes + 2 * GiB
    if shutil.disk_usage(work).free < need:
        raise SystemExit(f"bench: needs about {fmt_size(need)} free in {work.parent}")
    started = dt.datetime.now()
    load_before = os.getloadavg()
    args.profile_dir = ROOT / "bench-results" / f"profiles-{started:%Y-%m-%d-%H%M%S}"
    if args.profile:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    sampler = RssSampler()
    env = Env(work, sampler)
    res = Results()
    log(f"scratch directory {work}; size {fmt_size(args.size_bytes)}")
    try:
        env.start()
        env.mount(fresh_cache=True)
        bench = Bench(args, env, res, sampler)
        bench.run()
        res.extra["drop_caches"] = drop_caches()
    finally:
        sampler.stop()
        env.stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = (dt.datetime.now() - started).total_seconds()
    command = " ".join(["scripts/bench", *sys.argv[1:]])
    print()
    load = {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]}
    print(f"drivefs bench {started:%Y-%m-%d %H:%M}, size {fmt_size(args.size_bytes)}, {elapsed:.0f} s: {command}")
    print(f"load average (1/5/15 min) before {load['before']}, after {load['after']} on {os.cpu_count()} CPUs")
    print(res.table())
    for r in res.rows:
        if r.note:
            print(f"  - {r.workload}: {r.note}")
    out = args.json or ROOT / "bench-results" / f"bench-{started:%Y-%m-%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "date": started.isoformat(timespec="seconds"), "command": command, "elapsed_s": round(elapsed, 1),
        "size": args.size_bytes, "machine": machine(), "load_average": load,
        "rows": [dataclasses.asdict(r) for r in res.rows], "extra": res.extra}, indent=2, default=str) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
