"""Reads of files whose content is on the server: only the chunks a read touches, plus read-ahead; a
read that does not follow the previous one fetches just the blocks of a chunk under it."""

from __future__ import annotations

import bisect
import errno
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio
from cachetools import LRUCache

from cache.blocks import BLOCK_BYTES, block_range
from cache.chunkcache import ChunkCache
from cache.chunker import ChunkRef
from cache.tree import Entry, Tree
from remote import errors as rerr
from remote.transfer import pwrite_all

from .errors import FsError

log = logging.getLogger("drivefs.reader")

class Fetch(Protocol):
    """fetch(node_id, version, chunks, on_chunk, nearby) downloads and verifies those (hash, size) chunks
    into the chunk cache (not with store=False), calling on_chunk(hash, bytes) with each one's verified
    bytes once it is stored there (and awaiting what it returns, if anything); `nearby` names the chunks a
    sequential reader comes to next (their signed URLs come along)."""

    def __call__(self, node_id: int, version: int, chunks: Sequence[tuple[str, int]],
                 on_chunk: Callable[[str, bytes | bytearray], Awaitable[None] | None], nearby: Sequence[str], *,
                 store: bool = True) -> Awaitable[None]: ...


# fetch_ranges(node_id, version, hash, size, ranges, nearby) downloads and verifies the blocks of that chunk
# under those byte ranges [start, end) of it into the chunk cache (or the whole chunk, if it has no block
# hashes); `nearby` names chunks around it that the next random reads may want (their URLs come along).
FetchRanges = Callable[[int, int, str, int, Sequence[tuple[int, int]], Sequence[str]], Awaitable[None]]
# Chunks on each side of a ranged read whose signed URLs are asked for with its own.
NEARBY_URLS = 31
# Chunks after a sequential fetch whose signed URLs are asked for with its own.
AHEAD_URLS = 64
# Bytes of just-fetched chunks held in memory until a sequential reader has read them: reads of fresh
# chunks are answered from these instead of from the chunk files just written. About the read-ahead
# window (8 chunks of 1 MiB on average); past this the oldest are let go (they are in the cache still).
FRESH_BYTES = 16 * 2**20


async def fetch_into(fetch: Fetch, fd: int, node_id: int, version: int,
                     placed: Iterable[tuple[str, int, int]]) -> None:
    """Write chunks of a version into `fd`, each (hash, size, offset) at its offset (a chunk that occurs
    more than once is fetched once): from the chunk cache or fetched several at a time, each written as it
    arrives, and not also stored in the chunk cache (the file holds the bytes)."""
    at: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    for h, size, offset in placed:
        at.setdefault(h, []).append(offset)
        sizes[h] = size
    if not sizes:
        return

    async def write(h: str, data: bytes | bytearray) -> None:
        # In a worker thread: a chunk's pwrite takes a millisecond or more, which FUSE requests on the trio
        # thread would otherwise wait for, and it overlaps the next chunks' receiving.
        await trio.to_thread.run_sync(pwrite_all, fd, data, at[h])

    await fetch(node_id, version, list(sizes.items()), write, (), store=False)


@dataclass(frozen=True)
class Layout:
    """A version's chunks with their start offsets, for finding the chunks under a byte range."""

    version: int
    starts: list[int]
    hashes: list[str]
    sizes: list[int]

    @classmethod
    def of(cls, version: int, chunks: Sequence[tuple[str, int]]) -> "Layout":
        starts, pos = [], 0
        for _, size in chunks:
            starts.append(pos)
            pos += size
        return cls(version, starts, [h for h, _ in chunks], [s for _, s in chunks])

    @property
    def size(self) -> int:
        return self.starts[-1] + self.sizes[-1] if self.starts else 0

    def refs(self) -> list[ChunkRef]:
        return [ChunkRef(offset=o, size=n, hash=h) for o, n, h in zip(self.starts, self.sizes, self.hashes)]

    def span(self, offset: int, length: int) -> range:
        """Indices of the chunks overlapping [offset, offset + length)."""
        if not self.starts or length <= 0:
            return range(0)
        first = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        last = bisect.bisect_left(self.starts, offset + length)
        return range(first, last)


class Reader:
    """Serves byte ranges of clean files from the chunk cache, fetching missing chunks on demand."""

    def __init__(self, tree: Tree, chunks: ChunkCache, remote, fetch: Fetch, readahead_chunks: int = 8,
                 fetch_ranges: FetchRanges | None = None) -> None:
        self.tree = tree
        self.chunks = chunks
        self.remote = remote
        self.fetch = fetch
        self.fetch_ranges = fetch_ranges
        self.readahead_chunks = readahead_chunks
        self.nursery: trio.Nursery | None = None
        self._layouts: LRUCache[tuple[int, int], Layout] = LRUCache(maxsize=512)
        self._inflight: dict[str, trio.Event] = {}
        # (chunk hash, block index) -> fetch under way of that block alone, shared by readers of the block.
        self._blocks_inflight: dict[tuple[str, int], trio.Event] = {}
        # (inode, version) -> the chunk index read-ahead was last planned from (once per chunk, not per read).
        self._ahead_at: LRUCache[tuple[int, int], int] = LRUCache(maxsize=512)
        # hash -> verified bytes of a chunk just fetched, oldest first, FRESH_BYTES at most in all.
        self._fresh: OrderedDict[str, bytes | bytearray] = OrderedDict()
        self._fresh_bytes = 0

    async def layout(self, e: Entry, version: int | None = None) -> Layout:
        """The chunk layout of `version` (default: the entry's current one)."""
        version = version or e.version
        cached = self._layouts.get((e.inode, version))
        if cached is not None:
            return cached
        stored = self.tree.manifest(e.inode)
        if stored is None or stored[0] != version:
            if e.node_id is None:
                raise FsError(errno.EIO, f"{e.name!r} has no server copy to read")
            try:
                detail = await self.remote.version_detail(e.node_id, version)
            except rerr.RemoteError as exc:
                raise FsError(exc.errno if isinstance(exc, rerr.NotFound) else errno.EIO,
                              f"cannot fetch the chunk list of {e.name!r}: {exc}") from None
            stored = (version, [(c.hash, c.size) for c in detail.manifest])
            if version == e.version:
                self.tree.set_manifest(e.inode, *stored)
        layout = Layout.of(*stored)
        self._layouts[(e.inode, version)] = layout
        return layout

    async def copy_to(self, e: Entry, fd: int) -> Layout:
        """Write the entry's whole current version into `fd` (at the same offsets): the chunks already
        cached read from the cache, the others fetched several at a time, each written as it arrives.
        Returns the layout written (its end is the size). For a file about to be written in place: one
        pipeline, not a loop of sequential reads that each wait for their own fetch, and the fetched chunks
        are not also written into the chunk cache (the local copy holds the bytes; once it is committed
        the cache can be filled again by reads)."""
        layout = await self.layout(e)
        if layout.hashes:
            assert e.node_id is not None  # layout() has a chunk list only for a file the server has
            try:
                await fetch_into(self.fetch, fd, e.node_id, layout.version,
                                 zip(layout.hashes, layout.sizes, layout.starts))
            except rerr.RemoteError as exc:
                raise FsError(errno.EIO, f"cannot fetch data of {e.name!r}: {exc}") from None
        return layout

    async def read(self, e: Entry, offset: int, size: int, sequential: bool = False,
                   version: int | None = None) -> bytes:
        layout = await self.layout(e, version)
        total = layout.size
        if offset >= total or size <= 0:
            return b""
        size = min(size, total - offset)
        span = layout.span(offset, size)
        # A read from the very start gets its whole chunk (most files read from there are read through,
        # and blocks first would be fetched twice); read-ahead starts only once a read follows it.
        if sequential or offset == 0 or self.fetch_ranges is None:
            await self._ensure(e, layout, [i for i in span])
        else:
            await self._ensure_blocks(e, layout, offset, size, span)
        parts: list[bytes | memoryview] = []
        for i in span:
            start = max(offset, layout.starts[i]) - layout.starts[i]
            end = min(offset + size, layout.starts[i] + layout.sizes[i]) - layout.starts[i]
            parts.append(await self._part(e, layout, i, start, end, sequential))
        if sequential and self.nursery is not None and span:
            self._read_ahead(e, layout, span[-1])
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    async def _part(self, e: Entry, layout: Layout, i: int, start: int, end: int,
                    sequential: bool) -> bytes | memoryview:
        """Bytes [start, end) of chunk i: from memory if it was just fetched, else from the chunk cache."""
        h = layout.hashes[i]
        fresh = self._fresh.get(h)
        if fresh is not None:
            if sequential and end == layout.sizes[i]:
                self._forget_fresh(h)  # read to its end: the reader has moved on (the kernel keeps the pages)
            return memoryview(fresh)[start:end]
        part = self.chunks.read_range(h, start, end - start)
        if part is None:  # evicted or found corrupt since _ensure: fetch once more
            await self._ensure(e, layout, [i])
            part = self.chunks.read_range(h, start, end - start)
            if part is None:
                raise FsError(errno.EIO, f"chunk {h[:12]} of {e.name!r} cannot be read")
        return part

    def _keep_fresh(self, h: str, data: bytes | bytearray) -> None:
        if h in self._fresh or len(data) > FRESH_BYTES:
            return
        self._fresh[h] = data
        self._fresh_bytes += len(data)
        while self._fresh_bytes > FRESH_BYTES:
            _, old = self._fresh.popitem(last=False)
            self._fresh_bytes -= len(old)

    def _forget_fresh(self, h: str) -> None:
        data = self._fresh.pop(h, None)
        if data is not None:
            self._fresh_bytes -= len(data)

    def _read_ahead(self, e: Entry, layout: Layout, last: int) -> None:
        """Keep the `readahead_chunks` chunks after chunk `last` cached or on their way.

        Planned once per chunk a sequential reader moves into (not on every kernel read), and started in
        batches of at least half the window (one request for signed URLs, then parallel GETs), so a
        steady pipeline of fetches stays ahead of the reader.
        """
        key = (e.inode, layout.version)
        if self._ahead_at.get(key) == last:
            return
        self._ahead_at[key] = last
        end = min(last + 1 + self.readahead_chunks, len(layout.hashes))
        wanted: dict[str, int] = {}
        for i in range(last + 1, end):
            h = layout.hashes[i]
            if h not in wanted and self._absent(h):
                wanted[h] = layout.sizes[i]
        if not wanted or (len(wanted) < max(1, self.readahead_chunks // 2) and end < len(layout.hashes)):
            return
        mine = {h: trio.Event() for h in wanted}
        self._inflight.update(mine)
        assert self.nursery is not None
        nearby = layout.hashes[end:end + AHEAD_URLS]
        self.nursery.start_soon(self._prefetch, e, layout.version, list(wanted.items()), mine, nearby)

    def _absent(self, h: str) -> bool:
        return h not in self._inflight and h not in self._fresh and h not in self.chunks

    def _settle(self, h: str, ev: trio.Event | None) -> None:
        """A fetch of chunk `h` ended (stored or failed): wake its waiters, if the event is still ours."""
        if ev is not None and self._inflight.get(h) is ev:
            del self._inflight[h]
            ev.set()

    def _arrived(self, h: str, data: bytes | bytearray, ev: trio.Event | None) -> None:
        """Chunk `h` was fetched, verified and stored: keep its bytes for the reads to come, wake waiters."""
        self._keep_fresh(h, data)
        self._settle(h, ev)

    async def _prefetch(self, e: Entry, version: int, chunks: list[tuple[str, int]],
                        mine: dict[str, trio.Event], nearby: Sequence[str]) -> None:
        try:
            assert e.node_id is not None
            await self.fetch(e.node_id, version, chunks, lambda h, data: self._arrived(h, data, mine.get(h)),
                             nearby)
        except Exception as exc:  # read-ahead is best effort; the real read reports errors
            log.debug("read-ahead of %r failed: %s", e.name, exc)
        finally:
            for h, ev in mine.items():
                self._settle(h, ev)

    async def _ensure_blocks(self, e: Entry, layout: Layout, offset: int, size: int, span: range) -> None:
        """For a read that does not follow the previous one: make sure the blocks under [offset, offset +
        size) are cached, fetching only those (chunks the read mostly covers are fetched whole)."""
        whole: list[int] = []
        for i in span:
            h, chunk_size = layout.hashes[i], layout.sizes[i]
            if h in self.chunks:
                continue
            if h in self._inflight:  # the whole chunk is on its way (read-ahead or another reader)
                await self._inflight[h].wait()
                continue
            start = max(offset, layout.starts[i]) - layout.starts[i]
            end = min(offset + size, layout.starts[i] + chunk_size) - layout.starts[i]
            held = self.chunks.block_map(h)
            block = held.block_size if held is not None else BLOCK_BYTES
            needed = block_range(start, end - start, chunk_size, block)
            missing = held.missing(needed) if held is not None else list(needed)
            if 2 * len(missing) * block >= chunk_size:
                whole.append(i)  # most of the chunk anyway: one whole fetch, which verifies it as a chunk
            elif missing:
                nearby = layout.hashes[max(0, i - NEARBY_URLS):i + NEARBY_URLS + 1]
                await self._fetch_blocks(e, layout.version, h, chunk_size, block, missing, nearby)
        if whole:
            await self._ensure(e, layout, whole)

    async def _fetch_blocks(self, e: Entry, version: int, h: str, chunk_size: int, block: int,
                            blocks: list[int], nearby: Sequence[str]) -> None:
        """Fetch these blocks of chunk `h`, sharing fetches of the same blocks already under way."""
        waits = [self._blocks_inflight[(h, b)] for b in blocks if (h, b) in self._blocks_inflight]
        mine = {(h, b): trio.Event() for b in blocks if (h, b) not in self._blocks_inflight}
        self._blocks_inflight.update(mine)
        try:
            if mine:
                if e.node_id is None or self.fetch_ranges is None:
                    raise FsError(errno.EIO, f"{e.name!r} has no server copy to read")
                ranges = [(b * block, min((b + 1) * block, chunk_size)) for _, b in mine]
                try:
                    await self.fetch_ranges(e.node_id, version, h, chunk_size, ranges, nearby)
                except rerr.RemoteError as exc:
                    raise FsError(errno.EIO, f"cannot fetch data of {e.name!r}: {exc}") from None
        finally:
            for key, ev in mine.items():
                if self._blocks_inflight.get(key) is ev:
                    del self._blocks_inflight[key]
                ev.set()
        for ev in waits:
            await ev.wait()

    async def _ensure(self, e: Entry, layout: Layout, indices: list[int]) -> None:
        """Make sure these chunks are in the cache, sharing fetches already under way."""
        chunks = {layout.hashes[i]: layout.sizes[i] for i in indices}
        waits = [self._inflight[h] for h in chunks if h in self._inflight]
        mine = {h: trio.Event() for h in chunks if h not in self._inflight and h not in self._fresh
                and h not in self.chunks}
        self._inflight.update(mine)
        try:
            if mine:
                if e.node_id is None:
                    raise FsError(errno.EIO, f"{e.name!r} has no server copy to read")
                nearby = layout.hashes[indices[-1] + 1:indices[-1] + 1 + AHEAD_URLS] if indices else []
                try:
                    await self.fetch(e.node_id, layout.version, [(h, chunks[h]) for h in mine],
                                     lambda h, data: self._arrived(h, data, mine.get(h)), nearby)
                except rerr.RemoteError as exc:
                    raise FsError(errno.EIO, f"cannot fetch data of {e.name!r}: {exc}") from None
        finally:
            for h, ev in mine.items():
                self._settle(h, ev)
        for ev in waits:
            await ev.wait()
