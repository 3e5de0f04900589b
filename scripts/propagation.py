#!/usr/bin/env python3
"""Measures how long a change on one device takes to show on another: p50 and p95 over N changes.

Starts a temporary server and two mounts of one account (separate caches and device names) on this
machine, then for each change writes a file on A and polls B until it reads the new content.
Usage: .venv/bin/python scripts/propagation.py [--changes 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def drive(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mountfs.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=check)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str) -> None:
    import httpx

    for _ in range(200):
        try:
            if httpx.get(url + "/health", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit("the server did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="drivefs-prop-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mountfs.cli", "server", "--data", str(work / "data"),
                               "--port", str(port), "--log-level", "warning"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    mounts: list[tuple[Path, dict]] = []
    try:
        wait_health(url)
        token = drive("user", "add", "bench", "--data", str(work / "data")).stdout.strip()
        for dev in ("A", "B"):
            env = {**os.environ, "DRIVE_CONFIG_DIR": str(work / f"cfg{dev}")}
            mnt = work / f"mnt{dev}"
            mnt.mkdir()
            drive("login", "--server", url, "--user", "bench", "--token", token, env=env)
            drive("mount", str(mnt), "--cache-dir", str(work / f"cache{dev}"), "--device", f"device{dev}", env=env)
            mounts.append((mnt, env))
        (a, _), (b, _) = mounts
        os.listdir(b)
        latencies = []
        for i in range(args.changes):
            content = f"change {i} {time.time_ns()}".encode()
            path_a, path_b = a / f"f{i % 10}.txt", b / f"f{i % 10}.txt"
            start = time.monotonic()
            path_a.write_bytes(content)
            while True:
                try:
                    if path_b.read_bytes() == content:
                        break
                except OSError:
                    pass
                if time.monotonic() - start > 10:
                    raise SystemExit(f"change {i} did not reach B within 10 s")
                time.sleep(0.002)
            latencies.append(time.monotonic() - start)
        lat = sorted(latencies)
        result = {"changes": len(lat), "p50_ms": round(statistics.median(lat) * 1000, 1),
                  "p95_ms": round(lat[int(0.95 * (len(lat) - 1))] * 1000, 1), "max_ms": round(lat[-1] * 1000, 1),
                  "targets": {"p50_ms": 300, "p95_ms": 1000}}
        print(f"propagation over {result['changes']} changes: p50 {result['p50_ms']} ms, "
              f"p95 {result['p95_ms']} ms, max {result['max_ms']} ms (targets: p50 <= 300 ms, p95 <= 1000 ms)")
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    finally:
        for mnt, env in mounts:
            drive("unmount", str(mnt), "--no-flush", env=env, check=False)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
