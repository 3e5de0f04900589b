"""Many processes at once: 8 on device A write, append, read, rename and delete the same names in the
same folders, while 4 on device B do the same elsewhere in the tree. After both flush, A, B and the
server converge to one identical tree (every path, and the SHA-256 of every file).

Workers run RELIABILITY_CONCURRENCY_S seconds (6 here; scripts/soak runs longer).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fixtures.mount import MountProcess
from tests.reliability.helpers import (
    CONCURRENCY_S,
    SEED,
    ServerView,
    converge,
    flush_until_ok,
)

WORKER = Path(__file__).with_name("worker.py")
# What racing on the same names may legitimately answer: the name was renamed or deleted meanwhile.
EXPECTED_ERRORS = {"ENOENT"}


def start_workers(root: Path, n: int, folders: list[str], seed: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, str(WORKER), str(root), str(seed + i), str(CONCURRENCY_S), *folders],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(n)]


def results(procs: list[subprocess.Popen]) -> list[dict]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=CONCURRENCY_S + 120)
        assert p.returncode == 0, stderr
        out.append(json.loads(stdout))
    return out


def test_concurrent_processes_on_two_devices_converge(server, tmp_path, counts):
    name, token = server.add_user()
    a = MountProcess(server, name, token, tmp_path / "a", device="concA")
    b = MountProcess(server, name, token, tmp_path / "b", device="concB")
    view = ServerView(server.url, token)
    procs: list[subprocess.Popen] = []
    try:
        a.mount()
        b.mount()
        a_folders = ["c/s0", "c/s1", "c/s1/deeper"]
        b_folders = ["d/t0", "d/t1"]
        for f in a_folders:
            (a.path / f).mkdir(parents=True)
        for f in b_folders:
            (b.path / f).mkdir(parents=True)
        procs = start_workers(a.path, 8, a_folders, SEED * 100) + start_workers(b.path, 4, b_folders, SEED * 100 + 50)
        done = results(procs)
        ops = sum(r["ops"] for r in done)
        errors: dict[str, int] = {}
        for r in done:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        assert set(errors) <= EXPECTED_ERRORS, f"unexpected errors from the workers: {errors}"
        assert ops > 100, done

        # The queue grows with the workers' run time: after 60 s of 8 workers device A commits ~8,500
        # versions, which took over 180 s on a loaded machine (still committing steadily when cut off).
        flush_until_ok(a, timeout=60 + 4 * CONCURRENCY_S)
        flush_until_ok(b, timeout=60 + 4 * CONCURRENCY_S)
        tree = converge([a, b], view, timeout=60 + CONCURRENCY_S)
        files = [p for p, v in tree.items() if v != "dir"]
        assert any(p.startswith("c/") for p in files) and any(p.startswith("d/") for p in files), tree
        conflicted = [p for p in files if "conflicted copy" in p]
        assert not conflicted, f"one device per subtree cannot conflict: {conflicted}"
        print(f"concurrency: {ops} operations, errors {errors}, {len(files)} files in the end")
        counts.add(files_verified=3 * len(files))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        view.close()
        a.cleanup()
        b.cleanup()
