"""Upload one large file with remote.Transfer and report the uploading process's peak RSS and throughput.

    python scripts/upload_rss.py                       # 2 GiB, to a temporary server started here
    python scripts/upload_rss.py --size 512M
    python scripts/upload_rss.py --server URL --token-file F [--size 8G]

The file is pseudo-random (incompressible, so nothing dedupes or compresses) and written in 4 MiB
blocks, so making it costs no memory. Without --server, a server is started with
`python -m mountfs.cli server` on a temporary data directory, with a user from `mountfs.cli user add`,
and both are removed at the end. The peak RSS printed is VmHWM of this process, which is the one that
scans, compresses and uploads; the server runs in its own process.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import trio  # noqa: E402

from remote.client import ApiClient  # noqa: E402
from remote.transfer import Transfer  # noqa: E402

MiB = 2**20
BLOCK = 4 * MiB


def parse_size(text: str) -> int:
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def make_file(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(BLOCK, left)
            f.write(rng.randbytes(n))
            left -= n


class LocalServer:
    """A throwaway `drive server` on a free loopback port, with one user."""

    def __init__(self, workdir: Path) -> None:
        self.data = workdir / "server"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        cli = [sys.executable, "-m", "mountfs.cli"]
        token = subprocess.run([*cli, "user", "add", "rss", "--data", str(self.data)], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [*cli, "server", "--data", str(self.data), "--port", str(self.port), "--log-level", "warning"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=0.5).status_code == 200:
                    return token
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise SystemExit("the server did not start within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def upload(url: str, token: str, path: Path, size: int, concurrency: int) -> tuple[float, object]:
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 2 or done == total:
            last[0] = now
            print(f"  {done / MiB:8.0f} / {total / MiB:.0f} MiB   RSS {status_kib('VmRSS') / 1024:.0f} MiB",
                  file=sys.stderr, flush=True)

    async with ApiClient(url, token, device="upload-rss") as api:
        me = await api.me()
        transfer = Transfer(api, concurrency=concurrency)
        start = time.monotonic()
        await transfer.upload_file(path, parent_id=me.root_id, name=f"upload-rss-{size}-{int(time.time())}",
                                   progress=progress)
        return time.monotonic() - start, transfer.statistics()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="2G", help="file size, e.g. 512M, 2G (default 2G)")
    p.add_argument("--server", help="URL of a running server (default: start a temporary one)")
    p.add_argument("--token-file", help="file holding the token for --server (or set DRIVEFS_TOKEN)")
    p.add_argument("--dir", help="where to write the test file (default: a temporary folder)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seed", type=int, default=None, help="seed for the file's bytes (default: random)")
    args = p.parse_args()
    size = parse_size(args.size)

    workdir = Path(tempfile.mkdtemp(prefix="upload-rss-", dir=args.dir))
    server = None
    try:
        if args.server:
            url = args.server
            token = (Path(args.token_file).read_text().strip() if args.token_file
                     else os.environ.get("DRIVEFS_TOKEN", ""))
            if not token:
                raise SystemExit("give --token-file or set DRIVEFS_TOKEN for --server")
        else:
            server = LocalServer(workdir)
            token = server.start()
            url = server.url
        path = workdir / "payload"
        t0 = time.monotonic()
        make_file(path, size, args.seed if args.seed is not None else random.getrandbits(64))
        print(f"wrote {size / MiB:.0f} MiB in {time.monotonic() - t0:.1f} s; "
              f"RSS before upload {status_kib('VmRSS') / 1024:.0f} MiB", file=sys.stderr)
        seconds, stats = trio.run(upload, url, token, path, size, args.concurrency)
        print(f"uploaded {size / MiB:.0f} MiB in {seconds:.1f} s = {size / MiB / seconds:.0f} MiB/s "
              f"(scan, compress, PUT and commit; server on {'this machine' if server else url})")
        print(f"chunks sent {stats.chunks_sent}, bytes sent {stats.bytes_sent / MiB:.0f} MiB, "
              f"skipped {stats.chunks_skipped}")
        print(f"peak RSS of the uploading process (VmHWM): {status_kib('VmHWM') / 1024:.0f} MiB")
        return 0
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
