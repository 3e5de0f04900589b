"""The write-back replays a burst of creates together: small files in one request with their bytes,
larger ones several at a time, each file's setattr folded into its create, while every folder still
reaches the server before what is created in it, and the server ends with exactly the local tree.

The mount talks to the server through the fault-injecting proxy, so the test can hold its changes back
(every write answered 503) until the whole burst is queued, and then count the replay's requests.
"""

from __future__ import annotations

import os

import pytest

from tests.fixtures.faultproxy import mount_through_proxy
from tests.reliability.helpers import ServerView

pytestmark = pytest.mark.client_side  # once, in the embedded pass: see tests/conftest.py

COMMIT = r"^POST /api/v1/uploads/[^/]+/commit$"
SMALL = r"^POST /api/v1/files/small$"
BIG = 300 * 2**10  # over the 256 KiB that may go inline
MTIME_NS = 1_600_000_000_123_456_789


@pytest.fixture
def proxied(fresh_server, tmp_path):
    with mount_through_proxy(fresh_server, tmp_path / "a") as (proxy, mount):
        view = ServerView(fresh_server.url, mount.token)
        try:
            yield proxy, mount, view
        finally:
            view.close()


def test_queued_burst_replays_concurrently_parents_first(proxied):
    proxy, mount, view = proxied
    m = mount.path
    held = proxy.add(r"^(POST|PATCH|PUT|DELETE) ", "status", status=503)
    wanted: dict[str, bytes] = {}
    for folder in ("one", "two", "one/sub"):  # a folder inside a folder that is itself still queued
        (m / folder).mkdir()
        for i in range(10):
            rel = f"{folder}/f{i}.txt"
            data = f"{rel} ".encode() * (i + 1)
            if i >= 7:
                data = data * (BIG // len(data) + 1)
            (m / rel).write_bytes(data)
            os.chmod(m / rel, 0o600)  # as tar does: mode and mtime set after the file is closed
            os.utime(m / rel, ns=(MTIME_NS, MTIME_NS + i))
            wanted[rel] = data

    proxy.remove(held)
    commits = proxy.add(COMMIT, "delay", delay_s=0.2)  # slow commits make overlapping ones certain
    small = proxy.add(SMALL, "pass")
    setattrs = proxy.add(r"^PATCH /api/v1/nodes/", "pass")
    mount.flush()

    nodes = view.nodes()
    assert {p for p, n in nodes.items() if n["kind"] == "dir"} == {"one", "two", "one/sub"}
    assert view.files() == wanted
    for rel in wanted:
        i = int(rel[-5])
        assert (nodes[rel]["mode"] & 0o7777, nodes[rel]["mtime_ns"]) == (0o600, MTIME_NS + i), rel
    big = [rel for rel, data in wanted.items() if len(data) > BIG]
    assert len(big) == 9 and commits.hits == len(big), "a small file went up through an upload session"
    assert commits.peak > 1, "the larger files' creates were replayed one at a time"
    # One request per wave: first the top folders (no files), then the files in them with one/sub,
    # then the files in one/sub. A folder's files still wait for the folder's own create.
    assert small.hits == 2, small.hits
    assert setattrs.hits == 0, "a queued chmod/utime of a file went up as its own request"
    assert os.stat(m / "one/sub/f3.txt").st_mtime_ns == MTIME_NS + 3


def test_queued_setattrs_end_where_the_file_does(proxied):
    """Mode and mtime changed back and forth while the create waits: the server ends with the last ones,
    which the create carries, and no setattr goes up on its own (taken one by one, 644 would win)."""
    proxy, mount, view = proxied
    held = proxy.add(r"^(POST|PATCH|PUT|DELETE) ", "status", status=503)
    names = {"small.txt": 10, "big.bin": BIG + 1}
    for name, size in names.items():
        p = mount.path / name
        p.write_bytes(os.urandom(size))
        os.chmod(p, 0o644)
        os.utime(p, ns=(MTIME_NS, MTIME_NS))
        os.chmod(p, 0o600)
        os.utime(p, ns=(MTIME_NS, MTIME_NS + 1))

    proxy.remove(held)
    setattrs = proxy.add(r"^PATCH /api/v1/nodes/", "pass")
    mount.flush()

    nodes = view.nodes()
    for name in names:
        assert (nodes[name]["mode"] & 0o7777, nodes[name]["mtime_ns"]) == (0o600, MTIME_NS + 1), name
    assert setattrs.hits == 0


def test_edited_small_files_go_up_together(proxied):
    proxy, mount, view = proxied
    m = mount.path
    for i in range(20):
        (m / f"e{i}.txt").write_bytes(b"first %d" % i)
    (m / "big.bin").write_bytes(os.urandom(BIG))
    mount.flush()
    commits = proxy.add(COMMIT, "pass")
    small = proxy.add(SMALL, "pass")
    wanted = {f"e{i}.txt": b"second %d" % i for i in range(20)}
    for rel, data in wanted.items():
        (m / rel).write_bytes(data)
    wanted["big.bin"] = os.urandom(BIG)
    (m / "big.bin").write_bytes(wanted["big.bin"])
    mount.flush()
    assert view.files() == wanted
    nodes = view.nodes()
    assert all(len(view.versions(nodes[rel])) == 2 for rel in wanted)
    assert small.hits == 1 and commits.hits == 1  # the 20 small edits in one request; the big one alone
