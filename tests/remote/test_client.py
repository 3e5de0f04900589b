"""Every endpoint through ApiClient against the real server, and 4xx answers as the right exceptions."""

from __future__ import annotations

import errno
import logging
import os

import pytest
import trio
import zstandard

from cache.chunker import hash_bytes
from remote import errors
from remote.models import SmallFile, UploadChunk
from tests.fixtures.server import ServerProcess
from tests.remote.conftest import connect


async def test_tree_endpoints(api):
    me = await api.me()
    root = await api.get_node(me.root_id)
    assert root.kind == "dir" and root.access == "owner"
    docs = await api.create_folder(me.root_id, "docs", mode=0o700, mtime_ns=123)
    assert (docs.name, docs.mode, docs.mtime_ns, docs.parent_id) == ("docs", 0o700, 123, me.root_id)
    assert await api.resolve("/docs") == docs
    link = await api.create_symlink(docs.id, "ln", "../elsewhere")
    assert link.kind == "symlink" and link.target == "../elsewhere"

    for i in range(7):
        await api.create_folder(docs.id, f"sub{i}")
    page = await api.list_children(docs.id, limit=3)
    assert [n.name for n in page.entries] == ["ln", "sub0", "sub1"] and page.next_cursor
    names = [n.name async for n in api.iter_children(docs.id, page_size=3)]
    assert names == ["ln"] + [f"sub{i}" for i in range(7)]

    moved = await api.move(link.id, me.root_id, "ln2")
    assert (moved.parent_id, moved.name) == (me.root_id, "ln2")
    changed = await api.set_attr(docs.id, mode=0o750, mtime_ns=456)
    assert (changed.mode, changed.mtime_ns) == (0o750, 456)

    gone = await api.delete(moved.id)
    assert gone.deleted
    assert [n.id for n in (await api.trash()).entries] == [moved.id]
    back = await api.restore(moved.id, name="ln3")
    assert not back.deleted and back.name == "ln3"


async def test_chunk_blob_and_file_endpoints(api):
    me = await api.me()
    plain = b"some bytes " * 1000
    packed = zstandard.ZstdCompressor(level=3).compress(plain)
    h = hash_bytes(plain)
    assert await api.missing_chunks([h]) == [h]
    (url,) = await api.upload_urls([UploadChunk(h, len(plain), len(packed), "zstd")])
    assert url.method == "PUT" and (url.url.startswith("/blobs/") or url.confirm)  # the server's own, or S3
    assert "sig=" not in repr(url) and "Signature=" not in repr(url)
    await api.put_blob(url, packed)
    assert await api.missing_chunks([h]) == []

    node = await api.commit_file([UploadChunk(h, len(plain), len(packed))], len(plain), parent_id=me.root_id,
                                 name="f", content_hash=h)
    assert (node.version, node.size, node.content_hash) == (1, len(plain), h)
    (got,) = await api.download_urls(node.id, 1, [h, h])
    assert got.method == "GET" and got.encoding == "zstd"
    encoding, body = await api.get_blob(got)
    assert encoding == "zstd" and zstandard.ZstdDecompressor().decompress(body) == plain

    v2 = await api.commit_file([], 0, node_id=node.id, base_version=1)
    assert v2.version == 2 and v2.size == 0
    assert [v.version for v in await api.versions(node.id)] in ([2, 1], [1, 2])
    detail = await api.version_detail(node.id, 1)
    assert [(m.hash, m.size, m.offset) for m in detail.manifest] == [(h, len(plain), 0)]
    assert detail.created_by == (await api.me()).name and detail.device == "test-device"
    v3 = await api.restore_version(node.id, 1)
    assert (v3.version, v3.size) == (3, len(plain))


async def test_small_files_endpoint(api):
    me = await api.me()
    folder = await api.create_folder(me.root_id, "small")
    await api.create_folder(folder.id, "taken")
    files = [SmallFile(b"alpha", folder.id, "a.txt", mode=0o600, mtime_ns=77), SmallFile(b"", folder.id, "empty"),
             SmallFile(b"in the way", folder.id, "taken")]
    a, empty, refused = await api.commit_small_files(files)
    assert (a.name, a.size, a.mode, a.mtime_ns, a.content_hash) == ("a.txt", 5, 0o600, 77, hash_bytes(b"alpha"))
    assert empty.size == 0 and empty.content_hash == hash_bytes(b"")
    assert isinstance(refused, errors.Exists) and refused.details["kind"] == "dir"
    detail = await api.version_detail(a.id, 1)
    assert [(m.hash, m.size) for m in detail.manifest] == [(hash_bytes(b"alpha"), 5)]
    assert detail.device == "test-device"
    v2, stale = await api.commit_small_files([SmallFile(b"beta", node_id=a.id, base_version=1),
                                              SmallFile(b"late", node_id=empty.id, base_version=0)])
    assert (v2.id, v2.version, v2.content_hash) == (a.id, 2, hash_bytes(b"beta"))
    assert isinstance(stale, errors.VersionConflict) and stale.details["content_hash"] == hash_bytes(b"")


async def test_upload_session_endpoints(api):
    me = await api.me()
    data = b"x" * 5000
    h = hash_bytes(data)
    session = await api.create_upload([UploadChunk(h, 5000, 5000)], 5000, parent_id=me.root_id, name="s")
    assert session.missing == (h,) and not session.committed
    with pytest.raises(errors.MissingChunks) as info:
        await api.commit_upload(session.id)
    assert info.value.missing == [h] and info.value.errno == errno.EIO
    (url,) = await api.upload_urls([UploadChunk(h, 5000, 5000)])
    await api.put_blob(url, data)
    assert (await api.get_upload(session.id)).missing == ()
    first = await api.commit_upload(session.id)
    assert await api.commit_upload(session.id) == first  # idempotent: safe to retry
    assert (await api.get_upload(session.id)).committed
    await api.drop_upload(session.id)
    with pytest.raises(errors.NotFound):
        await api.get_upload(session.id)


async def test_shares_and_changes(server, api):
    other_name, other_token = server.add_user()
    me = await api.me()
    cursor = await api.latest_cursor()
    folder = await api.create_folder(me.root_id, "shared")
    page = await api.changes(cursor)
    assert [(c.kind, c.node.id) for c in page.changes] == [("create", folder.id)] and not page.has_more

    share = await api.share(folder.id, other_name, "read")
    assert (share.node_id, share.user, share.permission) == (folder.id, other_name, "read")
    assert await api.shares_of(folder.id) == [share]
    assert await api.shared_by_me() == [share]
    async with connect(server, other_token) as other:
        (item,) = await other.shared_with_me()
        assert item.share == share and item.node.id == folder.id and item.node.access == "read"

        # Long-poll: the feed answers as soon as something changes, not at the end of the wait.
        start_cursor = await other.latest_cursor()
        async with trio.open_nursery() as nursery:
            async def change_soon() -> None:
                await trio.sleep(0.3)
                await api.create_folder(folder.id, "inner")
            nursery.start_soon(change_soon)
            start = trio.current_time()
            page = await other.changes(start_cursor, wait=20)
            assert trio.current_time() - start < 10
        assert [c.node.name for c in page.changes] == ["inner"]

    await api.unshare(folder.id, other_name)
    assert await api.shares_of(folder.id) == []


async def test_4xx_map_to_exceptions(server, api):
    me = await api.me()
    with pytest.raises(errors.NotFound) as info:
        await api.get_node(2**40)
    assert info.value.status == 404 and info.value.errno == errno.ENOENT

    folder = await api.create_folder(me.root_id, "d")
    with pytest.raises(errors.Exists) as info:
        await api.create_folder(me.root_id, "d")
    assert info.value.errno == errno.EEXIST
    await api.create_folder(folder.id, "child")
    with pytest.raises(errors.NotEmpty):
        await api.delete(folder.id, require_empty=True)
    with pytest.raises(errors.InvalidName) as info:
        await api.create_folder(me.root_id, "a/b")
    assert info.value.errno == errno.EINVAL

    file = await api.commit_file([], 0, parent_id=me.root_id, name="empty")
    with pytest.raises(errors.NotADirectory):
        await api.create_folder(file.id, "x")
    await api.commit_file([], 0, node_id=file.id, base_version=1)
    with pytest.raises(errors.VersionConflict) as info:
        await api.commit_file([], 0, node_id=file.id, base_version=1)
    assert info.value.current_version == 2

    unknown = "0" * 64
    with pytest.raises(errors.MissingChunks) as info:
        await api.commit_file([UploadChunk(unknown, 10, 10)], 10, parent_id=me.root_id, name="m")
    assert info.value.missing == [unknown]

    other_name, other_token = server.add_user()
    await api.share(folder.id, other_name, "read")
    async with connect(server, other_token) as other:
        with pytest.raises(errors.Forbidden) as info:
            await other.create_folder(folder.id, "nope")
        assert info.value.status == 403 and info.value.errno == errno.EACCES

    async with connect(server, "drv_not_a_token") as forged:
        with pytest.raises(errors.Unauthorized):
            await forged.me()


async def test_never_logs_token_or_signatures(api, caplog):
    caplog.set_level(logging.DEBUG)
    me = await api.me()
    data = b"log me not" * 100
    h = hash_bytes(data)
    (url,) = await api.upload_urls([UploadChunk(h, len(data), len(data))])
    await api.put_blob(url, data)
    node = await api.commit_file([UploadChunk(h, len(data), len(data))], len(data), parent_id=me.root_id, name="l")
    (got,) = await api.download_urls(node.id, 1, [h])
    await api.get_blob(got)
    text = "\n".join(r.getMessage() for r in caplog.records)
    # httpx logged the API requests (blob requests go through remote.blobhttp, which logs none)...
    assert "/chunks/upload-urls" in text and "/chunks/download-urls" in text
    token = api._auth["Authorization"].split()[1]
    assert token not in text and "sig=" not in text and "Signature=" not in text  # ...without credentials


async def test_an_expired_put_url_of_a_large_chunk_is_reported_as_expired(tmp_path):
    # The server refuses an expired URL before it reads the body, with 4 MiB on the way: the client must
    # report the refusal (so the transfer engine asks for a new URL) and send on a new URL afterwards.
    # (tests/remote/test_blobhttp.py covers a store that closes the connection without reading it.)
    config = tmp_path / "server.toml"
    config.write_text("url_ttl_s = 1\n")
    srv = ServerProcess(tmp_path / "data", extra_env={"DRIVE_SERVER_CONFIG": str(config)})
    srv.start()
    try:
        _name, token = srv.add_user()
        data = os.urandom(4 * 2**20)
        chunk = UploadChunk(hash_bytes(data), len(data), len(data))
        async with connect(srv, token) as api:
            (url,) = await api.upload_urls([chunk])
            await trio.sleep(2.2)
            with pytest.raises(errors.Expired):
                await api.put_blob(url, data)
            (url,) = await api.upload_urls([chunk])
            await api.put_blob(url, data)
            assert await api.missing_chunks([chunk.hash]) == []
    finally:
        srv.stop()
