"""Upload one file with remote.Transfer in a process of its own, for tests that kill it or measure its memory.

Prints one JSON line: the node id, the transfer statistics, the seconds taken and this process's
peak RSS (VmHWM, KiB), at the end and once an eighth of the file had been sent. The token comes from
$DRIVEFS_TOKEN (kept off the command line).
`--throttle S` sleeps S seconds after each chunk sent, so a test can kill the process midway.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import trio  # noqa: E402

from cache.index import Index  # noqa: E402
from remote.client import ApiClient  # noqa: E402
from remote.transfer import Transfer  # noqa: E402


def vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


async def main(args: argparse.Namespace) -> dict:
    index = Index(args.index) if args.index else None

    hwm_at_eighth = None

    def progress(done: int, total: int) -> None:
        nonlocal hwm_at_eighth
        if hwm_at_eighth is None and 8 * done >= total:
            hwm_at_eighth = vm_hwm_kib()
        if args.throttle:
            time.sleep(args.throttle)  # blocks the trio loop on purpose: a slow link

    start = time.monotonic()
    async with ApiClient(args.url, os.environ["DRIVEFS_TOKEN"], device="upload-proc") as api:
        transfer = Transfer(api, concurrency=args.concurrency)
        node = await transfer.upload_file(args.file, parent_id=args.parent, name=args.name, index=index,
                                          upload_key=args.key, progress=progress)
    return {"node_id": node.id, "seconds": time.monotonic() - start,
            "stats": dataclasses.asdict(transfer.statistics()), "vm_hwm_kib": vm_hwm_kib(),
            "vm_hwm_at_eighth_kib": hwm_at_eighth}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--index")
    p.add_argument("--key")
    p.add_argument("--throttle", type=float, default=0.0)
    p.add_argument("--concurrency", type=int, default=8)
    print(json.dumps(trio.run(main, p.parse_args())), flush=True)
