"""The write-back replays a burst of creates several at a time and folds each file's setattr into its
create, while every folder still reaches the server before what is created in it, and the server ends
with exactly the local tree.

The mount talks to the server through the fault-injecting proxy, so the test can hold its changes back
(every write answered 503) until the whole burst is queued, and then count the replay's requests.
"""

from __future__ import annotations

import os

import pytest

from tests.fixtures.faultproxy import mount_through_proxy
from tests.reliability.helpers import ServerView

COMMIT = r"^POST /api/v1/uploads/[^/]+/commit$"
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
            (m / rel).write_bytes(data)
            os.chmod(m / rel, 0o600)  # as tar does: mode and mtime set after the file is closed
            os.utime(m / rel, ns=(MTIME_NS, MTIME_NS + i))
            wanted[rel] = data

    proxy.remove(held)
    commits = proxy.add(COMMIT, "delay", delay_s=0.2)  # slow commits make overlapping ones certain
    setattrs = proxy.add(r"^PATCH /api/v1/nodes/", "pass")
    mount.flush()

    nodes = view.nodes()
    assert {p for p, n in nodes.items() if n["kind"] == "dir"} == {"one", "two", "one/sub"}
    assert view.files() == wanted
    for rel in wanted:
        i = int(rel[-5])
        assert (nodes[rel]["mode"] & 0o7777, nodes[rel]["mtime_ns"]) == (0o600, MTIME_NS + i), rel
    assert commits.hits == len(wanted)
    assert commits.peak > 1, "the creates were replayed one at a time"
    assert setattrs.hits == 0, "a queued chmod/utime of a file went up as its own request"
    assert os.stat(m / "one/sub/f3.txt").st_mtime_ns == MTIME_NS + 3
