"""Keeps the cache under its limit: first clean local copies of whole files, then least recently used chunks.

Only data that is also on the server is ever dropped: a dirty file's local copy, or one that is open,
is never touched, nor one `drive pin` covers, and pinned chunks are never evicted (ChunkCache enforces that).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from cache.chunkcache import ChunkCache
from cache.tree import Tree

log = logging.getLogger("drivefs.evictor")


@dataclass(frozen=True)
class EvictReport:
    """What one pass freed."""

    files_dropped: int
    file_bytes: int
    chunks_evicted: int
    chunk_bytes: int


class Evictor:
    """One pass at a time: `run_once()`; the daemon calls it periodically."""

    def __init__(self, tree: Tree, chunks: ChunkCache, limit: int, has_handles: Callable[[int], bool],
                 pinned: Callable[[int], bool] = lambda inode: False) -> None:
        self.tree = tree
        self.chunks = chunks
        self.limit = limit
        self.has_handles = has_handles
        self.pinned = pinned

    def local_bytes(self) -> int:
        total = 0
        for e in self.tree.local_files():
            try:
                total += os.stat(self.tree.data_path(e.inode)).st_blocks * 512
            except FileNotFoundError:
                pass
        return total

    def run_once(self) -> EvictReport:
        candidates = []
        local_total = 0
        for e in self.tree.local_files():
            try:
                st = os.stat(self.tree.data_path(e.inode))
            except FileNotFoundError:
                continue
            used = st.st_blocks * 512
            local_total += used
            if not e.dirty and e.node_id is not None and not self.has_handles(e.inode) and not self.pinned(e.inode):
                candidates.append((st.st_atime_ns, used, e))
        over = local_total + self.chunks.usage().bytes - self.limit
        dropped = freed = 0
        for _, used, e in sorted(candidates, key=lambda c: c[0]):
            if over <= 0:
                break
            # Committed and closed: the server has these bytes, reads fall back to chunks.
            self.tree.update(e.inode, local_data=False)
            self.tree.data_path(e.inode).unlink(missing_ok=True)
            over -= used
            freed += used
            dropped += 1
        stats = self.chunks.evict(max(self.limit - (local_total - freed), 0))
        if dropped or stats.evicted_chunks:
            log.info("cache over its limit: dropped %d local copies (%d bytes) and %d chunks (%d bytes)",
                     dropped, freed, stats.evicted_chunks, stats.evicted_bytes)
        return EvictReport(dropped, freed, stats.evicted_chunks, stats.evicted_bytes)
