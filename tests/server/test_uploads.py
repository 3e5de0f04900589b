"""Resumable upload sessions: state that survives a server restart, commit only when complete, idempotent
commit, sessions scoped to their user, and expiry."""

from __future__ import annotations

import time

from tests.server.conftest import drive_on, error_of, ok, random_chunks, sha


def _commit_body(parent: int, name: str, chunks: list[bytes]) -> dict:
    return {"parent_id": parent, "name": name, "size": sum(map(len, chunks)),
            "manifest": [{"hash": sha(c), "size": len(c)} for c in chunks]}


def _put_all(d, chunks: list[bytes]) -> None:
    for url, data in zip(d.upload_urls(chunks), chunks):
        assert d.put(url, data).status_code == (200 if url.get("confirm") else 201)
        if url.get("confirm"):  # an S3 store: the server checks the upload when asked
            assert d.confirm(url) == []


def test_session_resumes_across_a_restart(fresh_server):
    d = drive_on(fresh_server)
    chunks = random_chunks(6, 3000)
    hashes = [sha(c) for c in chunks]
    s = ok(d.post("/uploads", _commit_body(d.root, "big.bin", chunks)), 201)
    assert s["missing"] == hashes and s["committed"] is False and s["expires_at"] > time.time() + 86400
    _put_all(d, chunks[:3])
    assert ok(d.get(f"/uploads/{s['id']}"))["missing"] == hashes[3:]

    fresh_server.stop()
    fresh_server.start()
    d.c.close()
    d.c = fresh_server.client(d.token)

    assert ok(d.get(f"/uploads/{s['id']}"))["missing"] == hashes[3:]
    err = error_of(d.post(f"/uploads/{s['id']}/commit"), 409, "missing_chunks")
    assert err["details"]["missing"] == hashes[3:]
    assert d.names(d.root) == []

    _put_all(d, chunks[3:])
    assert ok(d.get(f"/uploads/{s['id']}"))["missing"] == []
    node = ok(d.post(f"/uploads/{s['id']}/commit"))
    assert (node["name"], node["size"], node["version"]) == ("big.bin", 18000, 1)
    again = ok(d.post(f"/uploads/{s['id']}/commit"))
    assert again == node  # a retried commit does not make a second version
    assert ok(d.get(f"/uploads/{s['id']}")) == {**s, "missing": [], "committed": True}
    assert len(ok(d.get(f"/nodes/{node['id']}/versions"))["versions"]) == 1
    assert d.read(node["id"]) == b"".join(chunks)
    d.close()


def test_session_for_a_new_version_checks_its_base(alice):
    f = alice.commit(alice.root, "doc", random_chunks(1))
    v2, v3 = random_chunks(1), random_chunks(1)
    body = {"node_id": f["id"], "base_version": 1, "size": 1000, "manifest": [{"hash": sha(v2[0]), "size": 1000}]}
    s2 = ok(alice.post("/uploads", body), 201)
    s3 = ok(alice.post("/uploads", {**body, "manifest": [{"hash": sha(v3[0]), "size": 1000}]}), 201)
    _put_all(alice, v2 + v3)
    assert ok(alice.post(f"/uploads/{s2['id']}/commit"))["version"] == 2
    err = error_of(alice.post(f"/uploads/{s3['id']}/commit"), 409, "version_conflict")
    assert err["details"]["current_version"] == 2
    assert alice.read(f["id"]) == v2[0]


def test_sessions_belong_to_their_user(alice, bob):
    chunks = random_chunks(2)
    s = ok(alice.post("/uploads", _commit_body(alice.root, "mine", chunks)), 201)
    error_of(bob.get(f"/uploads/{s['id']}"), 404, "not_found")
    error_of(bob.post(f"/uploads/{s['id']}/commit"), 404, "not_found")
    assert bob.delete(f"/uploads/{s['id']}").status_code == 204  # a no-op for someone else's session
    assert ok(alice.get(f"/uploads/{s['id']}"))["missing"] == [sha(c) for c in chunks]
    # nor can a session target a folder the caller cannot see
    error_of(bob.post("/uploads", _commit_body(alice.root, "x", chunks)), 404, "not_found")

    assert alice.delete(f"/uploads/{s['id']}").status_code == 204
    error_of(alice.get(f"/uploads/{s['id']}"), 404, "not_found")
    error_of(alice.post(f"/uploads/{s['id']}/commit"), 404, "not_found")
    error_of(alice.get("/uploads/no-such-session"), 404, "not_found")


def test_session_target_is_checked_up_front(alice):
    f = alice.commit(alice.root, "file", b"x")
    error_of(alice.post("/uploads", _commit_body(alice.root, "a/b", [])), 400, "invalid_name")
    error_of(alice.post("/uploads", _commit_body(f["id"], "inside-a-file", [])), 409, "not_dir")
    error_of(alice.post("/uploads", {"node_id": 10**12, "base_version": 1, "size": 0, "manifest": []}), 404)
    error_of(alice.post("/uploads", {"parent_id": alice.root, "size": 0, "manifest": []}), 422, "invalid")
    # an empty file needs no chunks and commits at once
    s = ok(alice.post("/uploads", _commit_body(alice.root, "empty", [])), 201)
    assert s["missing"] == []
    assert ok(alice.post(f"/uploads/{s['id']}/commit"))["size"] == 0


def test_expired_session_is_gone_but_its_chunks_stay(server_with):
    srv = server_with("--session-ttl", "1")
    d = drive_on(srv)
    chunks = random_chunks(2)
    s = ok(d.post("/uploads", _commit_body(d.root, "late", chunks)), 201)
    _put_all(d, chunks[:1])
    while time.time() <= s["expires_at"] + 0.2:
        time.sleep(0.1)
    error_of(d.get(f"/uploads/{s['id']}"), 410, "expired")
    error_of(d.post(f"/uploads/{s['id']}/commit"), 410, "expired")
    # a new session starts where the old one stopped
    s2 = ok(d.post("/uploads", _commit_body(d.root, "late", chunks)), 201)
    assert s2["missing"] == [sha(chunks[1])]
    _put_all(d, chunks[1:])
    assert ok(d.post(f"/uploads/{s2['id']}/commit"))["size"] == 2000
    # a committed session stays readable after its expiry (so a retried commit still answers)
    while time.time() <= s2["expires_at"] + 0.2:
        time.sleep(0.1)
    assert ok(d.post(f"/uploads/{s2['id']}/commit"))["name"] == "late"
    d.close()
