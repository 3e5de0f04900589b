"""Partial chunks: blocks fetched by range are kept, counted, evicted and promoted like chunks, and
survive crashes and lost bytes as misses, never as wrong data."""

import hashlib
import random

import pytest

from cache.blocks import BlockMap, block_range, runs
from cache.chunkcache import ChunkCache
from cache.chunker import hash_bytes
from cache.index import Index

KiB = 1024
BLOCK = 64 * KiB
SIZE = 3 * BLOCK + 1000  # three whole blocks and a short last one


def make_chunk(seed: int, size: int = SIZE) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return hash_bytes(data), data


def empty_map(h: str, data: bytes) -> BlockMap:
    hexes = [hashlib.sha256(data[i:i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)]
    return BlockMap.empty(h, len(data), BLOCK, hexes)


def add_blocks(cache: ChunkCache, bmap: BlockMap, data: bytes, blocks: range) -> BlockMap | None:
    start, end = bmap.span(blocks[0])[0], bmap.span(blocks[-1])[1]
    cache.store_blocks(bmap, blocks[0], data[start:end])
    return cache.record_blocks(bmap, blocks)


@pytest.fixture
def index(tmp_path):
    ix = Index(tmp_path / "index.sqlite")
    yield ix
    ix.close()


@pytest.fixture
def cache(tmp_path, index):
    c = ChunkCache(tmp_path, index)
    yield c
    c.close()


def test_block_math():
    assert block_range(0, 1, SIZE, BLOCK) == range(0, 1)
    assert block_range(BLOCK - 1, 2, SIZE, BLOCK) == range(0, 2)
    assert block_range(3 * BLOCK + 10, 10 * BLOCK, SIZE, BLOCK) == range(3, 4)
    assert block_range(SIZE, 5, SIZE, BLOCK) == range(0)
    assert list(runs([5, 1, 2, 3, 7, 2])) == [range(1, 4), range(5, 6), range(7, 8)]
    with pytest.raises(ValueError):
        BlockMap.empty("h", SIZE, BLOCK, ["00" * 32] * 3)  # one digest short


def test_blocks_are_served_counted_and_sparse(cache):
    h, data = make_chunk(1)
    bmap = add_blocks(cache, empty_map(h, data), data, range(1, 2))
    assert bmap is not None and not bmap.complete and bmap.present_bytes == BLOCK
    assert cache.read_range(h, BLOCK + 100, 4 * KiB) == data[BLOCK + 100:BLOCK + 100 + 4 * KiB]
    assert cache.read_range(h, 100, 10) is None  # block 0 is not held
    assert cache.read_range(h, BLOCK - 10, 20) is None  # straddles a missing block
    assert h not in cache  # not a whole chunk
    assert cache.usage().bytes == BLOCK  # what is held, not the chunk's size
    path = cache.store.partial_path(h)
    assert path.stat().st_size == SIZE and path.stat().st_blocks * 512 <= 2 * BLOCK  # sparse on disk
    # the short last block
    add_blocks(cache, bmap, data, range(3, 4))
    assert cache.read_range(h, 3 * BLOCK, 5000) == data[3 * BLOCK:]
    assert cache.usage().bytes == BLOCK + 1000


def test_all_blocks_promote_to_the_whole_chunk(cache):
    h, data = make_chunk(2)
    bmap = empty_map(h, data)
    add_blocks(cache, bmap, data, range(0, 2))
    done = add_blocks(cache, bmap, data, range(2, 4))
    assert done is not None and done.complete
    assert cache.promote_file(h)
    cache.record(h, SIZE)
    assert h in cache and cache.block_map(h) is None
    assert not cache.store.partial_path(h).exists()
    assert cache.get(h) == data and cache.usage().bytes == SIZE
    # blocks arriving after the whole chunk are not kept twice
    assert add_blocks(cache, bmap, data, range(0, 1)) is None and cache.block_map(h) is None


def test_a_whole_fetch_replaces_the_partial_copy(cache):
    h, data = make_chunk(3)
    add_blocks(cache, empty_map(h, data), data, range(2, 3))
    cache.put(h, data, verified=True)
    assert cache.block_map(h) is None and not cache.store.partial_path(h).exists()
    assert cache.usage().bytes == SIZE and cache.read_range(h, 0, 10) == data[:10]


def test_blocks_that_land_around_a_whole_fetch_leave_no_partial_file(cache):
    """A range fetch (kernel read-ahead at a random offset) can still be writing its blocks when a
    sequential reader's whole fetch of the same chunk is recorded: the blocks it writes after that, or
    before its first row exists, must not leave a .blocks file behind that nothing would ever remove."""
    h, data = make_chunk(5)
    bmap = empty_map(h, data)
    # the blocks' file is written, then the whole chunk is recorded before the blocks' row
    cache.store_blocks(bmap, 1, data[BLOCK:2 * BLOCK])
    cache.put(h, data, verified=True)
    assert cache.record_blocks(bmap, range(1, 2)) is None
    assert not cache.store.partial_path(h).exists()
    # blocks arriving after the whole chunk
    assert add_blocks(cache, bmap, data, range(2, 3)) is None
    assert not cache.store.partial_path(h).exists()
    assert cache.block_map(h) is None and cache.usage().bytes == SIZE
    assert cache.read_range(h, 0, SIZE) == data


def test_complete_blocks_that_do_not_make_the_chunk_are_not_promoted(cache):
    h, data = make_chunk(4)
    bmap = empty_map(h, data)
    add_blocks(cache, bmap, data, range(0, 4))
    with open(cache.store.partial_path(h), "r+b") as f:  # the file changed behind the index's back
        f.seek(5)
        f.write(b"X")
    assert not cache.promote_file(h)
    cache.drop_blocks(h)
    assert cache.block_map(h) is None and h not in cache and cache.usage().bytes == 0


def test_partial_chunks_are_evicted_in_lru_order_with_whole_ones(cache):
    old_h, old = make_chunk(5)
    add_blocks(cache, empty_map(old_h, old), old, range(0, 1))
    whole_h, whole = make_chunk(6)
    cache.put(whole_h, whole)
    new_h, new = make_chunk(7)
    add_blocks(cache, empty_map(new_h, new), new, range(0, 2))
    assert cache.usage().bytes == BLOCK + SIZE + 2 * BLOCK
    stats = cache.evict(SIZE + 2 * BLOCK)  # the oldest, a partial chunk, goes first
    assert (stats.evicted_chunks, stats.evicted_bytes) == (1, BLOCK)
    assert cache.block_map(old_h) is None and not cache.store.partial_path(old_h).exists()
    cache.evict(0)
    assert cache.usage().bytes == 0 and list(cache.store.scan()) == []


def test_pinned_partial_chunks_stay(cache):
    h, data = make_chunk(8)
    add_blocks(cache, empty_map(h, data), data, range(0, 1))
    cache.pin([h], "pin:1")
    cache.evict(0)
    assert cache.read_range(h, 0, 10) == data[:10]


def test_a_block_whose_bytes_were_lost_is_a_miss_and_unmarked(cache):
    """A power cut can keep the index's bit and lose the file's bytes: the read checks and refetches."""
    h, data = make_chunk(9)
    add_blocks(cache, empty_map(h, data), data, range(0, 2))
    with open(cache.store.partial_path(h), "r+b") as f:
        f.write(bytes(100))  # block 0 zeroed, as an unflushed write after a crash
    assert cache.read_range(h, 10, 10) is None
    bmap = cache.block_map(h)
    assert bmap is not None and not bmap.has(0) and bmap.has(1)
    assert cache.usage().bytes == BLOCK
    assert cache.read_range(h, BLOCK, 10) == data[BLOCK:BLOCK + 10]  # the good block still serves
    cache.store.delete_partial(h)  # the whole file lost (cache folder damaged)
    assert cache.read_range(h, BLOCK, 10) is None and cache.block_map(h) is None


def test_reconcile_after_a_crash(tmp_path, index, cache):
    h1, d1 = make_chunk(10)
    add_blocks(cache, empty_map(h1, d1), d1, range(1, 2))  # kept
    h2, d2 = make_chunk(11)
    cache.store_blocks(empty_map(h2, d2), 0, d2[:BLOCK])  # written, never recorded: a stray file
    h3, d3 = make_chunk(12)
    add_blocks(cache, empty_map(h3, d3), d3, range(0, 1))
    cache.store.delete_partial(h3)  # listed, file gone
    h4, d4 = make_chunk(13)
    add_blocks(cache, empty_map(h4, d4), d4, range(0, 1))
    cache.store.put(h4, d4)  # crash after the whole chunk's file, before its row
    index.conn.execute("INSERT INTO cached_chunks(hash, size, last_access) VALUES (?, ?, 1)", (h4, SIZE))
    stats = cache.reconcile()
    assert stats.removed_files == 2 and stats.dropped_rows == 2  # h2's and h4's partial files; h3, h4 rows
    assert cache.read_range(h1, BLOCK, 10) == d1[BLOCK:BLOCK + 10]
    assert not cache.store.partial_path(h2).exists()
    assert cache.block_map(h3) is None and cache.block_map(h4) is None
    assert cache.get(h4) == d4
    assert cache.usage().bytes == BLOCK + SIZE
    # and the state survives a reopen (a remount)
    cache.close()
    again = ChunkCache(tmp_path, index)
    assert again.read_range(h1, BLOCK, 10) == d1[BLOCK:BLOCK + 10]
    assert again.usage().bytes == BLOCK + SIZE
