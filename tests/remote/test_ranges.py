"""Transfer.download_ranges against a real server: adjacent blocks in one ranged GET, each verified, a
complete set promoted to the whole chunk, and chunks without block hashes (zstd) fetched whole."""

from __future__ import annotations

import random

import pytest

from cache.chunkcache import ChunkCache
from cache.index import Index
from remote import errors
from remote.transfer import Transfer

BLOCK = 64 * 2**10


@pytest.fixture
def cache(tmp_path):
    index = Index(tmp_path / "index.db")
    yield ChunkCache(tmp_path / "cache", index)
    index.close()


async def _one_chunk_file(api, tmp_path, data: bytes):
    me = await api.me()
    src = tmp_path / "src"
    src.write_bytes(data)
    node = await Transfer(api).upload_file(src, parent_id=me.root_id, name=f"f{random.getrandbits(32)}")
    (entry,) = (await api.version_detail(node.id, node.version)).manifest
    return node, entry


async def test_ranges_fetch_just_their_blocks_then_promote(api, tmp_path, cache):
    data = random.Random(1).randbytes(5 * BLOCK + 777)  # under 256 KiB+: one chunk
    node, e = await _one_chunk_file(api, tmp_path, data)
    transfer = Transfer(api)
    # two adjacent blocks (1 and 2) in one GET, one more (4) in another
    await transfer.download_ranges(node.id, node.version, e.hash, e.size,
                                   [(BLOCK + 10, BLOCK + 20), (2 * BLOCK, 2 * BLOCK + 5), (4 * BLOCK + 3, 4 * BLOCK + 9)],
                                   chunk_cache=cache)
    stats = transfer.statistics()
    assert (stats.ranges_received, stats.bytes_received, stats.chunks_received) == (2, 3 * BLOCK, 0)
    held = cache.block_map(e.hash)
    assert held is not None and [i for i in range(held.count) if held.has(i)] == [1, 2, 4]
    assert cache.read_range(e.hash, BLOCK, 2 * BLOCK) == data[BLOCK:3 * BLOCK]
    assert cache.usage().bytes == 3 * BLOCK
    # blocks held are not fetched again; the rest completes the chunk, which becomes a whole one
    requests = api.statistics().requests
    await transfer.download_ranges(node.id, node.version, e.hash, e.size, [(0, e.size)], chunk_cache=cache)
    stats = transfer.statistics()
    assert stats.ranges_received == 5 and stats.bytes_received == len(data)  # blocks 0, 3 and 5: 3 GETs
    assert api.statistics().requests == requests + 3  # the signed URL is reused while it lives
    assert e.hash in cache and cache.block_map(e.hash) is None and cache.get(e.hash) == data


async def test_chunks_without_block_hashes_are_fetched_whole(api, tmp_path, cache):
    data = b"compressible text, stored zstd " * 20_000
    node, e = await _one_chunk_file(api, tmp_path, data)
    transfer = Transfer(api)
    (url,) = await api.download_urls(node.id, node.version, [e.hash], blocks=True)
    assert url.encoding == "zstd" and url.block_hashes is None
    await transfer.download_ranges(node.id, node.version, e.hash, e.size, [(0, 10)], chunk_cache=cache)
    stats = transfer.statistics()
    assert (stats.ranges_received, stats.chunks_received) == (0, 1)
    assert cache.get(e.hash) == data


async def test_a_damaged_range_is_refused_and_nothing_is_kept(api, server, tmp_path, cache):
    data = random.Random(2).randbytes(3 * BLOCK)
    node, e = await _one_chunk_file(api, tmp_path, data)
    damaged = bytearray(data)
    damaged[BLOCK + 1] ^= 1
    server.blob_put(e.hash, bytes(damaged))
    transfer = Transfer(api)
    try:
        with pytest.raises(errors.CorruptChunk):
            await transfer.download_ranges(node.id, node.version, e.hash, e.size, [(BLOCK, BLOCK + 1)],
                                           chunk_cache=cache)
        assert transfer.statistics().ranges_received == 2  # fetched once more before giving up
        assert cache.block_map(e.hash) is None and cache.usage().bytes == 0
        # the blocks around it are fine
        await transfer.download_ranges(node.id, node.version, e.hash, e.size, [(0, 1), (2 * BLOCK, 2 * BLOCK + 1)],
                                       chunk_cache=cache)
        assert cache.read_range(e.hash, 2 * BLOCK, 10) == data[2 * BLOCK:2 * BLOCK + 10]
    finally:
        server.blob_put(e.hash, data)
