"""The server fails under a mount: killed mid-upload and mid-commit, its blob store unavailable, its
answers delayed or lost. Clients retry; nothing is lost or duplicated; `drive status --json` says what
is going on (offline, or the last error) while it lasts.

Device A mounts through a fault-injecting proxy (tests/fixtures/faultproxy.py) on the test's own
server; device B mounts the server directly and must end up showing the same tree.

The blob-store outage lasts RELIABILITY_OUTAGE_S seconds: 8 s in the normal suite, 30 s in
scripts/soak.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from tests.fixtures.faultproxy import FaultProxy, ProxiedServer
from tests.fixtures.mount import MountProcess
from tests.reliability.helpers import (
    FAULT_OPS,
    OUTAGE_S,
    SEED,
    ServerView,
    content_sha,
    converge,
    flush_until_ok,
    sha,
    status,
    two_devices,
    wait_for,
)

MiB = 1 << 20
COMMIT = r"^POST /api/v1/uploads/[^/]+/commit$"
BLOBS = r"^(PUT|GET) /blobs/"


@pytest.fixture
def rig(fresh_server, tmp_path):
    """(server, proxy, A through the proxy, B direct, a ServerView of their account)."""
    proxy = FaultProxy(fresh_server.url, seed=SEED).start()
    try:
        with two_devices(fresh_server, tmp_path, fresh_server.add_user(), "fault",
                         a_server=ProxiedServer(proxy.url)) as (a, b, view):
            os.listdir(b.path)
            yield fresh_server, proxy, a, b, view
    finally:
        proxy.stop()


def blob_files(server) -> int:
    """Chunks in the embedded server's blob folder."""
    return sum(1 for p in (server.data_dir / "blobs").rglob("*") if p.is_file() and len(p.name) == 64)


def troubled(m: MountProcess) -> dict | None:
    """drive status while the server is in trouble: offline, or an error on record."""
    st = status(m)
    return st if (not st.get("online") or st.get("last_error")) else None


def assert_single_versions(view: ServerView, files: dict[str, bytes], versions: dict[str, int]) -> None:
    nodes = view.nodes()
    names = {p for p, n in nodes.items() if n["kind"] == "file"}
    assert names == set(files), (f"only on the server: {sorted(names - set(files))}, "
                                 f"missing: {sorted(set(files) - names)}")
    for path, data in files.items():
        assert view.content(nodes[path]) == data, path
        got = view.versions(nodes[path])[::-1]
        if len(got) > 1 and got[0]["version"] == 1 and got[0]["size"] == 0 and data:
            got = got[1:]  # created empty while still being written, then its bytes: by design
        assert len(got) == versions.get(path, 1), (path, [(v["version"], v["size"]) for v in got])


@pytest.mark.embedded_only  # slows the upload at the server's own blob URLs (an S3 store's are not proxied)
def test_server_killed_mid_upload_and_restarted(rig, counts):
    server, proxy, a, b, view = rig
    rng = random.Random(SEED)
    slow = proxy.add(r"^PUT /blobs/", "delay", delay_s=0.25)  # an upload that takes a few seconds
    big = rng.randbytes(40 * MiB)
    small = {f"s{i}.txt": rng.randbytes(1000 + i) for i in range(3)}
    (a.path / "big.bin").write_bytes(big)
    for n, data in small.items():
        (a.path / n).write_bytes(data)
    wait_for(lambda: slow.hits >= 10, 30, "the upload of big.bin is under way")
    server.kill()
    st = wait_for(lambda: troubled(a), 30, "drive status shows the server trouble")
    assert st["pending_files"] + st["pending_ops"] >= 1, st
    time.sleep(1.0)
    stored_before = blob_files(server)
    puts_before = slow.hits
    server.start()
    flush_until_ok(a, timeout=90)
    files = {"big.bin": big, **small}
    assert_single_versions(view, files, {})
    # resumed: what the server already had was not sent again (a few PUTs cut by the restart may repeat)
    sent_after, needed = slow.hits - puts_before, blob_files(server) - stored_before
    assert 0 < stored_before and sent_after <= needed + 8, (stored_before, needed, sent_after)
    converge([a, b], view, timeout=60)
    assert not troubled(a)
    counts.add(faults_injected=1 + proxy.faults, files_verified=3 * len(files))


def test_server_killed_mid_commit_and_restarted(rig, counts):
    server, proxy, a, b, view = rig
    rng = random.Random(SEED + 1)
    files: dict[str, bytes] = {}
    versions: dict[str, int] = {}
    faults = 0
    for round_no, path in enumerate(["new.bin", "new.bin", "other.bin"]):
        # the server commits, dies before its answer leaves, and comes back
        data = rng.randbytes(rng.randrange(1, 3 * MiB))
        rule = proxy.add(COMMIT, "drop_response", times=1, hook=server.kill)
        (a.path / path).write_bytes(data)
        wait_for(lambda r=rule: r.hits == 1, 30, f"commit {round_no} reached the server")
        if round_no == 0:  # (A's retries give up after about 8 s; later rounds need not wait for that)
            wait_for(lambda: troubled(a), 30, "drive status shows the server trouble")
        else:
            time.sleep(rng.uniform(0.2, 2.0))
        proxy.remove(rule)
        faults += 2
        server.start()
        flush_until_ok(a, timeout=90)
        files[path] = data
        versions[path] = versions.get(path, 0) + 1
        assert_single_versions(view, files, versions)  # committed once: no second version, no copy
    converge([a, b], view, timeout=60)
    counts.add(faults_injected=faults, files_verified=3 * len(files))


@pytest.mark.embedded_only  # fails the server's own blob URLs (an S3 store's are not proxied)
def test_blob_store_unavailable_for_a_while(rig, counts):
    """Every blob GET and PUT answers 503 for RELIABILITY_OUTAGE_S seconds (8 s here, 30 s in the soak)."""
    _server, proxy, a, b, view = rig
    rng = random.Random(SEED + 2)
    (a.path / "old.bin").write_bytes(old := rng.randbytes(2 * MiB))
    flush_until_ok(a)
    outage = proxy.add(BLOBS, "status", status=503)
    start = time.monotonic()
    files = {"old.bin": rng.randbytes(3 * MiB)}
    (a.path / "old.bin").write_bytes(files["old.bin"])
    for i in range(4):
        files[f"new{i}.bin"] = rng.randbytes(rng.randrange(100_000, 2 * MiB))
        (a.path / f"new{i}.bin").write_bytes(files[f"new{i}.bin"])
    (a.path / "empty").write_bytes(b"")  # needs no blob: goes up during the outage
    files["empty"] = b""
    st = wait_for(lambda: (s := status(a)) and s.get("last_error") and "503" in s["last_error"] and s, 30,
                  "drive status names the failing blob store")
    assert st["pending_files"] + st["pending_ops"] >= 1, st
    assert (a.path / "old.bin").read_bytes() == files["old.bin"]  # local work goes on meanwhile
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - start)))
    proxy.remove(outage)
    flush_until_ok(a, timeout=90 + OUTAGE_S)
    assert_single_versions(view, files, {"old.bin": 2})
    assert view.versions(view.nodes()["old.bin"])[-1]["content_hash"] == content_sha(old)  # newest first
    converge([a, b], view, timeout=60)
    wait_for(lambda: not troubled(a), 30, "the error clears once everything is up")
    counts.add(faults_injected=outage.hits, files_verified=3 * len(files))


class Model:
    """The tree A should end with: folders, and files with their bytes."""

    def __init__(self) -> None:
        self.dirs: set[str] = set()
        self.files: dict[str, bytes] = {}
        self.written: set[str] = {content_sha(b"")}

    def tree(self) -> dict[str, str]:
        return {**{d: "dir" for d in self.dirs}, **{p: sha(d) for p, d in self.files.items()}}


def run_workload(root: Path, rng: random.Random, model: Model, n_ops: int) -> None:
    """mkdir, write (some slowly, so the syncer meets them open), overwrite, rename (also over another
    file), delete; every op returns before the next starts."""
    model.dirs.update({"d0", "d1"})
    for d in ("d0", "d1"):
        (root / d).mkdir()
    serial = 0
    for _ in range(n_ops):
        serial += 1
        files = sorted(model.files)
        r = rng.random()
        if r < 0.08:
            parent = rng.choice(sorted(model.dirs))
            d = f"{parent}/sub{serial}"
            (root / d).mkdir()
            model.dirs.add(d)
        elif r < 0.45 or not files:
            path = rng.choice(files) if files and rng.random() < 0.3 else f"{rng.choice(sorted(model.dirs))}/f{serial}"
            data = rng.randbytes(rng.choice((0, 10, 5000, 300_000, 1_500_000)))
            model.written.add(content_sha(data))
            with open(root / path, "wb") as f:
                if rng.random() < 0.25:  # slowly: still open when the syncer replays its create
                    f.write(data[: len(data) // 2])
                    f.flush()
                    time.sleep(0.3)
                f.write(data[len(data) // 2 if f.tell() else 0:])
            model.files[path] = data
        elif r < 0.75:
            src = rng.choice(files)
            if rng.random() < 0.3 and len(files) > 1:
                dest = rng.choice([f for f in files if f != src])
            else:
                dest = f"{rng.choice(sorted(model.dirs))}/r{serial}"
            os.rename(root / src, root / dest)
            model.files[dest] = model.files.pop(src)
        else:
            path = rng.choice(files)
            os.unlink(root / path)
            del model.files[path]
        time.sleep(rng.choice((0, 0, 0.02, 0.1)))


def test_delayed_and_dropped_answers(rig, counts):
    """Requests are delayed, dropped before the server sees them, or answered by the server and the
    answer lost; A's workload goes on meanwhile. In the end the server holds exactly A's tree: no file
    lost, none duplicated, no conflicted copy of A's own retried commit, and no version committed twice."""
    _server, proxy, a, b, view = rig
    rng = random.Random(SEED + 3)
    proxy.add(r"^(POST|DELETE|PATCH) /api/v1/", "drop_response", probability=0.2)
    proxy.add(r"^PUT /blobs/", "drop_response", probability=0.1)
    proxy.add(r"^(GET|POST|PUT|DELETE|PATCH) /", "drop_request", probability=0.05)
    proxy.add(r"^(GET|POST|PUT|DELETE|PATCH) /", "delay", delay_s=0.05, probability=0.3)
    model = Model()
    run_workload(a.path, rng, model, FAULT_OPS)
    time.sleep(2.0)  # the write-back meets the faults too, not only the final flush
    proxy.clear()
    flush_until_ok(a, timeout=120)
    got = view.tree()
    assert got == model.tree(), (f"only on the server: {sorted(set(got) - set(model.tree()))}, missing: "
                                 f"{sorted(set(model.tree()) - set(got))}, different: "
                                 f"{sorted(p for p in got if p in model.files and got[p] != sha(model.files[p]))}")
    for path, node in view.nodes().items():
        if node["kind"] != "file":
            continue
        hashes = [v["content_hash"] or content_sha(b"") for v in view.versions(node)]
        assert all(h in model.written for h in hashes), f"{path} has a version with bytes never written"
        assert all(x != y for x, y in zip(hashes, hashes[1:])), f"{path}: the same bytes committed twice in a row"
    assert proxy.faults > 0
    converge([a, b], view, timeout=60)
    counts.add(faults_injected=proxy.faults, files_verified=3 * len(model.files))


LOST_ANSWERS = [
    ("mkdir", r"^POST /api/v1/folders$"),
    ("create while being written", r"^POST /api/v1/files$"),
    ("create", r"^POST /api/v1/files/small$"),
    ("create large", r"^POST /api/v1/uploads/[^/]+/commit$"),
    ("symlink", r"^POST /api/v1/symlinks$"),
    ("rename", r"^POST /api/v1/nodes/\d+/move$"),
    ("save over", r"^POST /api/v1/nodes/\d+/move$"),
    ("edit", r"^POST /api/v1/files/small$"),
    ("edit large", r"^POST /api/v1/uploads/[^/]+/commit$"),
    ("chmod", r"^PATCH /api/v1/nodes/\d+$"),
    ("delete", r"^DELETE /api/v1/nodes/\d+$"),
]


def test_each_lost_answer_is_harmless(rig, counts):
    """For every kind of change, the server applies it and its answer is lost once; the retry must not
    apply it twice (no second folder, file, version or conflicted copy) nor give up on it."""
    _server, proxy, a, b, view = rig
    root = a.path
    (root / "base.txt").write_bytes(b"base")
    (root / "other.txt").write_bytes(b"other")
    flush_until_ok(a)
    expected = {"base.txt": sha(b"base"), "other.txt": sha(b"other")}
    for n, (what, pattern) in enumerate(LOST_ANSWERS):
        rule = proxy.add(pattern, "drop_response", times=1)
        if what == "mkdir":
            (root / "dir").mkdir()
            expected["dir"] = "dir"
        elif what == "create while being written":
            with open(root / "dir" / "slow.txt", "wb") as f:
                f.write(b"first half, ")
                f.flush()
                wait_for(lambda r=rule: r.hits, 10, "the empty create reached the server while the file is open")
                f.write(b"second half")
            expected["dir/slow.txt"] = sha(b"first half, second half")
        elif what == "create":
            (root / "dir" / "new.txt").write_bytes(b"new")
            expected["dir/new.txt"] = sha(b"new")
        elif what == "create large":  # over the 256 KiB that go inline: through an upload session
            big = os.urandom(300 * 2**10)
            (root / "dir" / "big.bin").write_bytes(big)
            expected["dir/big.bin"] = sha(big)
        elif what == "symlink":
            os.symlink("base.txt", root / "link")
            expected["link"] = "link:base.txt"
        elif what == "rename":
            os.rename(root / "link", root / "dir" / "link2")
            expected["dir/link2"] = expected.pop("link")
        elif what == "save over":
            os.rename(root / "other.txt", root / "base.txt")
            expected["base.txt"] = expected.pop("other.txt")
        elif what == "edit":
            (root / "base.txt").write_bytes(b"edited")
            expected["base.txt"] = sha(b"edited")
        elif what == "edit large":
            big = os.urandom(300 * 2**10)
            (root / "dir" / "big.bin").write_bytes(big)
            expected["dir/big.bin"] = sha(big)
        elif what == "chmod":
            os.chmod(root / "dir" / "new.txt", 0o600)
        elif what == "delete":
            os.unlink(root / "dir" / "new.txt")
            del expected["dir/new.txt"]
        wait_for(lambda r=rule: r.hits == 1, 20, f"the {what} reached the server")
        proxy.remove(rule)
        flush_until_ok(a)
        got = view.tree()
        assert got == expected, f"after a lost answer to {what}: server has {got}, expected {expected}"
        if what == "chmod":
            assert view.nodes()["dir/new.txt"]["mode"] & 0o777 == 0o600
    assert len(view.versions(view.nodes()["base.txt"])) == 3  # base, saved over by other, edited
    converge([a, b], view)
    counts.add(faults_injected=len(LOST_ANSWERS), files_verified=3 * len(expected))
