"""Sharing: what the owner, a read recipient, a write recipient and a stranger may do, the share lists,
unsharing and leaving, and that nothing leaks to strangers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.fixtures.server import ServerProcess
from tests.server.conftest import Drive, error_of, ok, random_chunks, sha, unique


@dataclass
class World:
    owner: Drive     # alice: owns the shared folder S
    read: Drive      # bob: S shared read-only
    write: Drive     # carol: S shared writable
    stranger: Drive  # dave: no share
    other: Drive     # erin: a user to share with
    folder: dict     # S

    def by_role(self, role: str) -> Drive:
        return getattr(self, role)


@pytest.fixture(scope="module")
def world(server: ServerProcess):
    drives = [Drive(server, *server.add_user()) for _ in range(5)]
    owner, read, write, stranger, other = drives
    folder = owner.mkdir(owner.root, "S")
    ok(owner.post(f"/nodes/{folder['id']}/shares", {"user": read.name, "permission": "read"}), 201)
    ok(owner.post(f"/nodes/{folder['id']}/shares", {"user": write.name, "permission": "write"}), 201)
    yield World(owner, read, write, stranger, other, folder)
    for d in drives:
        d.close()


@dataclass
class Target:
    """Fresh things inside S for one operation, made by the owner."""

    file: dict
    chunk: bytes
    sub: dict


def _target(w: World) -> Target:
    chunk = random_chunks(1)[0]
    f = w.owner.commit(w.folder["id"], unique("f"), [chunk])
    sub = w.owner.mkdir(w.folder["id"], unique("sub"))
    return Target(f, chunk, sub)


def _commit_version(d: Drive, t: Target):
    new = random_chunks(1)
    d.upload(new)  # every actor can upload chunks of its own
    return d.post("/files", {"node_id": t.file["id"], "base_version": 1, "size": 1000,
                             "manifest": [{"hash": sha(new[0]), "size": 1000}]})


def _unshare(w: World, d: Drive, t: Target):
    ok(w.owner.post(f"/nodes/{t.sub['id']}/shares", {"user": w.other.name}), 201)
    return d.delete(f"/nodes/{t.sub['id']}/shares/{w.other.name}")


OPS: dict[str, Callable] = {
    "stat": lambda w, d, t: d.get(f"/nodes/{t.file['id']}"),
    "list": lambda w, d, t: d.get(f"/nodes/{w.folder['id']}/children", params={"limit": 1}),
    "download_urls": lambda w, d, t: d.post("/chunks/download-urls", {
        "node_id": t.file["id"], "version": 1, "hashes": [sha(t.chunk)]}),
    "versions": lambda w, d, t: d.get(f"/nodes/{t.file['id']}/versions"),
    "version_detail": lambda w, d, t: d.get(f"/nodes/{t.file['id']}/versions/1"),
    "shares_of": lambda w, d, t: d.get(f"/nodes/{t.file['id']}/shares"),
    "commit_version": lambda w, d, t: _commit_version(d, t),
    "restore_version": lambda w, d, t: d.post(f"/nodes/{t.file['id']}/versions/1/restore"),
    "create_folder": lambda w, d, t: d.post("/folders", {"parent_id": t.sub["id"], "name": "new"}),
    "create_file": lambda w, d, t: d.post("/files", {
        "parent_id": t.sub["id"], "name": "new", "manifest": [], "size": 0}),
    "create_symlink": lambda w, d, t: d.post("/symlinks", {"parent_id": t.sub["id"], "name": "ln", "target": "x"}),
    "start_upload": lambda w, d, t: d.post("/uploads", {
        "parent_id": t.sub["id"], "name": "up", "manifest": [], "size": 0}),
    "rename": lambda w, d, t: d.move(t.file["id"], w.folder["id"], unique("renamed")),
    "move_inside": lambda w, d, t: d.move(t.file["id"], t.sub["id"], "moved"),
    "set_attr": lambda w, d, t: d.patch(f"/nodes/{t.file['id']}", {"mode": 0o600}),
    "delete": lambda w, d, t: d.delete(f"/nodes/{t.file['id']}"),
    "share": lambda w, d, t: d.post(f"/nodes/{t.sub['id']}/shares", {"user": w.other.name}),
    "unshare": _unshare,
}
ROLES = ("owner", "read", "write", "stranger")
#                     owner  read  write  stranger
EXPECTED = {
    "stat":            (200, 200, 200, 404),
    "list":            (200, 200, 200, 404),
    "download_urls":   (200, 200, 200, 404),
    "versions":        (200, 200, 200, 404),
    "version_detail":  (200, 200, 200, 404),
    "shares_of":       (200, 200, 200, 404),
    "commit_version":  (200, 403, 200, 404),
    "restore_version": (200, 403, 200, 404),
    "create_folder":   (201, 403, 201, 404),
    "create_file":     (200, 403, 200, 404),
    "create_symlink":  (201, 403, 201, 404),
    "start_upload":    (201, 403, 201, 404),
    "rename":          (200, 403, 200, 404),
    "move_inside":     (200, 403, 200, 404),
    "set_attr":        (200, 403, 200, 404),
    "delete":          (200, 403, 200, 404),
    "share":           (201, 403, 403, 404),
    "unshare":         (204, 403, 403, 404),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("op", list(OPS))
def test_permission_matrix(world, op, role):
    t = _target(world)
    before = world.owner.node(t.file["id"])
    r = OPS[op](world, world.by_role(role), t)
    expected = EXPECTED[op][ROLES.index(role)]
    if expected >= 400:
        error_of(r, expected, {403: "forbidden", 404: "not_found"}[expected])
        # a refused write changed nothing
        assert world.owner.node(t.file["id"]) == before
        assert sorted(world.owner.names(t.sub["id"])) == []
    else:
        assert r.status_code == expected, r.text
        if op == "stat":
            assert r.json()["access"] == {"read": "read", "write": "write"}.get(role, "owner")


def test_stranger_learns_nothing_from_errors(world):
    """A node that exists and one that never did answer the same way to someone who cannot see them."""
    t = _target(world)
    d = world.stranger
    for node_id in (t.file["id"], 10**15):
        for r in (d.get(f"/nodes/{node_id}"), d.get(f"/nodes/{node_id}/versions"),
                  d.delete(f"/nodes/{node_id}"), d.patch(f"/nodes/{node_id}", {"mode": 0o600}),
                  d.post(f"/nodes/{node_id}/shares", {"user": world.other.name})):
            assert error_of(r, 404, "not_found")["message"] == f"no node {node_id}"


def test_write_recipient_works_inside_but_not_on_the_shared_root(world):
    w, d = world, world.write
    f = ok(d.post("/files", {"parent_id": w.folder["id"], "name": unique("by-carol"), "manifest": [], "size": 0}))
    assert f["owner"] == w.owner.name and f["access"] == "write"  # new files belong to the folder's owner
    assert w.owner.node(f["id"])["access"] == "owner"
    ok(d.update(f, random_chunks(1)))
    ok(d.move(f["id"], w.folder["id"], unique("renamed")))
    error_of(d.move(w.folder["id"], w.folder["id"], "x"), 403, "forbidden")  # moving S itself
    error_of(d.move(w.folder["id"], d.root, "mine-now"), 403, "forbidden")
    error_of(d.delete(f"/nodes/{w.folder['id']}"), 403, "forbidden")
    for reader in (w.read, w.write):
        error_of(reader.move(w.folder["id"], w.owner.root, "renamed-S"), 403, "forbidden")
    assert ok(d.patch(f"/nodes/{w.folder['id']}", {"mtime_ns": 7}))["mtime_ns"] == 7
    assert w.owner.node(w.folder["id"])["name"] == "S"


def test_shared_with_me_and_by_me(make_drive):
    alice, bob, carol = make_drive(), make_drive(), make_drive()
    s = alice.mkdir(alice.root, "S")
    doc = alice.commit(alice.root, "doc", b"x")
    ok(alice.post(f"/nodes/{s['id']}/shares", {"user": bob.name, "permission": "read"}), 201)
    ok(alice.post(f"/nodes/{s['id']}/shares", {"user": carol.name, "permission": "write"}), 201)
    ok(alice.post(f"/nodes/{doc['id']}/shares", {"user": bob.name, "permission": "write"}), 201)

    items = ok(bob.get("/shares/with-me"))["items"]
    assert [(i["node"]["id"], i["node"]["access"], i["share"]["permission"], i["share"]["owner"]) for i in items] == [
        (s["id"], "read", "read", alice.name), (doc["id"], "write", "write", alice.name)]
    assert [i["node"]["name"] for i in ok(carol.get("/shares/with-me"))["items"]] == ["S"]
    assert ok(alice.get("/shares/with-me"))["items"] == []
    assert ok(bob.get("/shares/by-me"))["shares"] == []
    by_me = ok(alice.get("/shares/by-me"))["shares"]
    assert sorted((x["node_id"], x["user"], x["permission"]) for x in by_me) == sorted([
        (s["id"], bob.name, "read"), (s["id"], carol.name, "write"), (doc["id"], bob.name, "write")])
    # who has access to something inside S: the shares on the folders above it
    inner = alice.commit(s["id"], "inner", b"y")
    assert sorted(x["user"] for x in ok(alice.get(f"/nodes/{inner['id']}/shares"))["shares"]) == sorted(
        [bob.name, carol.name])
    # a file shared on its own does not open its folder or siblings
    error_of(bob.get(f"/nodes/{alice.root}"), 404)
    sibling = alice.commit(alice.root, "sibling", b"z")
    error_of(bob.get(f"/nodes/{sibling['id']}"), 404)
    # sharing again changes the permission
    upgraded = ok(alice.post(f"/nodes/{s['id']}/shares", {"user": bob.name, "permission": "write"}), 201)
    assert upgraded["permission"] == "write"
    assert bob.node(inner["id"])["access"] == "write"
    # trashing a shared folder hides it from its recipients
    ok(alice.delete(f"/nodes/{s['id']}"))
    assert [i["node"]["id"] for i in ok(bob.get("/shares/with-me"))["items"]] == [doc["id"]]
    error_of(bob.get(f"/nodes/{inner['id']}"), 404)


def test_share_rules(make_drive):
    alice, bob = make_drive(), make_drive()
    s = alice.mkdir(alice.root, "S")
    error_of(alice.post(f"/nodes/{s['id']}/shares", {"user": alice.name}), 400, "bad_request")
    error_of(alice.post(f"/nodes/{alice.root}/shares", {"user": bob.name}), 400, "bad_request")
    error_of(alice.post(f"/nodes/{s['id']}/shares", {"user": "no-such-user-xyz"}), 404, "not_found")
    error_of(alice.post(f"/nodes/{s['id']}/shares", {"user": bob.name, "permission": "admin"}), 422, "invalid")
    error_of(alice.delete(f"/nodes/{s['id']}/shares/{bob.name}"), 404, "not_found")  # no such share


def test_unshare_and_leave(make_drive):
    alice, bob, carol = make_drive(), make_drive(), make_drive()
    s = alice.mkdir(alice.root, "S")
    inner = alice.commit(s["id"], "inner", b"data")
    for who in (bob, carol):
        ok(alice.post(f"/nodes/{s['id']}/shares", {"user": who.name, "permission": "write"}), 201)
    assert bob.read(inner["id"]) == b"data"

    # a recipient cannot remove someone else, but can leave
    error_of(bob.delete(f"/nodes/{s['id']}/shares/{carol.name}"), 403, "forbidden")
    assert bob.delete(f"/nodes/{s['id']}/shares/{bob.name}").status_code == 204
    error_of(bob.get(f"/nodes/{s['id']}"), 404)
    error_of(bob.post("/chunks/download-urls", {"node_id": inner["id"], "version": 1, "hashes": [sha(b"data")]}), 404)
    assert ok(bob.get("/shares/with-me"))["items"] == []

    # the owner removes carol
    assert carol.node(inner["id"])["access"] == "write"
    assert alice.delete(f"/nodes/{s['id']}/shares/{carol.name}").status_code == 204
    error_of(carol.get(f"/nodes/{inner['id']}"), 404)
    error_of(carol.post("/folders", {"parent_id": s["id"], "name": "x"}), 404)
    assert ok(alice.get("/shares/by-me"))["shares"] == []
    assert alice.read(inner["id"]) == b"data"
