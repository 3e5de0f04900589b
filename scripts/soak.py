"""Soak: run tests/reliability over and over with bigger knobs and a new seed each time, until the
duration is over (a run that has started is finished), then print what was exercised in all.

    scripts/soak                      # 30 minutes: 100 kill points, 30 s outages, 500 fuzz cases per run
    scripts/soak --duration 2h --kill-points 300
    scripts/soak --duration 0 -k crash   # one run of the crash test only

Each run's pytest temp directory is kept under --workdir when the run fails (mount and server logs
are in it) and deleted otherwise. A failure prints its seed: RELIABILITY_SEED=<seed> with the same
knobs reproduces the run (`scripts/soak --seed <seed> --duration 0`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("kill_points", "faults_injected", "fuzz_cases", "files_verified")
COUNTS_FILE = "reliability-counts.json"


def duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m or 2h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=duration, default=duration("30m"),
                   help="keep starting runs until this much time has passed (default 30m; 0 = one run)")
    p.add_argument("--kill-points", type=int, default=100, help="kill -9 rounds per run (default 100)")
    p.add_argument("--outage", type=float, default=30.0, help="seconds the blob store is down (default 30)")
    p.add_argument("--fuzz-examples", type=int, default=500, help="Hypothesis examples per property (default 500)")
    p.add_argument("--fault-ops", type=int, default=200,
                   help="operations of the dropped/delayed-answers workload (default 200)")
    p.add_argument("--concurrency-seconds", type=float, default=60.0,
                   help="how long the concurrent workers run (default 60)")
    p.add_argument("--seed", type=int, default=None, help="seed of the first run (default: from the clock)")
    p.add_argument("-k", dest="keyword", default=None, help="only the tests matching this pytest -k expression")
    p.add_argument("--workdir", type=Path, default=None, help="where runs keep their temp dirs (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temp dirs of passing runs too")
    return p.parse_args(argv)


def read_counts(path: Path) -> dict[str, int]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def line(counts: dict[str, int]) -> str:
    return ("kill points survived={kill_points}, faults injected={faults_injected}, fuzz cases={fuzz_cases}, "
            "files verified={files_verified}").format(**{k: counts.get(k, 0) for k in KEYS})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    seed = args.seed if args.seed is not None else random.Random(time.time_ns()).randrange(1, 2**31)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="drivefs-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ,
           "RELIABILITY_KILL_POINTS": str(args.kill_points), "RELIABILITY_OUTAGE_S": str(args.outage),
           "RELIABILITY_FUZZ_EXAMPLES": str(args.fuzz_examples), "RELIABILITY_FAULT_OPS": str(args.fault_ops),
           "RELIABILITY_CONCURRENCY_S": str(args.concurrency_seconds)}
    print(f"soak: runs until {args.duration:.0f} s have passed; knobs: {args.kill_points} kill points, "
          f"{args.outage:g} s outages, {args.fuzz_examples} fuzz examples, {args.fault_ops} fault ops, "
          f"{args.concurrency_seconds:g} s of concurrency; work dir {workdir}", flush=True)

    totals = {k: 0 for k in KEYS}
    failures: list[tuple[int, int, Path]] = []
    start = time.monotonic()
    run = 0
    try:
        while run == 0 or time.monotonic() - start < args.duration:
            run += 1
            run_seed = seed + run - 1
            basetemp = workdir / f"run-{run}-seed-{run_seed}"
            cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-q", "-p", "no:cacheprovider",
                   f"--basetemp={basetemp}", "-o", "timeout=0"]
            if args.keyword:
                cmd += ["-k", args.keyword]
            print(f"soak: run {run}, seed {run_seed}", flush=True)
            t = time.monotonic()
            rc = subprocess.run(cmd, cwd=ROOT, env={**env, "RELIABILITY_SEED": str(run_seed)}, check=False).returncode
            got = read_counts(basetemp / COUNTS_FILE)
            for k in KEYS:
                totals[k] += got.get(k, 0)
            print(f"soak: run {run} {'passed' if rc == 0 else f'FAILED (pytest exit {rc})'} in "
                  f"{time.monotonic() - t:.0f} s: {line(got)}", flush=True)
            if rc != 0:
                failures.append((run, run_seed, basetemp))
            elif not args.keep:
                shutil.rmtree(basetemp, ignore_errors=True)
    except KeyboardInterrupt:
        print("soak: interrupted", flush=True)
    elapsed = time.monotonic() - start
    print(f"soak: {run} run{'s' * (run != 1)} in {elapsed / 60:.1f} min, {len(failures)} failed")
    for n, s, where in failures:
        print(f"soak: run {n} failed: reproduce with RELIABILITY_SEED={s} (logs in {where})")
    print(f"soak: {line(totals)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
