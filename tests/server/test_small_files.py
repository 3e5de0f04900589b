"""POST /files/small: several whole small files, bytes inline, created in one request. Each is stored,
checked and committed as a commit of it alone would be, with its own result."""

from __future__ import annotations

import base64
import os

from server import limits  # constants only
from tests.server.conftest import error_of, ok, sha, unique


def item(parent: int, name: str, data: bytes, **extra) -> dict:
    return {"parent_id": parent, "name": name, "content": base64.b64encode(data).decode(), **extra}


def test_files_are_created_with_their_bytes(mod_drive, home):
    d = mod_drive
    folder = d.mkdir(home, unique("small"))["id"]
    files = {f"f{i}.txt": os.urandom(i * 997) for i in range(6)}  # the first one empty
    files["same.txt"] = files["f3.txt"]  # one chunk stored once, named by two files
    items = [item(folder, name, data, mode=0o600, mtime_ns=1_700_000_000_000_000_000 + i)
             for i, (name, data) in enumerate(files.items())]
    results = ok(d.post("/files/small", {"files": items}))["results"]
    assert [r["error"] for r in results] == [None] * len(files)
    for (name, data), r, sent in zip(files.items(), results, items):
        node = r["node"]
        assert (node["name"], node["kind"], node["size"], node["version"]) == (name, "file", len(data), 1)
        assert node["content_hash"] == sha(data) and node["mode"] == 0o600 and node["mtime_ns"] == sent["mtime_ns"]
        assert d.read(node["id"]) == data
    assert sorted(d.names(folder)) == sorted(files)
    # the versions record the device that sent them, as a commit does
    node = results[1]["node"]
    r = d.post("/files/small", {"files": [item(folder, "dev.txt", b"x")]}, headers={"X-Drive-Device": "laptop"})
    dev = ok(r)["results"][0]["node"]
    assert ok(d.get(f"/nodes/{dev['id']}/versions"))["versions"][0]["device"] == "laptop"
    assert node["parent_id"] == folder


def test_each_file_gets_its_own_refusal_and_the_rest_are_made(mod_drive, home):
    d = mod_drive
    folder = d.mkdir(home, unique("small"))["id"]
    taken = d.commit(folder, "taken.txt", b"already here")
    a_file = d.commit(folder, "plain.txt", b"a file, not a folder")
    items = [item(folder, "new1.txt", b"one"),
             item(folder, "taken.txt", b"mine"),
             item(999_999_999, "lost.txt", b"nowhere"),
             item(a_file["id"], "inside-a-file.txt", b"no"),
             item(folder, "..", b"bad name"),
             item(folder, "new2.txt", b"two")]
    cursor = ok(d.get("/changes/latest"))["cursor"]
    results = ok(d.post("/files/small", {"files": items}))["results"]
    assert results[0]["node"]["name"] == "new1.txt" and results[5]["node"]["name"] == "new2.txt"
    assert (results[1]["status"], results[1]["error"]["code"]) == (409, "exists")
    assert results[1]["error"]["details"]["node_id"] == taken["id"] and results[1]["node"] is None
    assert results[2]["status"] == 404
    assert results[3]["status"] in (400, 409, 422) and results[3]["node"] is None
    assert (results[4]["status"], results[4]["error"]["code"]) == (400, "invalid_name")
    assert d.read(taken["id"]) == b"already here"  # the refused one changed nothing
    assert sorted(d.names(folder)) == ["new1.txt", "new2.txt", "plain.txt", "taken.txt"]
    # The files go in one transaction, but a refused one leaves no trace there: the feed has the two made.
    feed = ok(d.get("/changes", params={"cursor": cursor}))["changes"]
    assert [(c["kind"], c["node"]["name"]) for c in feed] == [("create", "new1.txt"), ("create", "new2.txt")]


def test_only_folders_the_caller_may_write(alice, bob):
    folder = alice.mkdir(alice.root, unique("S"))
    r = bob.post("/files/small", {"files": [item(folder["id"], "sneaky.txt", b"hi")]})
    assert ok(r)["results"][0]["status"] in (403, 404)
    ok(alice.post(f"/nodes/{folder['id']}/shares", {"user": bob.name, "permission": "read"}), 201)
    r = bob.post("/files/small", {"files": [item(folder["id"], "sneaky.txt", b"hi")]})
    assert ok(r)["results"][0]["status"] == 403
    assert alice.names(folder["id"]) == []
    ok(alice.post(f"/nodes/{folder['id']}/shares", {"user": bob.name, "permission": "write"}), 201)
    r = bob.post("/files/small", {"files": [item(folder["id"], "welcome.txt", b"hi")]})
    node = ok(r)["results"][0]["node"]
    assert node["owner"] == alice.name and alice.read(node["id"]) == b"hi"


def test_unauthenticated_and_malformed_requests_are_refused_whole(mod_drive, home):
    d = mod_drive
    folder = d.mkdir(home, unique("small"))["id"]
    error_of(d.c.post("/api/v1/files/small", json={"files": [item(folder, "x", b"x")]},
                      headers={"Authorization": "Bearer not-a-token"}), 401)
    bad = item(folder, "b64.txt", b"x")
    bad["content"] = "not base64!"
    error_of(d.post("/files/small", {"files": [bad]}), 422)
    big = item(folder, "big.bin", b"\0" * (limits.MAX_SMALL_FILE_BYTES + 1))
    error_of(d.post("/files/small", {"files": [big]}), 422)
    error_of(d.post("/files/small", {"files": [item(folder, f"n{i}", b"") for i in range(limits.MAX_SMALL_FILES + 1)]}),
             422)
    error_of(d.post("/files/small", {"files": []}), 422)
    over = limits.MAX_SMALL_FILES_BYTES // limits.MAX_SMALL_FILE_BYTES + 1
    error_of(d.post("/files/small", {"files": [item(folder, f"m{i}", os.urandom(limits.MAX_SMALL_FILE_BYTES))
                                               for i in range(over)]}), 422)
    assert d.names(folder) == []  # nothing of a refused request was made


def test_new_versions_go_inline_too(mod_drive, home):
    d = mod_drive
    folder = d.mkdir(home, unique("small"))["id"]
    a = d.commit(folder, "a.txt", b"first")
    b = d.commit(folder, "b.txt", b"first", content_hash=sha(b"first"))
    items = [{"node_id": a["id"], "base_version": 1, "content": base64.b64encode(b"second").decode()},
             {"node_id": b["id"], "base_version": 7, "content": base64.b64encode(b"stale").decode()},
             {"node_id": folder, "base_version": 0, "content": base64.b64encode(b"dir").decode()}]
    results = ok(d.post("/files/small", {"files": items}))["results"]
    assert (results[0]["node"]["version"], results[0]["node"]["content_hash"]) == (2, sha(b"second"))
    assert d.read(a["id"]) == b"second"
    assert (results[1]["status"], results[1]["error"]["code"]) == (409, "version_conflict")
    assert results[1]["error"]["details"]["content_hash"] == sha(b"first") and d.read(b["id"]) == b"first"
    assert results[2]["status"] == 409 and results[2]["node"] is None  # a folder has no content
    # either a new file or a new version, never both or neither
    both = item(folder, "x", b"x", node_id=a["id"], base_version=2)
    error_of(d.post("/files/small", {"files": [both]}), 422)
    error_of(d.post("/files/small", {"files": [{"content": ""}]}), 422)
    error_of(d.post("/files/small", {"files": [{"node_id": a["id"], "content": ""}]}), 422)
