"""Bounds the local chunk files by size, evicting least recently used ones that nothing has pinned."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import apsw

from cache.blocks import BlockMap, block_range
from cache.chunkstore import ChunkStore
from cache.index import Index

__all__ = [
    "DEFAULT_LIMIT",
    "CacheStatistics",
    "CacheUsage",
    "ChunkCache",
    "EvictStats",
    "ReconcileStats",
]

DEFAULT_LIMIT = 10 * 2**30

# LRU touches are kept in memory and written in one transaction per this many, so a read costs no
# SQLite write; losing them in a crash only makes the LRU order slightly stale.
_TOUCH_BATCH = 1024

# Eviction commits per this many victims so that readers and writers are not held up for long.
_EVICT_BATCH = 64

_UNPINNED = "NOT EXISTS (SELECT 1 FROM chunk_pins p WHERE p.hash = c.hash)"
_PINNED = "EXISTS (SELECT 1 FROM chunk_pins p WHERE p.hash = c.hash)"


@dataclass(frozen=True)
class CacheUsage:
    """How much the cache holds against its limit."""

    bytes: int
    chunks: int
    pinned_bytes: int
    limit: int


@dataclass(frozen=True)
class EvictStats:
    """What one evict() call removed and what it left."""

    evicted_chunks: int
    evicted_bytes: int
    remaining_bytes: int
    limit: int

    @property
    def over_limit(self) -> bool:
        """Pinned chunks alone can keep the cache above its limit; the caller may want to say so."""
        return self.remaining_bytes > self.limit


@dataclass(frozen=True)
class ReconcileStats:
    """What reconcile() had to repair between the chunk files and the index."""

    checked_files: int
    removed_files: int
    dropped_rows: int
    corrupt_chunks: int


@dataclass(frozen=True)
class CacheStatistics:
    """A snapshot for `drive status`; counters are since this ChunkCache was opened."""

    bytes: int
    chunks: int
    pinned_bytes: int
    pinned_chunks: int
    limit: int
    hits: int
    misses: int
    lost_chunks: int
    evicted_chunks: int
    evicted_bytes: int


@dataclass
class _Counters:
    hits: int = 0
    misses: int = 0
    lost_chunks: int = 0
    evicted_chunks: int = 0
    evicted_bytes: int = 0


class ChunkCache:
    """Chunk files (ChunkStore) plus their rows in the index (Index): sizes, LRU clock and pins.

    Safe to call from several threads: index writes go through Index.transaction() (which holds the
    index lock); reads hash outside it, put() holds it while it hashes and writes one chunk.
    The Index is the caller's; close() does not close it.
    """

    def __init__(
        self, cache_dir: str | os.PathLike[str], index: Index, limit: int = DEFAULT_LIMIT
    ) -> None:
        self.store = ChunkStore(cache_dir)
        self.index = index
        self.limit = limit
        self._touch_lock = threading.Lock()
        self._pending_touches: dict[str, int] = {}
        self._counters = _Counters()
        # The LRU clock continues from the index so that order survives a restart.
        self._clock = index.conn.execute(
            "SELECT MAX((SELECT COALESCE(MAX(last_access), 0) FROM cached_chunks),"
            " (SELECT COALESCE(MAX(last_access), 0) FROM partial_chunks))").get

    def put(self, hash: str, data: bytes, *, durable: bool = False, verified: bool = False) -> None:
        """Store a chunk (ValueError if `data` does not hash to `hash`) and count it as just used.

        durable=True fsyncs the file: use it when the chunk is the only copy of not-yet-uploaded data.
        verified=True skips the hash check: only for bytes the caller has just checked against `hash`.
        """
        with self.index.transaction() as conn:
            self.store.put(hash, data, durable=durable, verified=verified)
            self._record(conn, hash, len(data))

    def store_file(self, hash: str, data: bytes | bytearray, *, verified: bool = False) -> None:
        """The file half of put(): writes the chunk file and touches no index, so it may run in a worker
        thread while the index is in use elsewhere (an apsw connection refuses to be used from two
        threads at once). Follow it with record() on the thread that owns the index."""
        self.store.put(hash, data, verified=verified)

    def record(self, hash: str, size: int) -> None:
        """The index half of put(): list a chunk file that store_file() wrote, as just used."""
        with self.index.transaction() as conn:
            self._record(conn, hash, size)

    def _record(self, conn: apsw.Connection, hash: str, size: int) -> None:
        conn.execute(
            "INSERT INTO cached_chunks(hash, size, last_access) VALUES (?, ?, ?)"
            " ON CONFLICT(hash) DO UPDATE SET size = excluded.size, last_access = excluded.last_access",
            (hash, size, self._tick()),
        )
        # The whole chunk replaces any partial copy (or is that copy, promoted).
        conn.execute("DELETE FROM partial_chunks WHERE hash = ?", (hash,))
        if conn.changes():
            self.store.delete_partial(hash)

    # ---- partial chunks (some blocks, fetched by byte range) ------------------------------------------

    def block_map(self, hash: str) -> BlockMap | None:
        """Which blocks of a partial chunk are held (None: no partial copy)."""
        # Under the index lock: read_range() asks this from any thread, and apsw refuses a connection
        # used by two threads at once (ThreadingViolationError).
        with self.index.transaction() as conn:
            row = conn.execute(
                "SELECT size, block_size, digests, present FROM partial_chunks WHERE hash = ?", (hash,)
            ).fetchone()
        return None if row is None else BlockMap(hash, row[0], row[1], bytes(row[2]), bytes(row[3]))

    def store_blocks(self, bmap: BlockMap, first: int, data: bytes | memoryview) -> None:
        """The file half of record_blocks(): write verified bytes of blocks first, first + 1, ... into the
        chunk's partial file. Touches no index, so it may run in a worker thread."""
        self.store.write_partial(bmap.hash, bmap.size, bmap.span(first)[0], data)

    def record_blocks(self, bmap: BlockMap, blocks: range) -> BlockMap | None:
        """The index half: mark blocks that store_blocks() wrote as present, as just used. Returns the
        chunk's map (complete: promote_blocks() next), or None when the whole chunk is cached already."""
        with self.index.transaction() as conn:
            if conn.execute("SELECT 1 FROM cached_chunks WHERE hash = ?", (bmap.hash,)).get is not None:
                # A whole fetch of the chunk was recorded while these blocks were on their way: the file
                # they were just written to is no one's now (store_blocks() always precedes this call).
                self.store.delete_partial(bmap.hash)
                return None
            held = self.block_map(bmap.hash)
            if held is None or (held.size, held.block_size, held.digests) != (bmap.size, bmap.block_size,
                                                                              bmap.digests):
                held = dataclasses.replace(bmap, present=bytes(len(bmap.present)))
            held = held.with_blocks(blocks)
            conn.execute(
                "INSERT INTO partial_chunks(hash, size, block_size, digests, present, bytes, last_access)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(hash) DO UPDATE SET size = excluded.size,"
                " block_size = excluded.block_size, digests = excluded.digests, present = excluded.present,"
                " bytes = excluded.bytes, last_access = excluded.last_access",
                (held.hash, held.size, held.block_size, held.digests, held.present, held.present_bytes,
                 self._tick()),
            )
        return held

    def promote_file(self, hash: str) -> bool:
        """The file half of promoting a complete partial chunk: check it against the chunk's hash and make
        it the chunk's file (thread-safe). Follow it with record() if True, drop_blocks() if False."""
        return self.store.promote_partial(hash)

    def drop_blocks(self, hash: str, blocks: Iterable[int] | None = None) -> None:
        """Forget some blocks of a partial chunk (found bad), or all of it with its file."""
        with self.index.transaction() as conn:
            held = self.block_map(hash)
            if held is None:
                return
            if blocks is not None:
                held = held.with_blocks(blocks, present=False)
            if blocks is None or not held.present_bytes:
                conn.execute("DELETE FROM partial_chunks WHERE hash = ?", (hash,))
                self.store.delete_partial(hash)
            else:
                conn.execute("UPDATE partial_chunks SET present = ?, bytes = ? WHERE hash = ?",
                             (held.present, held.present_bytes, hash))

    def _read_blocks(self, hash: str, offset: int, length: int) -> bytes | None:
        """Bytes of a partial chunk if every block under them is held and still matches its digest."""
        held = self.block_map(hash)
        if held is None:
            return None
        blocks = block_range(offset, length, held.size, held.block_size)
        if not blocks or held.missing(blocks):
            return None
        start, _ = held.span(blocks[0])
        data = self.store.read_partial(hash, start, held.span(blocks[-1])[1] - start)
        bad = list(blocks) if data is None else held.verify(blocks, data)
        if bad:
            self.drop_blocks(hash, bad)
            return None
        assert data is not None
        return data[offset - start:offset - start + length]

    def get(self, hash: str) -> bytes | None:
        """The verified bytes of a chunk, or None if it must be fetched (missing or found corrupt)."""
        data = self.store.get(hash)
        self._after_read(hash, data is not None)
        return data

    def read_range(self, hash: str, offset: int, length: int) -> bytes | None:
        """Up to `length` verified bytes of a chunk from `offset` (from its file, or from the blocks of a
        partial copy), or None if it must be fetched."""
        data = self.store.read_range(hash, offset, length)
        if data is None:
            data = self._read_blocks(hash, offset, length)
            if data is not None:
                self._touch(hash)
                return data
        self._after_read(hash, data is not None)
        return data

    def __contains__(self, hash: str) -> bool:
        """Whether the index lists the chunk (its file is checked only when read)."""
        return self.index.conn.execute("SELECT 1 FROM cached_chunks WHERE hash = ?", (hash,)).get is not None

    def pin(self, hashes: Iterable[str], owner: str) -> None:
        """Keep these chunks from eviction until `owner` lets go (pins may precede the chunk's arrival)."""
        with self.index.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO chunk_pins(hash, owner) VALUES (?, ?)",
                ((hash, owner) for hash in hashes),
            )

    def unpin(self, hashes: Iterable[str], owner: str) -> None:
        with self.index.transaction() as conn:
            conn.executemany(
                "DELETE FROM chunk_pins WHERE hash = ? AND owner = ?", ((hash, owner) for hash in hashes)
            )

    def unpin_owner(self, owner: str) -> None:
        """Drop every pin `owner` holds, e.g. once a dirty file's upload has committed."""
        with self.index.transaction() as conn:
            conn.execute("DELETE FROM chunk_pins WHERE owner = ?", (owner,))

    def pin_owners(self, prefix: str) -> list[str]:
        """Every owner holding pins whose tag starts with `prefix`."""
        return [o for (o,) in self.index.conn.execute(
            "SELECT DISTINCT owner FROM chunk_pins WHERE owner >= ? AND owner < ?", (prefix, prefix + "\uffff"))]

    def is_pinned(self, hash: str) -> bool:
        return self.index.conn.execute("SELECT 1 FROM chunk_pins WHERE hash = ?", (hash,)).get is not None

    def evict(self, limit_bytes: int | None = None) -> EvictStats:
        """Delete least recently used unpinned chunks until the total is at most the limit.

        Pinned chunks are never deleted, even when that leaves the cache over the limit.
        """
        limit = self.limit if limit_bytes is None else limit_bytes
        self.flush()
        evicted_chunks = evicted_bytes = 0
        while True:
            with self.index.transaction() as conn:
                total = self._bytes(conn)
                if total <= limit:
                    break
                victims = self._evict_batch(conn, total - limit)
            if not victims:
                break
            evicted_chunks += len(victims)
            evicted_bytes += sum(victims)
        with self._touch_lock:
            self._counters.evicted_chunks += evicted_chunks
            self._counters.evicted_bytes += evicted_bytes
        return EvictStats(evicted_chunks, evicted_bytes, remaining_bytes=total, limit=limit)

    def _evict_batch(self, conn: apsw.Connection, excess: int) -> list[int]:
        # Runs inside a transaction: the pin check and the deletes see the same pins.
        rows = conn.execute(
            f"SELECT hash, size, 0, last_access FROM cached_chunks c WHERE {_UNPINNED}"
            f" UNION ALL SELECT hash, bytes, 1, last_access FROM partial_chunks c WHERE {_UNPINNED}"
            " ORDER BY last_access LIMIT ?",
            (_EVICT_BATCH,),
        ).fetchall()
        sizes = []
        for hash, size, partial, _ in rows:
            if sum(sizes) >= excess:
                break
            # File first: a crash in between leaves a row without a file, which reads treat as a miss.
            if partial:
                self.store.delete_partial(hash)
                conn.execute("DELETE FROM partial_chunks WHERE hash = ?", (hash,))
            else:
                self.store.delete(hash)
                conn.execute("DELETE FROM cached_chunks WHERE hash = ?", (hash,))
            sizes.append(size)
        return sizes

    def usage(self) -> CacheUsage:
        total, chunks, pinned_bytes, _pinned_chunks = self._totals()
        return CacheUsage(bytes=total, chunks=chunks, pinned_bytes=pinned_bytes, limit=self.limit)

    def statistics(self) -> CacheStatistics:
        total, chunks, pinned_bytes, pinned_chunks = self._totals()
        with self._touch_lock:
            counters = _Counters(**vars(self._counters))
        return CacheStatistics(
            bytes=total,
            chunks=chunks,
            pinned_bytes=pinned_bytes,
            pinned_chunks=pinned_chunks,
            limit=self.limit,
            hits=counters.hits,
            misses=counters.misses,
            lost_chunks=counters.lost_chunks,
            evicted_chunks=counters.evicted_chunks,
            evicted_bytes=counters.evicted_bytes,
        )

    @staticmethod
    def _bytes(conn: apsw.Connection) -> int:
        """Bytes held: whole chunks plus the blocks of partial ones."""
        return conn.execute("SELECT (SELECT COALESCE(SUM(size), 0) FROM cached_chunks)"
                            " + (SELECT COALESCE(SUM(bytes), 0) FROM partial_chunks)").get

    def _totals(self) -> tuple[int, int, int, int]:
        conn = self.index.conn
        total = self._bytes(conn)
        chunks = conn.execute("SELECT (SELECT COUNT(*) FROM cached_chunks) + (SELECT COUNT(*) FROM partial_chunks)").get
        pinned_bytes, pinned_chunks = conn.execute(
            f"SELECT COALESCE(SUM(size), 0), COUNT(*) FROM cached_chunks c WHERE {_PINNED}"
        ).fetchone()
        return total, chunks, pinned_bytes, pinned_chunks

    def reconcile(self, deep: bool = False) -> ReconcileStats:
        """Make the index and the chunk files agree again, e.g. at mount time after a crash.

        Removes temp files and chunk files the index does not list, drops rows whose file is gone or
        has the wrong size, and with `deep` also hashes every file (slow: reads the whole cache).
        Holds the index lock throughout, so run it before serving reads.
        """
        self.flush()
        checked = removed = corrupt = 0
        with self.index.transaction() as conn:
            sizes = dict(conn.execute("SELECT hash, size FROM cached_chunks").fetchall())
            partial_sizes = dict(conn.execute("SELECT hash, size FROM partial_chunks").fetchall())
            present = set()
            partial_present = set()
            for entry in self.store.scan():
                checked += 1
                partial = self.store.partial_of(entry)
                if partial is not None:
                    # A partial file is kept if listed, of the chunk's length, and not superseded by the
                    # whole chunk (a crash between writing that and dropping this).
                    if partial_sizes.get(partial) == entry.size and partial not in sizes:
                        partial_present.add(partial)
                    else:
                        entry.path.unlink(missing_ok=True)
                        removed += 1
                    continue
                if not self.store.is_well_placed(entry) or entry.name not in sizes:
                    entry.path.unlink(missing_ok=True)
                    removed += 1
                elif entry.size != sizes[entry.name] or (deep and self.store.get(entry.name) is None):
                    self.store.delete(entry.name)
                    corrupt += 1
                else:
                    present.add(entry.name)
            lost = [hash for hash in sizes if hash not in present]
            conn.executemany("DELETE FROM cached_chunks WHERE hash = ?", ((hash,) for hash in lost))
            lost_partial = [hash for hash in partial_sizes if hash not in partial_present]
            conn.executemany("DELETE FROM partial_chunks WHERE hash = ?", ((hash,) for hash in lost_partial))
        return ReconcileStats(
            checked_files=checked, removed_files=removed, dropped_rows=len(lost) + len(lost_partial),
            corrupt_chunks=corrupt
        )

    def flush(self) -> None:
        """Write the LRU touches kept in memory to the index."""
        with self._touch_lock:
            pending, self._pending_touches = self._pending_touches, {}
        if not pending:
            return
        with self.index.transaction() as conn:
            for table in ("cached_chunks", "partial_chunks"):
                conn.executemany(
                    f"UPDATE {table} SET last_access = MAX(last_access, ?) WHERE hash = ?",
                    ((clock, hash) for hash, clock in pending.items()),
                )

    def close(self) -> None:
        """Flush pending LRU touches; the Index stays open."""
        self.flush()

    def _tick(self) -> int:
        with self._touch_lock:
            self._clock += 1
            return self._clock

    def _after_read(self, hash: str, hit: bool) -> None:
        if hit:
            self._touch(hash)
        else:
            self._forget_if_gone(hash)

    def _touch(self, hash: str) -> None:
        with self._touch_lock:
            self._clock += 1
            self._pending_touches[hash] = self._clock
            self._counters.hits += 1
            full = len(self._pending_touches) >= _TOUCH_BATCH
        # Flushed outside the touch lock: never wait for the index lock while holding it.
        if full:
            self.flush()

    def _forget_if_gone(self, hash: str) -> None:
        listed = False
        with self.index.transaction() as conn:
            # A put() may have brought the chunk back since the failed read; keep its row then.
            if not self.store.exists(hash):
                conn.execute("DELETE FROM cached_chunks WHERE hash = ?", (hash,))
                listed = conn.changes() > 0
        with self._touch_lock:
            self._counters.misses += 1
            self._counters.lost_chunks += int(listed)
            self._pending_touches.pop(hash, None)
