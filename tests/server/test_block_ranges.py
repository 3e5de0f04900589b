"""Ranged chunk reads: the server's per-block hashes of plain chunks (computed by the server, answered only
when asked, under the usual download permissions) and byte ranges of its own signed blob URLs."""

from __future__ import annotations

import os
import sqlite3
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from server.store.db import SqliteDatabase
from server.store.schema import SCHEMA_VERSION, migrate, schema_statements
from tests.server.conftest import drive_on, error_of, ok, sha

BLOCK = 64 * 2**10


def _blocks(data: bytes) -> list[str]:
    return [sha(data[i:i + BLOCK]) for i in range(0, len(data), BLOCK)]


def _urls(d, f: dict, hashes: list[str], **extra) -> list[dict]:
    return ok(d.post("/chunks/download-urls", {"node_id": f["id"], "version": f["version"], "hashes": hashes,
                                                **extra}))["urls"]


def test_block_hashes_are_the_servers_and_answered_only_when_asked(alice):
    plain = os.urandom(3 * BLOCK + 1234)  # three whole blocks and a short last one
    packed_src = b"very compressible " * 20_000
    f = alice.commit(alice.root, "f", [plain])
    alice.upload([packed_src], encoding="zstd")
    g = ok(alice.post("/files", {"parent_id": alice.root, "name": "g", "size": len(packed_src),
                                 "manifest": [{"hash": sha(packed_src), "size": len(packed_src)}]}))

    (plain_url,) = _urls(alice, f, [sha(plain)])
    assert plain_url["block_hashes"] is None and plain_url["block_size"] is None  # not asked: no bloat
    (plain_url,) = _urls(alice, f, [sha(plain)], blocks=True)
    assert plain_url["block_size"] == BLOCK
    assert plain_url["block_hashes"] == _blocks(plain) and len(plain_url["block_hashes"]) == 4
    # a zstd object cannot be read in ranges of the chunk: fetched whole, so no block hashes
    (zstd_url,) = _urls(alice, g, [sha(packed_src)], blocks=True)
    assert zstd_url["encoding"] == "zstd" and zstd_url["block_hashes"] is None


def test_strangers_get_no_block_hashes_and_readers_of_a_share_do(alice, bob, make_drive):
    plain = os.urandom(BLOCK + 10)
    folder = alice.mkdir(alice.root)
    f = alice.commit(folder["id"], "f", [plain])
    error_of(bob.post("/chunks/download-urls", {"node_id": f["id"], "version": 1, "hashes": [sha(plain)],
                                                "blocks": True}), 404, "not_found")
    carol = make_drive()
    ok(alice.post(f"/nodes/{folder['id']}/shares", {"user": carol.name, "permission": "read"}), 201)
    (url,) = _urls(carol, f, [sha(plain)], blocks=True)
    assert url["block_hashes"] == _blocks(plain)
    # asking for blocks does not widen what a hash list may name
    error_of(carol.post("/chunks/download-urls", {"node_id": f["id"], "version": 1, "hashes": ["0" * 64],
                                                  "blocks": True}), 404, "not_found")


@pytest.mark.embedded_only  # the server's own blob URLs (S3 ranges: tests/scaled)
def test_blob_get_serves_byte_ranges(alice):
    plain = os.urandom(3 * BLOCK + 1234)
    f = alice.commit(alice.root, "f", [plain])
    (url,) = _urls(alice, f, [sha(plain)], blocks=True)
    r = alice.blob.get(url["url"], headers={"Range": f"bytes={BLOCK}-{2 * BLOCK - 1}"})
    assert r.status_code == 206
    assert r.headers["content-range"] == f"bytes {BLOCK}-{2 * BLOCK - 1}/{len(plain)}"
    assert r.content == plain[BLOCK:2 * BLOCK] and sha(r.content) == url["block_hashes"][1]
    # the short last block, asked for up to the block's nominal end
    r = alice.blob.get(url["url"], headers={"Range": f"bytes={3 * BLOCK}-{4 * BLOCK - 1}"})
    assert r.status_code == 206 and r.content == plain[3 * BLOCK:]
    assert r.headers["content-range"] == f"bytes {3 * BLOCK}-{len(plain) - 1}/{len(plain)}"
    # past the end: unsatisfiable, saying how long the object is
    r = alice.blob.get(url["url"], headers={"Range": f"bytes={len(plain)}-{len(plain) + 10}"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(plain)}"
    # no Range: the whole chunk, as before
    assert alice.blob.get(url["url"]).content == plain


@pytest.mark.embedded_only  # the server's own blob URLs (S3: tests/scaled)
def test_ranges_do_not_loosen_the_signature(alice):
    a, b = os.urandom(BLOCK * 2), os.urandom(BLOCK * 2)
    f = alice.commit(alice.root, "f", [a])
    alice.commit(alice.root, "g", [b])
    (url,) = _urls(alice, f, [sha(a)], blocks=True)
    rng = {"Range": "bytes=0-99"}
    parts = urlsplit(url["url"])
    q = dict(parse_qsl(parts.query))
    flipped = q["sig"][:-1] + ("0" if q["sig"][-1] != "0" else "1")
    for bad in (f"{parts.path}?{urlencode({**q, 'sig': flipped})}",  # altered signature
                f"/blobs/{sha(b)}?{parts.query}",  # another object
                f"{parts.path}?{urlencode({**q, 'exp': str(int(q['exp']) + 3600)})}"):  # longer life
        error_of(alice.blob.get(bad, headers=rng), 401, "unauthorized")
    error_of(alice.blob.put(url["url"], content=a[:100], headers=rng), 401, "unauthorized")  # GET grant, PUT
    assert alice.blob.get(url["url"], headers=rng).status_code == 206


@pytest.mark.embedded_only  # the server's own blob URLs (S3: tests/scaled)
def test_expired_url_refuses_ranges(server_with):
    srv = server_with("--url-ttl", "1")
    d = drive_on(srv)
    plain = os.urandom(BLOCK * 2)
    f = d.commit(d.root, "f", [plain])
    (url,) = _urls(d, f, [sha(plain)], blocks=True)
    while time.time() <= url["expires_at"] + 0.2:
        time.sleep(0.1)
    error_of(d.blob.get(url["url"], headers={"Range": "bytes=0-99"}), 410, "expired")
    d.close()


def test_migration_adds_block_hashes_to_a_version_1_database(tmp_path):
    """A database written before block hashes: its chunks keep NULL (fetched whole) and it reaches the
    current version in place."""
    db = SqliteDatabase(tmp_path / "v1.db")
    with db.transaction(write=True) as tx:
        for stmt in schema_statements("sqlite"):
            tx.execute(stmt)
        tx.execute("INSERT INTO meta(key, value) VALUES ('schema_version', '1')")
        tx.execute("INSERT INTO chunks(hash, size, stored_size, encoding, created_ns) VALUES ('h', 1, 1, 'none', 0)")
    with db.transaction(write=True) as tx:
        assert migrate(tx, "sqlite") == 1
    with db.transaction(write=True) as tx:
        assert migrate(tx, "sqlite") == SCHEMA_VERSION  # idempotent
    db.close()
    conn = sqlite3.connect(tmp_path / "v1.db")
    assert conn.execute("SELECT hash, block_hashes FROM chunks").fetchall() == [("h", None)]
    conn.close()


@pytest.mark.embedded_only  # edits the server's SQLite to make a chunk look stored before version 2
def test_chunks_stored_before_get_block_hashes_when_verified_again(server, alice, bob):
    plain = os.urandom(BLOCK + 5)
    f = alice.commit(alice.root, "f", [plain])
    conn = sqlite3.connect(server.data_dir / "meta.db")
    with conn:
        conn.execute("UPDATE chunks SET block_hashes = NULL WHERE hash = ?", (sha(plain),))
    conn.close()
    (url,) = _urls(alice, f, [sha(plain)], blocks=True)
    assert url["block_hashes"] is None  # an old chunk: the client fetches it whole
    bob.upload([plain], encoding="zstd")  # bob's upload is verified, dedupes to the plain object
    (url,) = _urls(alice, f, [sha(plain)], blocks=True)
    assert url["encoding"] == "none" and url["block_hashes"] == _blocks(plain)
