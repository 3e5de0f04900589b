"""Bounds the local chunk files by size, evicting least recently used ones that nothing has pinned."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import apsw

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
        self._clock = index.conn.execute("SELECT COALESCE(MAX(last_access), 0) FROM cached_chunks").get

    def put(self, hash: str, data: bytes, *, durable: bool = False, verified: bool = False) -> None:
        """Store a chunk (ValueError if `data` does not hash to `hash`) and count it as just used.

        durable=True fsyncs the file: use it when the chunk is the only copy of not-yet-uploaded data.
        verified=True skips the hash check: only for bytes the caller has just checked against `hash`.
        """
        with self.index.transaction() as conn:
            self.store.put(hash, data, durable=durable, verified=verified)
            self._record(conn, hash, len(data))

    def store_file(self, hash: str, data: bytes, *, verified: bool = False) -> None:
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

    def get(self, hash: str) -> bytes | None:
        """The verified bytes of a chunk, or None if it must be fetched (missing or found corrupt)."""
        data = self.store.get(hash)
        self._after_read(hash, data is not None)
        return data

    def read_range(self, hash: str, offset: int, length: int) -> bytes | None:
        """Up to `length` verified bytes of a chunk from `offset`, or None if it must be fetched."""
        data = self.store.read_range(hash, offset, length)
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
                total = conn.execute("SELECT COALESCE(SUM(size), 0) FROM cached_chunks").get
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
            f"SELECT hash, size FROM cached_chunks c WHERE {_UNPINNED} ORDER BY last_access LIMIT ?",
            (_EVICT_BATCH,),
        ).fetchall()
        sizes = []
        for hash, size in rows:
            if sum(sizes) >= excess:
                break
            # File first: a crash in between leaves a row without a file, which reads treat as a miss.
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

    def _totals(self) -> tuple[int, int, int, int]:
        conn = self.index.conn
        total, chunks = conn.execute("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM cached_chunks").fetchone()
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
            present = set()
            for entry in self.store.scan():
                checked += 1
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
        return ReconcileStats(
            checked_files=checked, removed_files=removed, dropped_rows=len(lost), corrupt_chunks=corrupt
        )

    def flush(self) -> None:
        """Write the LRU touches kept in memory to the index."""
        with self._touch_lock:
            pending, self._pending_touches = self._pending_touches, {}
        if not pending:
            return
        with self.index.transaction() as conn:
            conn.executemany(
                "UPDATE cached_chunks SET last_access = MAX(last_access, ?) WHERE hash = ?",
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
