"""Filling the holes of sparse local copies: the chunks fetched (or taken from the chunk cache, which the
fetch looks in first), written in, synced, and only then forgotten as holes, one filler at a time per
copy."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from weakref import WeakKeyDictionary

import trio

from cache.holes import Hole, HoleStore, SparseFile

from .reader import Fetch, fetch_into

log = logging.getLogger("drivefs.sparse")

# A file at least this big is given a sparse local copy when it is first written (smaller ones are
# fetched whole: a few chunks, one round of requests, and no holes to track).
SPARSE_MIN = 4 * 2**20


class Filler:
    """Makes ranges of sparse local copies real.

    Whoever changes a sparse copy (a write, a truncate, a new mtime) does so under `lock(f)`, and a fill
    happens only under it too: a fill writes chunk bytes over the holes and then puts the copy's mtime
    back, which must not undo a change made in between."""

    def __init__(self, holes: HoleStore, fetch: Fetch) -> None:
        self.holes = holes
        self.fetch = fetch
        self._locks: WeakKeyDictionary[SparseFile, trio.Lock] = WeakKeyDictionary()
        self.filled_bytes = 0

    @asynccontextmanager
    async def lock(self, f: SparseFile) -> AsyncIterator[None]:
        lock = self._locks.get(f)
        if lock is None:
            lock = self._locks[f] = trio.Lock()
        async with lock:
            yield

    async def fill(self, f: SparseFile, fd: int, start: int, end: int) -> None:
        """Bytes [start, end) of the copy open at `fd` (which `f` describes) hold the file's content from
        here on, durably. The caller holds lock(f). Raises remote.errors.RemoteError when a chunk cannot be
        fetched, OSError when the copy cannot be written."""
        holes = f.within(start, end)
        if not holes:
            return
        st = os.fstat(fd)
        try:
            for (node_id, version), group in _by_source(holes):
                await fetch_into(self.fetch, fd, node_id, version, ((h.hash, h.size, h.offset) for h in group))
        finally:  # the copy keeps the mtime its writes gave it: filling is not a change of the file
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        await trio.to_thread.run_sync(os.fsync, fd)
        self.holes.filled(f, holes)  # only now: a crash before this fills them again, never reads zeros
        self.filled_bytes += sum(h.size for h in holes)
        log.debug("filled %d chunks of inode %d", len(holes), f.inode)


def _by_source(holes: list[Hole]) -> Iterator[tuple[tuple[int, int], list[Hole]]]:
    groups: dict[tuple[int, int], list[Hole]] = {}
    for h in holes:
        groups.setdefault((h.node_id, h.version), []).append(h)
    return iter(groups.items())
