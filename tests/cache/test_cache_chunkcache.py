"""ChunkCache: index and files agree, corrupt chunks are dropped, eviction is LRU and respects pins."""

import os
import random
import threading

import pytest

from cache.chunker import hash_bytes
from cache.chunkcache import DEFAULT_LIMIT, CacheUsage, ChunkCache
from cache.chunkstore import TEMP_MARKER
from cache.index import Index

KiB = 1024
SIZE = 100 * KiB


def make_chunk(seed: int, size: int = SIZE) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return hash_bytes(data), data


class Opened:
    """A cache over tmp_path that a test can close and reopen like a remount."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.index = None
        self.cache = None
        self.reopen()

    def reopen(self) -> ChunkCache:
        if self.cache is not None:
            self.cache.close()
            self.index.close()
        self.index = Index(self.dir / "index.sqlite")
        self.cache = ChunkCache(self.dir, self.index)
        return self.cache


@pytest.fixture
def opened(tmp_path):
    handle = Opened(tmp_path)
    yield handle
    handle.cache.close()
    handle.index.close()


def fill(cache: ChunkCache, count: int) -> list[tuple[str, bytes]]:
    chunks = [make_chunk(seed) for seed in range(count)]
    for hash, data in chunks:
        cache.put(hash, data)
    return chunks


def test_put_get_round_trip(opened):
    cache = opened.cache
    hash, data = make_chunk(1)
    assert cache.get(hash) is None
    cache.put(hash, data)
    assert hash in cache
    assert cache.get(hash) == data
    assert cache.read_range(hash, 10, 20) == data[10:30]
    assert cache.usage() == CacheUsage(bytes=SIZE, chunks=1, pinned_bytes=0, limit=DEFAULT_LIMIT)
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.chunks, stats.bytes) == (2, 1, 1, SIZE)


def test_put_with_wrong_hash_stores_nothing(opened):
    cache = opened.cache
    hash, data = make_chunk(1)
    with pytest.raises(ValueError):
        cache.put(hash, data[:-1])
    assert hash not in cache
    assert cache.usage().chunks == 0


@pytest.mark.parametrize("read", ["get", "read_range"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_or_missing_chunk_is_dropped_from_disk_and_index(opened, read, damage):
    cache = opened.cache
    (hash, data), (other, _other_data) = fill(cache, 2)
    path = cache.store.path(hash)
    if damage == "flip":
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 1
        path.write_bytes(raw)
    elif damage == "truncate":
        os.truncate(path, 10)
    else:
        path.unlink()

    result = cache.get(hash) if read == "get" else cache.read_range(hash, 0, 10)

    assert result is None
    assert hash not in cache
    assert not path.exists()
    assert other in cache
    assert cache.usage().bytes == SIZE
    assert cache.statistics().lost_chunks == 1
    # Once refetched, it is served again.
    cache.put(hash, data)
    assert cache.get(hash) == data


def test_eviction_keeps_total_under_limit_in_lru_order(opened):
    cache = opened.cache
    chunks = fill(cache, 10)
    hashes = [hash for hash, _data in chunks]

    stats = cache.evict(450 * KiB)

    assert cache.usage().bytes <= 450 * KiB
    assert stats.remaining_bytes == cache.usage().bytes
    assert stats.evicted_chunks == 6
    assert stats.evicted_bytes == 6 * SIZE
    assert not stats.over_limit
    assert [hash in cache for hash in hashes] == [False] * 6 + [True] * 4
    for hash in hashes[:6]:
        assert not cache.store.exists(hash)
    assert cache.statistics().evicted_chunks == 6


def test_evict_under_the_limit_deletes_nothing(opened):
    cache = opened.cache
    fill(cache, 3)
    stats = cache.evict()
    assert stats.evicted_chunks == 0
    assert cache.usage().chunks == 3


def test_recently_read_chunks_survive_eviction(opened):
    cache = opened.cache
    hashes = [hash for hash, _data in fill(cache, 6)]
    # The oldest two are read again (one whole, one by range): they become the most recent.
    assert cache.get(hashes[0]) is not None
    assert cache.read_range(hashes[1], 0, 1) is not None

    cache.evict(2 * SIZE)

    assert {hash for hash in hashes if hash in cache} == {hashes[0], hashes[1]}


def test_lru_order_survives_reopening(opened):
    hashes = [hash for hash, _data in fill(opened.cache, 4)]
    assert opened.cache.get(hashes[0]) is not None

    cache = opened.reopen()
    newer_hash, newer_data = make_chunk(99)
    cache.put(newer_hash, newer_data)
    cache.evict(2 * SIZE)

    assert {hash for hash in hashes + [newer_hash] if hash in cache} == {hashes[0], newer_hash}


def test_pinned_chunks_are_never_evicted(opened):
    cache = opened.cache
    hashes = [hash for hash, _data in fill(cache, 10)]
    pinned = hashes[:3]
    cache.pin(pinned[:2], "file:1")
    cache.pin(pinned[1:], "pin:node-9")
    assert cache.usage().pinned_bytes == 3 * SIZE

    stats = cache.evict(250 * KiB)

    # Pins win over the limit: everything else goes, the pinned three stay though 300 KiB > 250 KiB.
    assert {hash for hash in hashes if hash in cache} == set(pinned)
    assert all(cache.get(hash) is not None for hash in pinned)
    assert stats.over_limit
    assert stats.remaining_bytes == 3 * SIZE

    cache.unpin_owner("file:1")
    assert not cache.is_pinned(pinned[0])
    assert cache.is_pinned(pinned[1])  # still held by the other owner
    cache.evict(0)
    assert {hash for hash in hashes if hash in cache} == set(pinned[1:])

    cache.unpin(pinned[1:], "pin:node-9")
    cache.evict(0)
    assert cache.usage() == CacheUsage(bytes=0, chunks=0, pinned_bytes=0, limit=DEFAULT_LIMIT)


def test_a_pin_may_precede_the_chunk(opened):
    cache = opened.cache
    hash, data = make_chunk(5)
    cache.pin([hash], "pin:node-1")
    cache.put(hash, data)
    cache.evict(0)
    assert cache.get(hash) == data


def test_reads_do_not_write_the_index_until_flushed(opened):
    cache = opened.cache
    hashes = [hash for hash, _data in fill(cache, 3)]
    conn = opened.index.conn
    before = conn.execute("SELECT last_access FROM cached_chunks WHERE hash = ?", (hashes[0],)).get
    writes = conn.total_changes()

    for _ in range(10):
        cache.get(hashes[0])

    assert conn.total_changes() == writes
    cache.flush()
    after = conn.execute("SELECT last_access FROM cached_chunks WHERE hash = ?", (hashes[0],)).get
    assert after > before


def test_state_survives_reopening(opened):
    chunks = fill(opened.cache, 3)
    opened.cache.pin([chunks[0][0]], "file:3")

    cache = opened.reopen()

    assert cache.usage() == CacheUsage(bytes=3 * SIZE, chunks=3, pinned_bytes=SIZE, limit=DEFAULT_LIMIT)
    for hash, data in chunks:
        assert cache.get(hash) == data


def test_reconcile_repairs_index_and_files(opened):
    cache = opened.cache
    chunks = fill(cache, 5)
    (gone, _), (shrunk, _), (flipped, _), (kept, kept_data), (_fine, _) = chunks
    cache.store.path(gone).unlink()
    os.truncate(cache.store.path(shrunk), 100)
    raw = bytearray(cache.store.path(flipped).read_bytes())
    raw[0] ^= 1
    cache.store.path(flipped).write_bytes(raw)
    # A chunk file written just before a crash, before its row was committed, and a temp file.
    orphan, orphan_data = make_chunk(50)
    cache.store.put(orphan, orphan_data)
    temp = cache.store.path(kept).with_name(kept + TEMP_MARKER + "x1")
    temp.write_bytes(b"half")
    (cache.store.root / "junk").write_bytes(b"?")

    stats = cache.reconcile()

    assert stats.dropped_rows == 2  # gone, shrunk
    assert stats.corrupt_chunks == 1  # shrunk
    assert stats.removed_files == 3  # orphan, temp, junk
    assert gone not in cache and shrunk not in cache
    assert not cache.store.exists(orphan) and not temp.exists()
    assert flipped in cache  # same size: only a deep check (or a read) notices

    deep = cache.reconcile(deep=True)

    assert (deep.corrupt_chunks, deep.dropped_rows, deep.removed_files) == (1, 1, 0)
    assert flipped not in cache
    assert cache.get(kept) == kept_data
    assert cache.usage().chunks == 2
    assert sorted(p.name for p in cache.store.root.rglob("*") if p.is_file()) == sorted(
        [kept, chunks[4][0]]
    )


def test_reconcile_after_a_file_vanished_behind_the_cache(opened):
    cache = opened.cache
    (hash, _data), (other, other_data) = fill(cache, 2)
    cache.store.path(hash).unlink()
    cache = opened.reopen()

    stats = cache.reconcile()

    assert stats.dropped_rows == 1
    assert hash not in cache
    assert cache.usage().bytes == SIZE
    assert cache.get(other) == other_data


def test_concurrent_readers_writers_and_eviction_stay_consistent(opened):
    cache = opened.cache
    chunks = [make_chunk(seed, size=20 * KiB) for seed in range(40)]
    by_hash = dict(chunks)
    errors = []

    def reader_writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(300):
                hash, data = rng.choice(chunks)
                got = cache.get(hash) if rng.random() < 0.5 else cache.read_range(hash, 100, 50)
                if got is None:
                    cache.put(hash, data)
                elif got not in (data, data[100:150]):
                    errors.append(f"wrong bytes for {hash}")
        except Exception as error:  # surfaced in the main thread below
            errors.append(repr(error))

    def evictor() -> None:
        try:
            for _ in range(100):
                cache.evict(200 * KiB)
        except Exception as error:
            errors.append(repr(error))

    threads = [threading.Thread(target=reader_writer, args=(seed,)) for seed in range(4)]
    threads.append(threading.Thread(target=evictor))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    stats = cache.reconcile(deep=True)
    assert (stats.removed_files, stats.dropped_rows, stats.corrupt_chunks) == (0, 0, 0)
    for hash in by_hash:
        if hash in cache:
            assert cache.get(hash) == by_hash[hash]
