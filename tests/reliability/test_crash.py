"""kill -9 of the mount at random points of a workload of writes, renames and deletes.

Each round runs a random batch of operations in a thread on device A and kills A's daemon from the test
at a random moment: while an operation is in flight, or after the batch while uploads are running.
Then A is mounted again and flushed, and:

- every file whose write returned through fsync or close holds exactly those bytes, on the server and
  on device B (a second mount of the same account, never killed), and every rename and delete that
  returned is applied;
- the one operation cut by the kill left either its before or its after state (a write: the old bytes
  or a prefix of the new ones; a rename: the file at one of its two names, never both);
- no other file appears (no duplicate, no conflicted copy of our own commit), and no version in any
  file's history holds bytes that were never written (a half-committed version is never visible).

The number of rounds is RELIABILITY_KILL_POINTS (20 here; scripts/soak runs more), seeded by
RELIABILITY_SEED.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures.mount import MountProcess, _dead
from tests.reliability.helpers import (
    KILL_POINTS,
    SEED,
    ServerView,
    content_sha,
    converge,
    flush_until_ok,
    sha,
    two_devices,
)

FOLDERS = ("w0", "w1", "w0/deep")
MAX_FILES = 14
# What a syscall on a mount whose daemon died answers.
DEAD_MOUNT = {errno.ENOTCONN, errno.ECONNABORTED}


@dataclass
class Op:
    kind: str  # write | rename | delete
    path: str
    dest: str | None = None
    data: bytes = field(default=b"", repr=False)
    fsync: bool = False
    pause_s: float = 0.0
    stage: str = "pending"  # pending -> started -> (durable) -> done


def random_size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.05:
        return 0
    if r < 0.70:
        return rng.randrange(1, 64 << 10)
    if r < 0.92:
        return rng.randrange(200 << 10, 1536 << 10)
    return rng.randrange(3 << 20, 6 << 20)


def plan(rng: random.Random, state: dict[str, bytes], serial: list[int]) -> list[Op]:
    """A batch of 3..8 operations that are valid one after another, starting from `state`."""
    sim = dict(state)
    ops = []
    for _ in range(rng.randint(3, 8)):
        names = sorted(sim)
        r = rng.random()
        if not names or (r < 0.45 and len(names) < MAX_FILES):
            serial[0] += 1
            op = Op("write", f"{rng.choice(FOLDERS)}/f{serial[0]}.bin")
        elif r < 0.65:
            op = Op("write", rng.choice(names))
        elif r < 0.85:
            src = rng.choice(names)
            if rng.random() < 0.4 and len(names) > 1:
                dest = rng.choice([n for n in names if n != src])  # saved over an existing file
            else:
                serial[0] += 1
                dest = f"{rng.choice(FOLDERS)}/r{serial[0]}.bin"
            op = Op("rename", src, dest)
        else:
            op = Op("delete", rng.choice(names))
        if op.kind == "write":
            op.data = rng.randbytes(random_size(rng))
            op.fsync = rng.random() < 0.5
            sim[op.path] = op.data
        elif op.kind == "rename":
            assert op.dest is not None
            sim[op.dest] = sim.pop(op.path)
        else:
            del sim[op.path]
        op.pause_s = rng.choice((0.0, 0.0, 0.01, 0.05, 0.15))
        ops.append(op)
    return ops


class Workload(threading.Thread):
    """Runs the ops one by one on the mount, applying each to `state` once its syscalls returned."""

    def __init__(self, root: Path, ops: list[Op], state: dict[str, bytes]) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.ops = ops
        self.state = state
        self.current: Op | None = None
        self.error: OSError | None = None

    def run(self) -> None:
        for op in self.ops:
            self.current = op
            op.stage = "started"
            try:
                self._do(op)
            except OSError as e:
                self.error = e
                return
            op.stage = "done"
            self.current = None
            if op.kind == "write":
                self.state[op.path] = op.data
            elif op.kind == "rename":
                assert op.dest is not None
                self.state[op.dest] = self.state.pop(op.path)
            else:
                del self.state[op.path]
            time.sleep(op.pause_s)

    def _do(self, op: Op) -> None:
        path = self.root / op.path
        if op.kind == "write":
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(op.data)
                while view:
                    view = view[os.write(fd, view):]
                if op.fsync:
                    os.fsync(fd)
                    op.stage = "durable"
            finally:
                os.close(fd)
        elif op.kind == "rename":
            os.rename(path, self.root / op.dest)
        else:
            os.unlink(path)


def kill_daemon(m: MountProcess, workload: Workload) -> None:
    """kill -9 A's daemon, let the workload see the dead mount, then clear it (as MountProcess.kill does,
    but the lazy unmount waits for the workload: after it, the workload's paths would reach the empty
    directory under the mount point instead of failing)."""
    pid = m.daemon_pid()
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not _dead(pid) and time.monotonic() < deadline:
        time.sleep(0.005)
    workload.join(20)
    assert not workload.is_alive(), "the workload hangs on the dead mount"
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True, check=False)


Match = Callable[[bytes | None], bool]


def exactly(value: bytes | None) -> Match:
    return lambda seen: seen == value


def outcomes(op: Op, state: dict[str, bytes]) -> list[dict[str, Match]]:
    """The states the paths of an operation cut by the kill may be left in (any one of them, whole)."""
    if op.kind == "write":
        new: Match = lambda seen: seen is not None and op.data.startswith(seen)
        if op.stage == "durable":
            return [{op.path: exactly(op.data)}]
        return [{op.path: exactly(state.get(op.path))}, {op.path: new}]
    if op.kind == "rename":
        assert op.dest is not None
        return [{op.path: exactly(state[op.path]), op.dest: exactly(state.get(op.dest))},
                {op.path: exactly(None), op.dest: exactly(state[op.path])}]
    return [{op.path: exactly(state[op.path])}, {op.path: exactly(None)}]


def check_round(seen: dict[str, bytes], state: dict[str, bytes], cut: Op | None, where: str) -> None:
    touched = {cut.path, cut.dest} - {None} if cut else set()
    for path in sorted((set(seen) | set(state)) - touched):
        want, got = state.get(path), seen.get(path)
        assert got == want, (f"{where}: {path} is {_describe(got)}, expected {_describe(want)} "
                             f"(completed operations must survive kill -9)")
    if cut is not None:
        options = outcomes(cut, state)
        assert any(all(match(seen.get(p)) for p, match in option.items()) for option in options), (
            f"{where}: the {cut.kind} of {cut.path} cut by the kill (stage {cut.stage}) left "
            + ", ".join(f"{p}={_describe(seen.get(p))}" for p in sorted(touched)))


def _describe(data: bytes | None) -> str:
    return "absent" if data is None else f"{len(data)} bytes {sha(data)[:12]}"


def check_history(view: ServerView, written: set[str], torn: list[bytes], where: str,
                  seen: set[tuple[int, int]]) -> None:
    """Every version of every live file holds bytes some write produced (whole, or the prefix left by a
    write cut by a kill). Versions never change, so those in `seen` were checked in an earlier round."""
    for path, node in view.nodes().items():
        if node["kind"] != "file":
            continue
        for v in view.versions(node):
            if (node["id"], v["version"]) in seen:
                continue
            h = v["content_hash"] or (content_sha(b"") if v["size"] == 0 else None)
            ok = h in written or any(len(d) >= v["size"] and content_sha(d[:v["size"]]) == h for d in torn)
            assert ok, f"{where}: version {v['version']} of {path} ({v['size']} bytes) was never written"
            seen.add((node["id"], v["version"]))


def test_kill_9_at_random_points_loses_nothing_that_returned(server, tmp_path, counts):
    rng = random.Random(SEED)
    with two_devices(server, tmp_path, server.add_user(), "crash") as (a, b, view):
        for folder in FOLDERS:
            (a.path / folder).mkdir()
        flush_until_ok(a)
        converge([a, b], view)

        state: dict[str, bytes] = {}
        written = {content_sha(b"")}
        torn: list[bytes] = []
        versions_seen: set[tuple[int, int]] = set()
        serial = [0]
        cut_ops = 0
        for round_no in range(1, KILL_POINTS + 1):
            where = f"round {round_no} (seed {SEED})"
            ops = plan(rng, state, serial)
            written.update(content_sha(op.data) for op in ops if op.kind == "write")
            work = Workload(a.path, ops, state)
            work.start()
            if rng.random() < 0.5:  # in the middle of a chosen operation
                target = rng.choice(ops)
                deadline = time.monotonic() + 5
                while work.current is not target and target.stage == "pending" and work.is_alive() \
                        and time.monotonic() < deadline:
                    time.sleep(0.0005)
                time.sleep(rng.uniform(0.0, 0.01))
            else:  # anywhere, often after the batch while its uploads run
                time.sleep(rng.uniform(0.0, 0.8))
            kill_daemon(a, work)
            cut = work.current
            if work.error is not None:
                assert work.error.errno in DEAD_MOUNT, f"{where}: {cut} failed before the kill: {work.error!r}"
            if cut is not None:
                cut_ops += 1
                if cut.kind == "write":
                    torn.append(cut.data)
                # the state the cut op started from: every op before it completed
                assert all(op.stage == "done" for op in ops[:ops.index(cut)])

            a.mount()
            flush_until_ok(a)
            on_server = view.files()
            check_round(on_server, state, cut, f"{where}, on the server")
            tree = converge([a, b], view)  # A and B show the server's listing and bytes
            assert {p for p, v in tree.items() if v != "dir"} == set(on_server)
            check_history(view, written, torn, where, versions_seen)
            state.clear()
            state.update(on_server)
            counts.add(kill_points=1, files_verified=3 * len(on_server))
        print(f"crash: {KILL_POINTS} kill points, {cut_ops} cut an operation in flight, seed {SEED}")
