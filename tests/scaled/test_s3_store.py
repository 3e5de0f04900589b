"""Chunks in an S3 store (SeaweedFS here): presigned URLs straight to the store, bound to one key, one method
and one length, expiring; uploads count only once the server has confirmed their bytes; nobody can
overwrite a stored chunk; dedupe and delta measured by the objects in the bucket."""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest
import zstandard

from remote.transfer import Transfer
from tests.remote.conftest import connect
from tests.remote.helpers import same_file, write_random
from tests.server.conftest import Drive, drive_on, error_of, ok, random_chunks, sha

pytestmark = pytest.mark.needs_scaled


def _spec(data: bytes, stored: bytes | None = None, encoding: str = "none") -> dict:
    stored = data if stored is None else stored
    return {"hash": sha(data), "size": len(data), "stored_size": len(stored), "encoding": encoding}


def _urls(d: Drive, *specs: dict) -> list[dict]:
    return ok(d.post("/chunks/upload-urls", {"chunks": list(specs)}))["urls"]


@pytest.fixture
def s3d(server) -> Drive:
    """A new user on the session's server, which must keep its chunks in S3."""
    assert server.s3() is not None, "DRIVE_TEST_BACKEND=scaled runs servers on S3"
    d = drive_on(server)
    yield d
    d.close()


def test_upload_goes_to_staging_and_counts_only_once_confirmed(server, s3d):
    a = os.urandom(5000)
    (url,) = _urls(s3d, _spec(a))
    parts = urlsplit(url["url"])
    assert parts.scheme == "http" and parts.port != server.port  # straight to the store, not via the API
    assert url["confirm"] is True and "/staging/" in parts.path and parts.path.endswith(sha(a))
    assert "X-Amz-Signature" in url["url"] and url["expires_at"] > time.time()
    r = s3d.put(url, a)
    assert r.status_code == 200
    assert sha(a) in server.blob_objects("staging")
    assert s3d.missing([sha(a)]) == [sha(a)]  # a PUT alone proves nothing
    assert sha(a) not in server.blob_objects()
    assert s3d.confirm(url) == []
    assert s3d.missing([sha(a)]) == []
    assert server.blob_objects()[sha(a)] == 5000
    assert sha(a) not in server.blob_objects("staging")  # cleaned up
    assert s3d.confirm(url) == []  # confirming again is harmless


def test_zstd_chunk_round_trip_keeps_its_encoding(server, s3d):
    plain = (b"compressible text " * 20000)[:300_000] + os.urandom(16)
    packed = zstandard.ZstdCompressor(level=3).compress(plain)
    (url,) = _urls(s3d, _spec(plain, packed, "zstd"))
    assert s3d.put(url, packed).status_code == 200 and s3d.confirm(url) == []
    assert server.blob_objects()[sha(plain) + ".zst"] == len(packed)
    f = ok(s3d.post("/files", {"parent_id": s3d.root, "name": "z", "size": len(plain),
                               "manifest": [{"hash": sha(plain), "size": len(plain)}]}))
    (dl,) = ok(s3d.post("/chunks/download-urls", {"node_id": f["id"], "version": 1, "hashes": [sha(plain)]}))["urls"]
    assert (dl["method"], dl["encoding"], dl["stored_size"], dl["confirm"]) == ("GET", "zstd", len(packed), False)
    got = httpx.get(dl["url"], timeout=10)  # no token: the signature is the credential
    assert got.status_code == 200 and got.content == packed
    assert s3d.read(f["id"]) == plain


def test_wrong_bytes_are_never_recorded_nor_downloadable(server, s3d):
    a, other = random_chunks(2, 2000)
    (url,) = _urls(s3d, _spec(a))
    assert s3d.put(url, other).status_code == 200  # the store cannot tell; same length as signed
    error_of(s3d.post("/chunks/confirm", {"chunks": [_spec(a)]}), 422, "invalid")
    assert s3d.missing([sha(a)]) == [sha(a)]
    assert sha(a) not in server.blob_objects() and sha(a) not in server.blob_objects("staging")
    r = s3d.post("/files", {"parent_id": s3d.root, "name": "x", "size": 2000, "manifest": [{"hash": sha(a), "size": 2000}]})
    assert error_of(r, 409, "missing_chunks")["details"]["missing"] == [sha(a)]
    # the signed length is enforced by the store itself
    for body in (a[:-1], a + b"!"):
        assert s3d.put(url, body).status_code == 403
    # zstd: checked after decoding
    plain = b"abc" * 1000
    for body, status in ((zstandard.ZstdCompressor().compress(b"abd" * 1000), 422), (b"\x00not zstd at all", 400)):
        (zurl,) = _urls(s3d, _spec(plain, body, "zstd"))
        assert s3d.put(zurl, body).status_code == 200
        error_of(s3d.post("/chunks/confirm", {"chunks": [_spec(plain, body, "zstd")]}), status)
    assert s3d.missing([sha(plain)]) == [sha(plain)] and not server.blob_objects("staging")


def test_confirm_without_an_upload_reports_it_missing(s3d):
    (a,) = random_chunks(1)
    assert ok(s3d.post("/chunks/confirm", {"chunks": [_spec(a)]}))["missing"] == [sha(a)]
    assert s3d.missing([sha(a)]) == [sha(a)]
    (url,) = _urls(s3d, _spec(a))
    assert s3d.put(url, a).status_code == 200
    # announcing another size than the one uploaded is refused, and the upload is dropped
    error_of(s3d.post("/chunks/confirm", {"chunks": [{**_spec(a), "size": 999, "stored_size": 999}]}), 400)
    assert s3d.confirm(url) == [sha(a)] and s3d.missing([sha(a)]) == [sha(a)]


def test_nobody_can_overwrite_a_stored_chunk(server, make_s3_pair):
    alice, bob = make_s3_pair
    x = os.urandom(4096)
    f = alice.commit(alice.root, "x", [x])
    stored = dict(server.blob_objects())
    # bob lacks x, so he is given a URL: it writes his own staging object, never the chunk alice reads
    (url,) = bob.upload_urls([x])
    garbage = os.urandom(4096)
    assert bob.put(url, garbage).status_code == 200
    error_of(bob.post("/chunks/confirm", {"chunks": [_spec(x)]}), 422, "invalid")
    assert server.blob_get(sha(x)) == x and server.blob_objects() == stored
    assert alice.read(f["id"]) == x
    # his own staging area is his alone: a URL for alice's staging key cannot be made from his
    parts = urlsplit(url["url"])
    other = parts.path.replace(f"/staging/{bob.id}/", f"/staging/{alice.id}/")
    assert httpx.put(urlunsplit(parts._replace(path=other)), content=x, timeout=10).status_code == 403
    # once he really uploads x he holds it, and nothing new is stored (dedupe across users)
    bob.upload([x])
    assert bob.missing([sha(x)]) == [] and server.blob_objects() == stored


@pytest.fixture
def make_s3_pair(server):
    a, b = drive_on(server), drive_on(server)
    yield a, b
    a.close()
    b.close()


def _with_query(url: str, path: str | None = None, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(path=path or parts.path, query=urlencode(query)))


def test_tampered_presigned_urls_are_refused_by_the_store(s3d):
    a, b = random_chunks(2, 3000)
    f = s3d.commit(s3d.root, "f", [a])
    (put,) = s3d.upload_urls([b])
    (get,) = ok(s3d.post("/chunks/download-urls", {"node_id": f["id"], "version": 1, "hashes": [sha(a)]}))["urls"]
    q = dict(parse_qsl(urlsplit(put["url"]).query))
    sig = q["X-Amz-Signature"]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    get_path = urlsplit(get["url"]).path
    tampered_puts = [
        _with_query(put["url"], **{"X-Amz-Signature": flipped}),
        _with_query(put["url"], path=get_path),  # onto the stored chunk's key
        _with_query(put["url"], path=urlsplit(put["url"]).path + "x"),
        _with_query(put["url"], **{"X-Amz-Expires": "604800"}),
        _with_query(put["url"], **{"X-Amz-Date": "20300101T000000Z"}),
        put["url"].split("&X-Amz-Signature=")[0],
    ]
    for url in tampered_puts:  # 403 (signature does not match), 400 for the unsigned one
        assert httpx.put(url, content=b, timeout=10).status_code in (400, 403), url.split("?")[0]
    assert httpx.put(get["url"], content=a, timeout=10).status_code == 403  # a GET grant does not allow PUT
    assert httpx.get(put["url"], timeout=10).status_code == 403  # nor a PUT grant GET
    assert httpx.get(_with_query(get["url"], path=get_path[:-4] + "0000"), timeout=10).status_code == 403
    assert httpx.get(urlunsplit(urlsplit(get["url"])._replace(query="")), timeout=10).status_code == 403
    assert s3d.missing([sha(b)]) == [sha(b)] and s3d.server.blob_get(sha(a)) == a
    # the untouched URLs work
    assert s3d.put(put, b).status_code == 200 and s3d.confirm(put) == []
    assert httpx.get(get["url"], timeout=10).content == a


def test_presigned_gets_serve_ranges_of_plain_chunks_with_block_hashes(s3d):
    """Ranged chunk reads on S3: the confirm computed the block hashes, and the store honours Range on
    the presigned GET (the signature covers key, method and expiry, not the range)."""
    block = 64 * 2**10
    plain = os.urandom(3 * block + 100)
    f = s3d.commit(s3d.root, "f", [plain])
    (url,) = ok(s3d.post("/chunks/download-urls", {"node_id": f["id"], "version": 1, "hashes": [sha(plain)],
                                                   "blocks": True}))["urls"]
    assert url["block_size"] == block
    assert url["block_hashes"] == [sha(plain[i:i + block]) for i in range(0, len(plain), block)]
    r = httpx.get(url["url"], headers={"Range": f"bytes={block}-{2 * block - 1}"}, timeout=10)
    assert r.status_code == 206 and r.content == plain[block:2 * block]
    assert r.headers["content-range"] == f"bytes {block}-{2 * block - 1}/{len(plain)}"
    r = httpx.get(url["url"], headers={"Range": f"bytes={3 * block}-{4 * block - 1}"}, timeout=10)
    assert r.status_code == 206 and r.content == plain[3 * block:]  # the short last block
    r = httpx.get(url["url"], headers={"Range": f"bytes={len(plain)}-{len(plain) + 9}"}, timeout=10)
    assert r.status_code == 416
    sig = dict(parse_qsl(urlsplit(url["url"]).query))["X-Amz-Signature"]
    flipped = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    bad = _with_query(url["url"], **{"X-Amz-Signature": flipped})
    assert httpx.get(bad, headers={"Range": "bytes=0-99"}, timeout=10).status_code == 403


def test_presigned_urls_expire(scaled_server):
    srv = scaled_server("--url-ttl", "2")
    d = drive_on(srv)
    a, b = random_chunks(2)
    f = d.commit(d.root, "f", [a])
    (put,) = d.upload_urls([b])
    (get,) = ok(d.post("/chunks/download-urls", {"node_id": f["id"], "version": 1, "hashes": [sha(a)]}))["urls"]
    assert put["expires_at"] <= time.time() + 2.5
    assert httpx.get(get["url"], timeout=10).status_code == 200  # fresh: works
    while time.time() <= max(put["expires_at"], get["expires_at"]) + 1.2:  # S3 counts whole seconds
        time.sleep(0.1)
    for r in (httpx.put(put["url"], content=b, timeout=10), httpx.get(get["url"], timeout=10)):
        assert r.status_code == 403 and b"expired" in r.content.lower()
    assert d.missing([sha(b)]) == [sha(b)]
    (put2,) = d.upload_urls([b])  # a new URL works again
    assert d.put(put2, b).status_code == 200 and d.confirm(put2) == []
    d.close()


async def test_client_renews_expired_store_urls(scaled_server, tmp_path):
    """The client reads the store's 403 "Request has expired" as Expired and asks for a new URL."""
    from remote import errors
    from remote.models import UploadChunk

    srv = scaled_server("--url-ttl", "1")
    _name, token = srv.add_user()
    data = os.urandom(3000)
    async with connect(srv, token) as api:
        (url,) = await api.upload_urls([UploadChunk(sha(data), len(data), len(data))])
        time.sleep(2.2)
        with pytest.raises(errors.Expired):
            await api.put_blob(url, data)
        src = write_random(tmp_path / "f", 3 * 2**20, seed=7)
        me = await api.me()
        node = await Transfer(api).upload_file(src, parent_id=me.root_id, name="f")
        await Transfer(api).download_file(node, tmp_path / "back")
        assert same_file(src, tmp_path / "back")


async def test_transfer_round_trip_dedupe_and_delta_in_the_bucket(server, tmp_path):
    """Whole files through the transfer engine; the bucket holds each distinct chunk once."""
    _name, token = server.add_user()
    _name2, token2 = server.add_user()
    src = write_random(tmp_path / "src", 6 * 2**20, seed=11)
    async with connect(server, token) as api, connect(server, token2) as api2:
        me, me2 = await api.me(), await api2.me()
        before = set(server.blob_objects())
        t = Transfer(api)
        node = await t.upload_file(src, parent_id=me.root_id, name="big")
        new = set(server.blob_objects()) - before
        assert len(new) == t.statistics().chunks_sent >= 2
        await t.download_file(node, tmp_path / "back")
        assert same_file(src, tmp_path / "back")
        # the same bytes again (another user): uploaded to prove possession, stored nothing new
        t2 = Transfer(api2)
        await t2.upload_file(src, parent_id=me2.root_id, name="same")
        assert t2.statistics().chunks_sent == len(new) and set(server.blob_objects()) - before == new
        # a small edit in the middle: only the chunks around it travel and are stored
        with open(src, "r+b") as f:
            f.seek(3 * 2**20)
            f.write(b"an edit")
        stats0 = t.statistics().chunks_sent
        await t.upload_file(src, node_id=node.id, base_version=node.version)
        delta = set(server.blob_objects()) - before - new
        assert 1 <= len(delta) <= 2 and t.statistics().chunks_sent - stats0 == len(delta)
        assert not server.blob_objects("staging")


def test_bucket_is_created_if_missing(scaled_backend, scaled_server):
    bucket = f"drivefs-new-{os.getpid()}-{int(time.time())}"
    env = scaled_backend.env()
    env["DRIVE_BLOB_URL"] = scaled_backend.s3.blob_url(bucket)
    srv = scaled_server(env=env)
    client = scaled_backend.s3.client()
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]
    d = drive_on(srv)
    f = d.commit(d.root, "f", random_chunks(2))
    assert len(d.read(f["id"])) == 2000
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert len(keys) == 2 and all(k.startswith("chunks/") for k in keys)
    d.close()
