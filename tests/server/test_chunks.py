"""Chunks over HTTP: which are missing, signed upload/download URLs, verification on PUT, zstd storage,
per-user dedupe without leaks, download scope, and tampered or expired URLs."""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import zstandard

from tests.server.conftest import API, drive_on, error_of, ok, random_chunks, sha


def _spec(data: bytes, stored: bytes | None = None, encoding: str = "none") -> dict:
    stored = data if stored is None else stored
    return {"hash": sha(data), "size": len(data), "stored_size": len(stored), "encoding": encoding}


@pytest.mark.embedded_only  # the server's own blob URLs (S3: tests/scaled)
def test_upload_protocol(alice):
    a, b = random_chunks(2, 5000)
    hashes = [sha(a), sha(b)]
    assert alice.missing(hashes + [sha(a)]) == hashes  # deduplicated, in order
    urls = ok(alice.post("/chunks/upload-urls", {"chunks": [_spec(a), _spec(b)]}))["urls"]
    assert [(u["hash"], u["method"], u["size"], u["stored_size"], u["encoding"]) for u in urls] == [
        (sha(a), "PUT", 5000, 5000, "none"), (sha(b), "PUT", 5000, 5000, "none")]
    assert all(u["url"].startswith(f"/blobs/{u['hash']}?") and u["expires_at"] > time.time() for u in urls)
    r = alice.put(urls[0], a)
    assert r.status_code == 201 and r.json() == {"hash": sha(a), "encoding": "none"}
    assert alice.missing(hashes) == [sha(b)]
    assert alice.put(urls[1], b).status_code == 201
    assert alice.missing(hashes) == []
    # uploading a chunk again is harmless
    assert alice.put(urls[1], b).status_code == 201


@pytest.mark.embedded_only  # the server's own blob URLs (S3: tests/scaled)
def test_zstd_chunks_are_stored_encoded_and_served_with_their_encoding(alice):
    plain = (b"compressible text " * 20000)[:300_000] + os.urandom(16)
    packed = zstandard.ZstdCompressor(level=3).compress(plain)
    assert len(packed) < len(plain) // 10
    (url,) = ok(alice.post("/chunks/upload-urls", {"chunks": [_spec(plain, packed, "zstd")]}))["urls"]
    assert (url["encoding"], url["stored_size"]) == ("zstd", len(packed))
    r = alice.put(url, packed)
    assert r.status_code == 201 and r.json()["encoding"] == "zstd"
    f = ok(alice.post("/files", {"parent_id": alice.root, "name": "z", "size": len(plain),
                                 "manifest": [{"hash": sha(plain), "size": len(plain)}]}))
    (dl,) = ok(alice.post("/chunks/download-urls", {"node_id": f["id"], "version": 1, "hashes": [sha(plain)]}))["urls"]
    assert (dl["method"], dl["encoding"], dl["size"], dl["stored_size"]) == ("GET", "zstd", len(plain), len(packed))
    got = alice.blob.get(dl["url"])
    assert got.status_code == 200 and got.headers["x-drive-encoding"] == "zstd"
    assert got.content == packed and zstandard.ZstdDecompressor().decompress(got.content) == plain
    assert alice.read(f["id"]) == plain


def test_uncompressed_chunk_must_announce_equal_sizes(alice):
    (a,) = random_chunks(1)
    error_of(alice.post("/chunks/upload-urls", {"chunks": [{**_spec(a), "stored_size": 999}]}), 422, "invalid")
    error_of(alice.post("/chunks/upload-urls", {"chunks": [{**_spec(a), "encoding": "gzip"}]}), 422, "invalid")
    error_of(alice.post("/chunks/upload-urls", {"chunks": [{**_spec(a), "size": 4 * 2**20 + 1}]}), 422, "invalid")


@pytest.mark.embedded_only  # the server's own blob URLs (S3: tests/scaled)
def test_put_with_wrong_bytes_is_rejected_and_not_counted(alice):
    a, other = random_chunks(2, 2000)
    (url,) = alice.upload_urls([a])
    error_of(alice.put(url, other), 422, "invalid")  # same size, wrong hash
    error_of(alice.put(url, a[:-1]), 400, "bad_request")  # short
    error_of(alice.put(url, a + b"!"), 413, "too_large")  # long
    assert alice.missing([sha(a), sha(other)]) == [sha(a), sha(other)]
    r = alice.post("/files", {"parent_id": alice.root, "name": "x", "size": 2000,
                              "manifest": [{"hash": sha(a), "size": 2000}]})
    assert error_of(r, 409, "missing_chunks")["details"]["missing"] == [sha(a)]


@pytest.mark.embedded_only  # the server's own blob URLs (S3: tests/scaled)
def test_zstd_put_is_verified_after_decoding(alice):
    plain = b"abc" * 1000
    wrong = zstandard.ZstdCompressor().compress(b"abd" * 1000)
    short = zstandard.ZstdCompressor().compress(plain[:-1])
    for body, status in ((wrong, 422), (short, 422), (b"\x00not zstd at all", 400)):
        (url,) = ok(alice.post("/chunks/upload-urls", {"chunks": [_spec(plain, body, "zstd")]}))["urls"]
        error_of(alice.put(url, body), status)
    assert alice.missing([sha(plain)]) == [sha(plain)]


def test_dedupe_is_per_user_and_never_leaks(alice, bob):
    x = os.urandom(4096)
    alice.upload([x])
    assert alice.missing([sha(x)]) == []
    assert bob.missing([sha(x)]) == [sha(x)]  # bob cannot learn that alice has x
    commit = {"parent_id": bob.root, "name": "x", "size": len(x), "manifest": [{"hash": sha(x), "size": len(x)}]}
    assert error_of(bob.post("/files", commit), 409, "missing_chunks")["details"]["missing"] == [sha(x)]
    error_of(bob.post("/chunks/download-urls", {"node_id": bob.root, "version": 1, "hashes": [sha(x)]}), 404)
    # once bob proves he has the bytes by uploading them, he may use the chunk
    bob.upload([x])
    assert bob.missing([sha(x)]) == []
    f = ok(bob.post("/files", commit))
    assert bob.read(f["id"]) == x


def test_download_urls_only_for_readable_versions(alice, bob):
    a, b, c = random_chunks(3)
    f = alice.commit(alice.root, "f", [a, b])
    ok(alice.update(f, [c]))
    urls = ok(alice.post("/chunks/download-urls", {"node_id": f["id"], "version": 1, "hashes": [sha(b), sha(a)]}))
    assert [u["hash"] for u in urls["urls"]] == [sha(b), sha(a)]  # old versions stay downloadable
    # a stranger sees nothing, not even that the node exists
    stranger = bob.post("/chunks/download-urls", {"node_id": f["id"], "version": 1, "hashes": [sha(a)]})
    error_of(stranger, 404, "not_found")
    # a hash that is not part of that version, even one the caller holds, is refused
    err = error_of(alice.post("/chunks/download-urls", {"node_id": f["id"], "version": 2, "hashes": [sha(c), sha(a)]}),
                   404, "not_found")
    assert err["details"]["missing"] == [sha(a)]
    guessed = "0" * 64
    error_of(alice.post("/chunks/download-urls", {"node_id": f["id"], "version": 2, "hashes": [guessed]}), 404)
    error_of(alice.post("/chunks/download-urls", {"node_id": f["id"], "version": 3, "hashes": [sha(c)]}), 404)



def test_a_trashed_files_chunks_stay_downloadable_for_its_owner_only(alice, bob):
    # A device editing the file when another deleted it puts its version back, and may have to fetch
    # chunks of it to do so (a sparse local copy).
    a, b = random_chunks(2)
    f = alice.commit(alice.root, "f", [a, b])
    ok(alice.post(f"/nodes/{f['id']}/shares", {"user": bob.name, "permission": "read"}), 201)
    query = {"node_id": f["id"], "version": 1, "hashes": [sha(b)]}
    ok(bob.post("/chunks/download-urls", query))
    ok(alice.delete(f"/nodes/{f['id']}"))
    urls = ok(alice.post("/chunks/download-urls", query))["urls"]
    assert [u["hash"] for u in urls] == [sha(b)]
    error_of(bob.post("/chunks/download-urls", query), 404, "not_found")
    error_of(alice.post("/chunks/download-urls", {**query, "version": 2}), 404, "not_found")


# ---- signed URLs ------------------------------------------------------------------------------------


def _with(url: str, path: str | None = None, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return f"{path or parts.path}?{urlencode(query)}"


@pytest.mark.embedded_only  # the server's own blob URLs (S3: tests/scaled)
def test_tampered_blob_urls_are_refused(alice):
    a, b = random_chunks(2, 3000)
    f = alice.commit(alice.root, "f", [a])
    (put,) = alice.upload_urls([b])
    (get,) = ok(alice.post("/chunks/download-urls", {"node_id": f["id"], "version": 1, "hashes": [sha(a)]}))["urls"]
    q = dict(parse_qsl(urlsplit(put["url"]).query))
    assert set(q) == {"enc", "size", "ssize", "uid", "exp", "sig"}

    flipped = q["sig"][:-1] + ("0" if q["sig"][-1] != "0" else "1")
    tampered = [
        _with(put["url"], sig=flipped),
        _with(put["url"], path=f"/blobs/{sha(a)}"),
        _with(put["url"], uid=str(int(q["uid"]) + 1)),
        _with(put["url"], size="2999", ssize="2999"),
        _with(put["url"], exp=str(int(q["exp"]) + 3600)),
        _with(put["url"], enc="zstd"),
        put["url"].split("&sig=")[0],
    ]
    for url in tampered:
        error_of(alice.put(url, b), 401, "unauthorized")
    error_of(alice.put(get["url"], a), 401, "unauthorized")  # a GET grant does not allow PUT
    error_of(alice.blob.get(put["url"]), 401, "unauthorized")  # nor a PUT grant GET
    error_of(alice.blob.get(_with(get["url"], path=f"/blobs/{sha(b)}")), 401, "unauthorized")
    error_of(alice.blob.get(f"/blobs/{sha(a)}"), 401, "unauthorized")
    assert alice.missing([sha(b)]) == [sha(b)]
    # the untouched URLs work
    assert alice.put(put, b).status_code == 201
    assert alice.blob.get(get["url"]).content == a


@pytest.mark.embedded_only  # the server's own blob URLs (S3: tests/scaled)
def test_blob_urls_expire(server_with):
    srv = server_with("--url-ttl", "2")
    d = drive_on(srv)
    a, b = random_chunks(2)
    f = d.commit(d.root, "f", [a])
    (put,) = d.upload_urls([b])
    (get,) = ok(d.post("/chunks/download-urls", {"node_id": f["id"], "version": 1, "hashes": [sha(a)]}))["urls"]
    assert put["expires_at"] <= time.time() + 2.5
    assert d.blob.get(get["url"]).status_code == 200  # fresh: works
    while time.time() <= max(put["expires_at"], get["expires_at"]) + 0.2:
        time.sleep(0.1)
    error_of(d.put(put, b), 410, "expired")
    error_of(d.blob.get(get["url"]), 410, "expired")
    assert d.missing([sha(b)]) == [sha(b)]
    # a new URL works again
    (put2,) = d.upload_urls([b])
    assert d.put(put2, b).status_code == 201
    d.close()


@pytest.mark.parametrize("n", [0, 1])
def test_batches_are_bounded(alice, n):
    from server import limits  # constants only

    hashes = ["a" * 64] * (limits.MAX_BATCH + n)
    r = alice.post("/chunks/missing", {"hashes": hashes})
    if n == 0:
        assert ok(r)["missing"] == ["a" * 64]
    else:
        error_of(r, 422, "invalid")


def test_chunk_endpoints_need_a_token(server):
    with server.client(None) as anon:
        for path in ("/chunks/missing", "/chunks/upload-urls", "/chunks/download-urls"):
            error_of(anon.post(API + path, json={}), 401, "unauthorized")
