"""The tree over HTTP: me, resolve, nodes, listing with cursors, folders, symlinks, commits, rename(2)
semantics of move, attributes, trash and restore, versions."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.server.conftest import API, drive_on, error_of, ok, random_chunks, sha


# ---- me, resolve, nodes ---------------------------------------------------------------------------


def test_me_and_root(alice):
    me = ok(alice.get("/me"))
    assert me["name"] == alice.name and isinstance(me["id"], int)
    root = alice.node(me["root_id"])
    assert root["kind"] == "dir" and root["parent_id"] is None and root["name"] == ""
    assert root["owner"] == alice.name and root["access"] == "owner" and root["version"] == 0


def test_resolve_paths(mod_drive, home):
    d = mod_drive
    home_name = d.node(home)["name"]
    a = d.mkdir(home, "a")
    b = d.mkdir(a["id"], "b")
    f = d.commit(b["id"], "f.txt", b"hello")
    assert ok(d.get("/resolve", params={"path": f"{home_name}/a/b"}))["id"] == b["id"]
    assert ok(d.get("/resolve", params={"path": f"/{home_name}//a/b/f.txt/"}))["id"] == f["id"]
    assert ok(d.get("/resolve", params={"path": "/"}))["id"] == d.root
    error_of(d.get("/resolve", params={"path": f"{home_name}/a/nope"}), 404, "not_found")
    error_of(d.get("/resolve", params={"path": f"{home_name}/a/b/f.txt/x"}), 404, "not_found")


def test_get_node_reports_file_fields(mod_drive, home):
    d = mod_drive
    data = b"some bytes"
    f = d.commit(home, "f", data, mode=0o600, mtime_ns=1_234_567_890, content_hash=sha(data))
    n = d.node(f["id"])
    assert n == f
    assert (n["kind"], n["size"], n["version"]) == ("file", len(data), 1)
    assert (n["mode"], n["mtime_ns"]) == (0o600, 1_234_567_890)
    assert n["content_hash"] == sha(data) and n["parent_id"] == home and n["deleted"] is False
    error_of(d.get("/nodes/999999999"), 404, "not_found")


# ---- listing ------------------------------------------------------------------------------------


def test_children_pages_with_cursor(mod_drive, home):
    d = mod_drive
    made = {d.mkdir(home, f"dir{i:02d}")["name"] for i in range(9)}
    made |= {d.commit(home, f"file{i:02d}", b"x" * (i + 1))["name"] for i in range(9)}
    made |= {d.symlink(home, f"link{i:02d}", "target")["name"] for i in range(7)}
    gone = d.commit(home, "zz-deleted", b"z")
    ok(d.delete(f"/nodes/{gone['id']}"))

    pages, cursor = [], None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = ok(d.get(f"/nodes/{home}/children", params=params))
        pages.append([e["name"] for e in page["entries"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert cursor == pages[-1][-1]
    assert [len(p) for p in pages] == [7, 7, 7, 4]
    flat = [n for p in pages for n in p]
    assert flat == sorted(made) and len(set(flat)) == 25
    assert "zz-deleted" not in flat
    # a cursor is a position, not an entry: resuming after a name that is not there works
    page = ok(d.get(f"/nodes/{home}/children", params={"cursor": "file", "limit": 2}))
    assert [e["name"] for e in page["entries"]] == ["file00", "file01"]
    error_of(d.get(f"/nodes/{home}/children", params={"limit": 0}), 422, "invalid")
    error_of(d.get(f"/nodes/{home}/children", params={"limit": 5001}), 422, "invalid")


def test_children_of_a_file_is_not_a_folder(mod_drive, home):
    f = mod_drive.commit(home, "f", b"1")
    error_of(mod_drive.get(f"/nodes/{f['id']}/children"), 409, "not_dir")


@pytest.mark.embedded_only  # writes into the SQLite file
def test_folder_of_100k_entries(fresh_server):
    """Listing and paging a folder of 100,000 entries.

    Creating 100k nodes through the API costs ~1.4 ms each here (~140 s), so the entries are written straight
    into the stopped server's database, exactly as a create would lay them out; everything asserted is then
    done over HTTP against the restarted server.
    """
    d = drive_on(fresh_server)
    big = d.mkdir(d.root, "big")
    fresh_server.stop()
    n = 100_000
    db = sqlite3.connect(fresh_server.data_dir / "meta.db")
    now = time.time_ns()
    with db:
        db.executemany(
            "INSERT INTO nodes(owner_id, parent_id, name, kind, mode, mtime_ns, ctime_ns)"
            " VALUES (?, ?, ?, 'dir', ?, ?, ?)",
            ((d.id, big["id"], f"entry-{i:06d}", 0o755, now, now) for i in range(n)),
        )
    db.close()
    fresh_server.start()

    t0 = time.monotonic()
    names, cursor, pages = [], None, 0
    while True:
        params = {"limit": 5000, **({"cursor": cursor} if cursor else {})}
        page = ok(d.get(f"/nodes/{big['id']}/children", params=params))
        names += [e["name"] for e in page["entries"]]
        assert all(e["parent_id"] == big["id"] and e["access"] == "owner" for e in page["entries"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    elapsed = time.monotonic() - t0
    assert len(names) == n and pages == 20
    assert names == [f"entry-{i:06d}" for i in range(n)]
    assert elapsed < 30, f"listing 100k entries took {elapsed:.1f}s"
    # the folder stays usable: names are still unique, and new entries sort into place
    error_of(d.post("/folders", {"parent_id": big["id"], "name": "entry-050000"}), 409, "exists")
    d.commit(big["id"], "entry-050000x", b"data")
    page = ok(d.get(f"/nodes/{big['id']}/children", params={"cursor": "entry-050000", "limit": 2}))
    assert [e["name"] for e in page["entries"]] == ["entry-050000x", "entry-050001"]
    d.close()


# ---- folders and symlinks ---------------------------------------------------------------------------


def test_folders(mod_drive, home):
    d = mod_drive
    a = d.mkdir(home, "a", mode=0o700, mtime_ns=42)
    assert (a["kind"], a["mode"], a["mtime_ns"], a["parent_id"], a["version"]) == ("dir", 0o700, 42, home, 0)
    assert d.names(home) == ["a"]
    err = error_of(d.post("/folders", {"parent_id": home, "name": "a"}), 409, "exists")
    assert err["details"] == {"node_id": a["id"], "kind": "dir"}
    f = d.commit(home, "file", b"x")
    error_of(d.post("/folders", {"parent_id": f["id"], "name": "in-file"}), 409, "not_dir")
    error_of(d.post("/folders", {"parent_id": 10**12, "name": "x"}), 404, "not_found")


def test_symlinks(mod_drive, home):
    d = mod_drive
    target = "../ünïcode/target"
    s = d.symlink(home, "ln", target)
    assert (s["kind"], s["target"], s["size"], s["version"]) == ("symlink", target, len(target.encode()), 0)
    assert d.node(s["id"])["target"] == target
    error_of(d.post("/symlinks", {"parent_id": home, "name": "ln", "target": "x"}), 409, "exists")
    error_of(d.post("/symlinks", {"parent_id": home, "name": "long", "target": "x" * 4097}), 422, "invalid")
    error_of(d.post("/symlinks", {"parent_id": home, "name": "empty", "target": ""}), 422, "invalid")
    ok(d.post("/symlinks", {"parent_id": home, "name": "max", "target": "y" * 4096}), 201)
    # a symlink is not a folder and has no versions to commit on
    error_of(d.post("/folders", {"parent_id": s["id"], "name": "x"}), 409, "not_dir")
    error_of(d.post("/files", {"node_id": s["id"], "base_version": 0, "manifest": [], "size": 0}), 422, "invalid")


# ---- file commits ---------------------------------------------------------------------------------


def test_commit_new_file_and_new_versions(mod_drive, home):
    d = mod_drive
    v1, v2 = random_chunks(2), random_chunks(3)
    f = d.commit(home, "doc", v1)
    assert (f["version"], f["size"]) == (1, 2000)
    r = d.update(f, v2, base=1)
    f2 = ok(r)
    assert (f2["id"], f2["version"], f2["size"]) == (f["id"], 2, 3000)
    assert d.read(f["id"]) == b"".join(v2)
    assert d.read(f["id"], 1) == b"".join(v1)

    err = error_of(d.update(f, random_chunks(1), base=1), 409, "version_conflict")
    assert err["details"]["current_version"] == 2
    assert d.node(f["id"])["version"] == 2
    error_of(d.post("/files", {"parent_id": home, "name": "doc", "manifest": [], "size": 0}), 409, "exists")
    # an empty file is a manifest of no chunks
    empty = ok(d.post("/files", {"parent_id": home, "name": "empty", "manifest": [], "size": 0}))
    assert (empty["size"], empty["version"]) == (0, 1) and d.read(empty["id"]) == b""
    # a folder cannot take a file version
    sub = d.mkdir(home)
    error_of(d.post("/files", {"node_id": sub["id"], "base_version": 0, "manifest": [], "size": 0}), 409, "is_dir")


def test_commit_names_the_missing_chunks(mod_drive, home):
    d = mod_drive
    a, b, c = random_chunks(3)
    d.upload([a])
    manifest = [{"hash": sha(x), "size": len(x)} for x in (b, a, c, b)]
    r = d.post("/files", {"parent_id": home, "name": "partial", "manifest": manifest, "size": 4000})
    err = error_of(r, 409, "missing_chunks")
    assert err["details"]["missing"] == [sha(b), sha(c)]
    # nothing was created by the failed commit
    assert d.names(home) == []
    d.upload([b, c])
    f = ok(d.post("/files", {"parent_id": home, "name": "partial", "manifest": manifest, "size": 4000}))
    assert d.read(f["id"]) == b + a + c + b


def test_commit_size_must_match_manifest(mod_drive, home):
    d = mod_drive
    (a,) = random_chunks(1)
    d.upload([a])
    r = d.post("/files", {"parent_id": home, "name": "f", "manifest": [{"hash": sha(a), "size": 1000}], "size": 999})
    error_of(r, 422, "invalid")
    r = d.post("/files", {"parent_id": home, "name": "f", "manifest": [], "size": 0, "node_id": 5})
    error_of(r, 422, "invalid")


# ---- move and rename ------------------------------------------------------------------------------


def test_rename_and_move_keep_the_id(mod_drive, home):
    d = mod_drive
    a, b = d.mkdir(home, "a"), d.mkdir(home, "b")
    f = d.commit(a["id"], "f", b"content")
    r = ok(d.move(f["id"], a["id"], "g"))
    assert (r["id"], r["name"], r["parent_id"]) == (f["id"], "g", a["id"])
    r = ok(d.move(f["id"], b["id"], "h"))
    assert (r["id"], r["name"], r["parent_id"]) == (f["id"], "h", b["id"])
    assert d.names(a["id"]) == [] and d.names(b["id"]) == ["h"]
    assert d.read(f["id"]) == b"content"
    # moving a folder carries its subtree
    ok(d.move(b["id"], a["id"], "b2"))
    mine = d.node(home)["name"]
    assert ok(d.get("/resolve", params={"path": f"{mine}/a/b2/h"}))["id"] == f["id"]
    # a no-op rename is fine
    assert ok(d.move(f["id"], b["id"], "h"))["version"] == 1


def test_save_by_rename_keeps_target_identity_and_history(mod_drive, home):
    d = mod_drive
    old, new = random_chunks(2), random_chunks(2)
    doc = d.commit(home, "doc.txt", old)
    tmp = d.commit(home, ".doc.txt.swp", new, mode=0o640)
    r = ok(d.move(tmp["id"], home, "doc.txt"))
    assert (r["id"], r["version"], r["name"], r["size"], r["mode"]) == (doc["id"], 2, "doc.txt", 2000, 0o640)
    assert d.read(doc["id"]) == b"".join(new)
    assert d.read(doc["id"], 1) == b"".join(old)
    assert [v["version"] for v in ok(d.get(f"/nodes/{doc['id']}/versions"))["versions"]] == [2, 1]
    assert d.names(home) == ["doc.txt"]
    error_of(d.get(f"/nodes/{tmp['id']}"), 404, "not_found")  # the temp file was only a stepping stone


def test_rename_replaces_per_rename2(mod_drive, home):
    d = mod_drive
    src_dir, empty, full = d.mkdir(home, "src"), d.mkdir(home, "empty"), d.mkdir(home, "full")
    d.commit(full["id"], "inside", b"x")
    f, g = d.commit(home, "f", b"f"), d.commit(home, "g", b"g")
    ln = d.symlink(home, "ln", "f")

    error_of(d.move(src_dir["id"], home, "full"), 409, "not_empty")
    error_of(d.move(f["id"], home, "empty"), 409, "is_dir")
    error_of(d.move(src_dir["id"], home, "f"), 409, "not_dir")
    error_of(d.move(f["id"], home, "g", replace=False), 409, "exists")
    assert sorted(d.names(home)) == ["empty", "f", "full", "g", "ln", "src"]

    # a folder replaces an empty folder; the replaced one goes to the trash
    r = ok(d.move(src_dir["id"], home, "empty"))
    assert r["id"] == src_dir["id"]
    trash = ok(d.get("/trash"))["entries"]
    assert empty["id"] in [e["id"] for e in trash]
    # a symlink replaces a file (the file goes to the trash, keeping its content)
    r = ok(d.move(ln["id"], home, "g"))
    assert (r["id"], r["kind"]) == (ln["id"], "symlink")
    assert g["id"] in [e["id"] for e in ok(d.get("/trash"))["entries"]]
    assert sorted(d.names(home)) == ["empty", "f", "full", "g"]


def test_move_into_own_subtree_is_refused(mod_drive, home):
    d = mod_drive
    a = d.mkdir(home, "a")
    b = d.mkdir(a["id"], "b")
    c = d.mkdir(b["id"], "c")
    error_of(d.move(a["id"], c["id"], "a"), 400, "bad_request")
    error_of(d.move(a["id"], a["id"], "self"), 400, "bad_request")
    error_of(d.move(d.root, home, "root"), 403, "forbidden")
    f = d.commit(home, "f", b"1")
    error_of(d.move(a["id"], f["id"], "x"), 409, "not_dir")
    assert d.node(a["id"])["parent_id"] == home


def test_move_between_two_owners_is_cross_owner(alice, bob):
    shared = alice.mkdir(alice.root, "shared")
    ok(alice.post(f"/nodes/{shared['id']}/shares", {"user": bob.name, "permission": "write"}), 201)
    theirs = alice.commit(shared["id"], "theirs", b"a")
    mine = bob.commit(bob.root, "mine", b"b")
    error_of(bob.move(mine["id"], shared["id"], "mine"), 400, "cross_owner")
    error_of(bob.move(theirs["id"], bob.root, "theirs"), 400, "cross_owner")
    # and the owner cannot move into someone else's drive it cannot even see
    error_of(alice.move(theirs["id"], bob.root, "x"), 404, "not_found")
    assert alice.names(shared["id"]) == ["theirs"] and bob.names(bob.root) == ["mine"]


# ---- attributes ------------------------------------------------------------------------------------


def test_set_attr(mod_drive, home):
    d = mod_drive
    f = d.commit(home, "f", b"x", mode=0o644)
    r = ok(d.patch(f"/nodes/{f['id']}", {"mode": 0o4755}))
    assert r["mode"] == 0o4755 and r["mtime_ns"] == f["mtime_ns"] and r["ctime_ns"] >= f["ctime_ns"]
    r = ok(d.patch(f"/nodes/{f['id']}", {"mtime_ns": 5}))
    assert (r["mode"], r["mtime_ns"], r["version"]) == (0o4755, 5, 1)
    sub = ok(d.patch(f"/nodes/{home}", {"mode": 0o700}))
    assert sub["mode"] == 0o700
    ln = d.symlink(home, "ln", "f")
    error_of(d.patch(f"/nodes/{ln['id']}", {"mode": 0o600}), 422, "invalid")
    assert ok(d.patch(f"/nodes/{ln['id']}", {"mtime_ns": 9}))["mtime_ns"] == 9
    error_of(d.patch(f"/nodes/{f['id']}", {"mode": 0o10000}), 422, "invalid")
    error_of(d.patch(f"/nodes/{f['id']}", {"size": 0}), 422, "invalid")


# ---- trash and restore -------------------------------------------------------------------------------


def test_delete_moves_to_trash_and_restore_brings_back(alice):
    d = alice
    folder = d.mkdir(d.root, "folder")
    inner = d.commit(folder["id"], "inner", b"inner bytes")
    f = d.commit(d.root, "f", b"f bytes")

    gone = ok(d.delete(f"/nodes/{f['id']}"))
    assert gone["deleted"] is True and gone["id"] == f["id"]
    error_of(d.get(f"/nodes/{f['id']}"), 404, "not_found")
    assert "f" not in d.names(d.root)

    error_of(d.delete(f"/nodes/{folder['id']}", params={"require_empty": "true"}), 409, "not_empty")
    ok(d.delete(f"/nodes/{folder['id']}"))
    error_of(d.get(f"/nodes/{inner['id']}"), 404, "not_found")  # hidden with its folder
    trash = ok(d.get("/trash"))["entries"]
    assert [e["id"] for e in trash] == [folder["id"], f["id"]]  # newest first
    assert all(e["deleted"] for e in trash)

    back = ok(d.post(f"/nodes/{folder['id']}/restore", {}))
    assert back["deleted"] is False and back["name"] == "folder"
    assert d.read(inner["id"]) == b"inner bytes"
    error_of(d.post(f"/nodes/{folder['id']}/restore", {}), 409, "conflict")  # not in the trash

    # a name taken meanwhile: refused, or restored under another name
    d.commit(d.root, "f", b"newer f")
    error_of(d.post(f"/nodes/{f['id']}/restore", {}), 409, "exists")
    back = ok(d.post(f"/nodes/{f['id']}/restore", {"name": "f (restored)"}))
    assert back["name"] == "f (restored)" and d.read(f["id"]) == b"f bytes"
    assert ok(d.get("/trash"))["entries"] == []

    error_of(d.delete(f"/nodes/{d.root}"), 403, "forbidden")
    empty = d.mkdir(d.root, "empty")
    ok(d.delete(f"/nodes/{empty['id']}", params={"require_empty": "true"}))


# ---- versions ------------------------------------------------------------------------------------


def test_versions_detail_and_restore_old_version(mod_drive, home):
    d = mod_drive
    v1, v2 = random_chunks(2, 3000), random_chunks(1, 500)
    f = d.commit(home, "f", v1, headers={"X-Drive-Device": "laptop"})
    ok(d.update(f, v2, device="phone"))

    versions = ok(d.get(f"/nodes/{f['id']}/versions"))["versions"]
    assert [(v["version"], v["size"], v["created_by"], v["device"]) for v in versions] == [
        (2, 500, d.name, "phone"), (1, 6000, d.name, "laptop")]
    detail = ok(d.get(f"/nodes/{f['id']}/versions/1"))
    assert detail["manifest"] == [
        {"hash": sha(v1[0]), "size": 3000, "offset": 0}, {"hash": sha(v1[1]), "size": 3000, "offset": 3000}]
    error_of(d.get(f"/nodes/{f['id']}/versions/3"), 404, "not_found")
    error_of(d.get(f"/nodes/{home}/versions/1"), 404, "not_found")
    assert ok(d.get(f"/nodes/{home}/versions"))["versions"] == []

    r = ok(d.post(f"/nodes/{f['id']}/versions/1/restore", headers={"X-Drive-Device": "tablet"}))
    assert (r["id"], r["version"], r["size"]) == (f["id"], 3, 6000)
    assert d.read(f["id"]) == b"".join(v1)
    v3 = ok(d.get(f"/nodes/{f['id']}/versions"))["versions"][0]
    assert (v3["version"], v3["device"]) == (3, "tablet")
    error_of(d.post(f"/nodes/{f['id']}/versions/9/restore"), 404, "not_found")
    # a commit based on the version before the restore is now stale
    error_of(d.update(f["id"], random_chunks(1), base=2), 409, "version_conflict")


def test_api_prefix_is_versioned(server):
    with server.client(None) as anon:
        error_of(anon.get(API.replace("v1", "v0") + "/me"), 404, "not_found")


def test_restore_inside_a_trashed_folder_asks_for_the_folder_first(alice):
    d = alice
    folder = d.mkdir(d.root, "folder")
    f = d.commit(folder["id"], "f", b"bytes")
    ok(d.delete(f"/nodes/{f['id']}"))
    ok(d.delete(f"/nodes/{folder['id']}"))
    assert [e["id"] for e in ok(d.get("/trash"))["entries"]] == [folder["id"], f["id"]]
    error_of(d.post(f"/nodes/{f['id']}/restore", {}), 409, "conflict")
    ok(d.post(f"/nodes/{folder['id']}/restore", {}))
    assert ok(d.post(f"/nodes/{f['id']}/restore", {}))["parent_id"] == folder["id"]
    assert d.read(f["id"]) == b"bytes"
