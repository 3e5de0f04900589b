"""Moving file bytes to and from the blob store through signed URLs: chunked, deduplicated, compressed
when it pays, verified, in parallel, and resumable after a crash.

Upload (`Transfer.upload_file`):

1. Scan: cut the file into content-defined chunks and hash them (cache.chunker), keeping only the
   refs (offset, size, hash) and the whole file's SHA-256, never the bytes.
2. Session: open an upload session with the manifest (POST /uploads); the server answers which chunks
   it lacks (deduplicated against what this user can already read). With an Index and an upload key,
   the session id and manifest are saved first; a later run with the same key and the same file
   content and target reuses the session (if it has not expired) and asks it again what is missing:
   the server's list is the truth, the saved done set only reports progress.
3. Send: re-read only the missing chunks by offset (os.pread, in threads), check their hash again
   (FileChanged if the file moved under us), zstd-compress when that saves at least 10%, get signed
   PUT URLs in batches and PUT with bounded concurrency. A pipeline of bounded channels keeps at most
   a few chunks per worker in memory, whatever the file size:

       feeder ─refs─> preparers (read, verify, compress) ─ready─> url batcher ─(chunk, url)─> putters

4. Commit the session (idempotent on the server, so retried freely); on MissingChunks, send those and
   commit again; on an expired session, open a new one (uploaded chunks are kept) and go on.

Download (`Transfer.download_chunks`, `Transfer.download_file`): signed GET URLs in batches, fetched in
parallel; each chunk is decoded and checked against its hash before anyone sees it (CorruptChunk
otherwise), and stored in the ChunkCache when one is given. `Transfer.download_ranges` fetches only
some blocks of a chunk (ranged GETs, for random reads), each checked against the block hashes the
server computed for the chunk, into the ChunkCache as a partial chunk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio
import zstandard
from cachetools import LRUCache

from cache.blocks import BlockMap, block_range, runs
from cache.chunker import ChunkRef, chunk_stream, hash_bytes
from cache.chunkcache import ChunkCache
from cache.index import Index

from . import errors
from .client import ApiClient
from .models import Node, SignedUrl, UploadChunk, UploadSession, VersionDetail

__all__ = ["Progress", "Transfer", "TransferStatistics"]

log = logging.getLogger("drivefs.remote")

ZSTD_LEVEL = 3
# Ranged downloads up to this many bytes are verified on the trio thread.
_VERIFY_INLINE = 256 * 2**10
# A remembered range URL is used only while it has at least this long to live.
RANGE_URL_MARGIN_S = 30.0
# Send zstd only when it saves at least this fraction of the plain size.
MIN_SAVING = 0.10
# Signed download URLs asked for per request; they live minutes, so not many more than we soon use.
DOWNLOAD_URL_BATCH = 64
# How often the done set of an upload is written to the index (seconds of trio time).
MARK_EVERY_S = 1.0
# Rounds of send-then-commit before an upload whose chunks keep going missing gives up.
COMMIT_ROUNDS = 4

Progress = Callable[[int, int], None]
"""progress(done_bytes, total_bytes): plain bytes of the file the server holds / fetched so far."""


class ChunkLike(Protocol):
    hash: str
    size: int
    offset: int


@dataclass(frozen=True)
class TransferStatistics:
    """Counters since the Transfer was created. `bytes_*` are bytes on the wire (stored form)."""

    chunks_sent: int
    bytes_sent: int
    plain_bytes_sent: int
    chunks_compressed: int
    chunks_skipped: int
    chunks_received: int
    bytes_received: int
    plain_bytes_received: int
    chunks_from_cache: int
    ranges_received: int


@dataclass
class _Counters:
    chunks_sent: int = 0
    bytes_sent: int = 0
    plain_bytes_sent: int = 0
    chunks_compressed: int = 0
    chunks_skipped: int = 0
    chunks_received: int = 0
    bytes_received: int = 0
    plain_bytes_received: int = 0
    chunks_from_cache: int = 0
    ranges_received: int = 0  # ranged GETs of blocks of a chunk (their bytes count in bytes_received)


@dataclass(frozen=True)
class _Scan:
    refs: tuple[ChunkRef, ...]
    size: int
    content_hash: str


@dataclass(frozen=True)
class _Prepared:
    """One chunk ready to PUT: its stored bytes (plain or zstd) and how they are encoded."""

    ref: ChunkRef
    body: bytes
    encoding: str

    def upload_chunk(self) -> UploadChunk:
        return UploadChunk(hash=self.ref.hash, size=self.ref.size, stored_size=len(self.body),
                           encoding=self.encoding)  # type: ignore[arg-type]


class Transfer:
    """Chunk transfers for one ApiClient; `concurrency` is the default number of parallel requests."""

    def __init__(self, api: ApiClient, *, concurrency: int = 8, zstd_level: int = ZSTD_LEVEL) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.api = api
        self.concurrency = concurrency
        self.zstd_level = zstd_level
        self._counters = _Counters()
        # (node id, version, chunk hash) -> its signed URL with block hashes, for download_ranges.
        self._range_urls: LRUCache[tuple[int, int, str], SignedUrl] = LRUCache(maxsize=1024)

    def statistics(self) -> TransferStatistics:
        return TransferStatistics(**vars(self._counters))

    # ---- upload -----------------------------------------------------------------------------------

    async def upload_file(
        self,
        path: str | os.PathLike[str],
        *,
        parent_id: int | None = None,
        name: str | None = None,
        node_id: int | None = None,
        base_version: int | None = None,
        mode: int = 0o644,
        mtime_ns: int | None = None,
        index: Index | None = None,
        upload_key: str | None = None,
        progress: Progress | None = None,
        concurrency: int | None = None,
    ) -> Node:
        """Upload the file at `path` as a new file (parent_id + name) or a new version (node_id + base_version).

        With `index`, the upload's state is kept under `upload_key` (default: the file's absolute path)
        so a run killed midway resumes: call again with the same key. Raises VersionConflict when the
        file moved past `base_version` (the chunks stay uploaded; the saved state is dropped), FileChanged
        when the local file changes during the upload, and the other errors of remote.errors.
        """
        if (node_id is None) == (parent_id is None) or (parent_id is not None and not name) or (
                node_id is not None and base_version is None):
            raise ValueError("give either parent_id and name (a new file) or node_id and base_version")
        path = os.fspath(path)
        workers = concurrency or self.concurrency
        key = upload_key or f"path:{os.path.abspath(path)}"
        scan = await trio.to_thread.run_sync(_scan, path)
        target: dict[str, Any] = {"node_id": node_id, "base_version": base_version, "parent_id": parent_id,
                                  "name": name, "mode": mode, "mtime_ns": mtime_ns,
                                  "content_hash": scan.content_hash}
        session = await self._resume(index, key, scan, target) if index is not None else None
        if session is None:
            session = await self._open_session(index, key, scan, target)
        else:
            log.info("resuming upload %s: %d chunks still missing", key, len(session.missing))

        by_hash = {ref.hash: ref for ref in scan.refs}
        bytes_of: dict[str, int] = defaultdict(int)
        for ref in scan.refs:
            bytes_of[ref.hash] += ref.size
        self._counters.chunks_skipped += len(by_hash) - len(set(session.missing))
        done = scan.size - sum(bytes_of[h] for h in set(session.missing))
        marker = _DoneMarker(index, key)

        def sent(h: str) -> None:
            nonlocal done
            done += bytes_of[h]
            marker.add(h)
            if progress is not None:
                progress(done, scan.size)

        if progress is not None:
            progress(done, scan.size)
        fd = os.open(path, os.O_RDONLY)
        try:
            for _round in range(COMMIT_ROUNDS):
                if not session.committed:
                    unknown = [h for h in session.missing if h not in by_hash]
                    if unknown:
                        raise errors.RemoteError(f"the server asks for {len(unknown)} chunks this file does not have")
                    refs = [by_hash[h] for h in dict.fromkeys(session.missing)]
                    await self._send(fd, refs, sent, workers)
                    marker.flush()
                try:
                    node = await self.api.commit_upload(session.id)
                    break
                except errors.MissingChunks as e:
                    log.warning("commit of upload %s found %d chunks missing; sending them again", key, len(e.missing))
                    session = UploadSession(id=session.id, missing=tuple(e.missing), expires_at=session.expires_at)
                except (errors.Expired, errors.NotFound):
                    # The session expired or was dropped; chunks already sent are kept by the server.
                    session = await self._open_session(index, key, scan, target)
                except errors.VersionConflict:
                    self._forget(index, key)
                    raise
            else:
                raise errors.RemoteError(f"upload {key}: chunks kept going missing after {COMMIT_ROUNDS} commits")
        finally:
            os.close(fd)
            marker.flush()
        self._forget(index, key)
        if progress is not None:
            progress(scan.size, scan.size)
        return node

    async def _open_session(self, index: Index | None, key: str, scan: _Scan, target: dict[str, Any]) -> UploadSession:
        session = await self.api.create_upload(scan.refs, scan.size, **target)
        if index is not None:
            with index.transaction():
                index.save_upload(key, session.id, scan.refs)
                index.set_kv(_target_key(key), _target_json(target))
        return session

    async def _resume(self, index: Index, key: str, scan: _Scan, target: dict[str, Any]) -> UploadSession | None:
        """The saved session of this upload if it is for the same content and target and still open."""
        state = index.load_upload(key)
        if state is None:
            return None
        same = (state.session_id is not None and state.manifest == scan.refs
                and index.get_kv(_target_key(key)) == _target_json(target))
        if same:
            try:
                return await self.api.get_upload(state.session_id)  # type: ignore[arg-type]
            except (errors.NotFound, errors.Expired):
                log.info("saved upload session of %s is gone; starting a new one", key)
        elif state.session_id is not None:
            try:
                await self.api.drop_upload(state.session_id)
            except errors.ApiError:
                pass
        self._forget(index, key)
        return None

    @staticmethod
    def _forget(index: Index | None, key: str) -> None:
        if index is not None:
            with index.transaction():
                index.drop_upload(key)
                index.delete_kv(_target_key(key))

    async def _send(self, fd: int, refs: Sequence[ChunkRef], sent: Callable[[str], None], workers: int) -> None:
        """PUT these chunks (read from `fd`), at most `workers` at a time, calling sent(hash) after each."""
        if not refs:
            return
        preparers = max(1, min(workers, os.cpu_count() or 1))
        level = self.zstd_level

        async def feed(out: trio.MemorySendChannel[ChunkRef]) -> None:
            async with out:
                for ref in refs:
                    await out.send(ref)

        async def prepare(inp: trio.MemoryReceiveChannel[ChunkRef], out: trio.MemorySendChannel[_Prepared]) -> None:
            async with inp, out:
                async for ref in inp:
                    await out.send(await trio.to_thread.run_sync(_prepare, fd, ref, level))

        async def batch_urls(inp: trio.MemoryReceiveChannel[_Prepared],
                             out: trio.MemorySendChannel[tuple[_Prepared, SignedUrl]]) -> None:
            async with inp, out:
                while True:
                    try:
                        batch = [await inp.receive()]
                    except trio.EndOfChannel:
                        return
                    while len(batch) < workers:
                        try:
                            batch.append(inp.receive_nowait())
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                    urls = await self.api.upload_urls([p.upload_chunk() for p in batch])
                    for item, url in zip(batch, urls, strict=True):
                        await out.send((item, url))

        async def put(inp: trio.MemoryReceiveChannel[tuple[_Prepared, SignedUrl]]) -> None:
            async with inp:
                async for item, url in inp:
                    try:
                        await self.api.put_blob(url, item.body)
                    except errors.Expired:
                        (url,) = await self.api.upload_urls([item.upload_chunk()])
                        await self.api.put_blob(url, item.body)
                    c = self._counters
                    c.chunks_sent += 1
                    c.bytes_sent += len(item.body)
                    c.plain_bytes_sent += item.ref.size
                    c.chunks_compressed += item.encoding == "zstd"
                    sent(item.ref.hash)

        async with _workers() as nursery:
            refs_in, refs_out = trio.open_memory_channel[ChunkRef](0)
            # Prepared chunks wait here for their URLs: a small buffer keeps memory at a few chunks per
            # worker (each PUT also holds a copy of its body inside h11 while it is sent).
            ready_in, ready_out = trio.open_memory_channel[_Prepared](preparers)
            put_in, put_out = trio.open_memory_channel[tuple[_Prepared, SignedUrl]](0)
            nursery.start_soon(feed, refs_in)
            async with refs_out, ready_in:
                for _ in range(preparers):
                    nursery.start_soon(prepare, refs_out.clone(), ready_in.clone())
            nursery.start_soon(batch_urls, ready_out, put_in)
            async with put_out:
                for _ in range(workers):
                    nursery.start_soon(put, put_out.clone())

    # ---- download ---------------------------------------------------------------------------------

    async def download_chunks(
        self,
        node_id: int,
        version: int,
        entries: Sequence[ChunkLike],
        *,
        chunk_cache: ChunkCache | None = None,
        concurrency: int | None = None,
        progress: Progress | None = None,
        on_chunk: Callable[[str], None] | None = None,
        keep: bool = True,
    ) -> dict[str, bytes]:
        """The verified plain bytes of these chunks of a version, by hash (held in memory: ask for a window).

        Chunks found in `chunk_cache` are not fetched; fetched ones are stored there. Raises
        CorruptChunk if a chunk does not match its hash (after one refetch). `on_chunk(hash)` is called as
        each chunk arrives (after it is in `chunk_cache`), so a reader need not wait for the whole window;
        with keep=False the bytes are not collected (an empty dict is returned): memory stays bounded by
        the chunks in flight, for callers that read them from `chunk_cache`.
        """
        out: dict[str, bytes] = {}
        sizes = {e.hash: e.size for e in entries}
        total = sum(sizes.values())
        got = 0

        async def deliver(h: str, data: bytes) -> None:
            nonlocal got
            if keep:
                out[h] = data
            got += len(data)
            if progress is not None:
                progress(got, total)
            if on_chunk is not None:
                on_chunk(h)

        await self._fetch(node_id, version, sizes, deliver, chunk_cache, concurrency or self.concurrency)
        return out

    async def download_file(
        self,
        node: Node,
        dest: str | os.PathLike[str],
        *,
        version: int | None = None,
        chunk_cache: ChunkCache | None = None,
        concurrency: int | None = None,
        progress: Progress | None = None,
    ) -> VersionDetail:
        """Write a version of a file (default: the current one) to `dest`, atomically: a temp file in the
        same folder, renamed over `dest` only when every chunk arrived verified. Memory stays bounded."""
        if node.kind != "file":
            raise ValueError(f"{node.name!r} is a {node.kind}, not a file")
        detail = await self.api.version_detail(node.id, version or node.version)
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
        offsets: dict[str, list[int]] = defaultdict(list)
        for entry in detail.manifest:
            offsets[entry.hash].append(entry.offset)
        sizes = {e.hash: e.size for e in detail.manifest}
        got = 0

        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, detail.size)

            async def deliver(h: str, data: bytes) -> None:
                nonlocal got
                await trio.to_thread.run_sync(_pwrite_all, fd, data, offsets[h])
                got += len(data) * len(offsets[h])
                if progress is not None:
                    progress(got, detail.size)

            await self._fetch(node.id, detail.version, sizes, deliver, chunk_cache, concurrency or self.concurrency)
            await trio.to_thread.run_sync(os.fsync, fd)
            os.fchmod(fd, detail.mode & 0o777)
            os.close(fd)
            fd = -1
            os.replace(tmp, dest)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        if progress is not None and not detail.manifest:
            progress(0, 0)
        return detail

    async def _fetch(
        self,
        node_id: int,
        version: int,
        sizes: dict[str, int],
        deliver: Callable[[str, bytes], Awaitable[None]],
        chunk_cache: ChunkCache | None,
        workers: int,
    ) -> None:
        """Get each chunk in `sizes` (hash -> plain size) from the cache or the blob store, verified, and
        hand it to deliver(hash, bytes), at most `workers` at a time."""
        if not sizes:
            return
        cached: list[str] = []
        wanted: list[str] = []
        for h in sizes:
            (cached if chunk_cache is not None and h in chunk_cache else wanted).append(h)

        async def feed(out: trio.MemorySendChannel[tuple[str, SignedUrl | None]]) -> None:
            async with out:
                for h in cached:
                    await out.send((h, None))
                for i in range(0, len(wanted), DOWNLOAD_URL_BATCH):
                    for url in await self.api.download_urls(node_id, version, wanted[i:i + DOWNLOAD_URL_BATCH]):
                        await out.send((url.hash, url))

        async def work(inp: trio.MemoryReceiveChannel[tuple[str, SignedUrl | None]]) -> None:
            async with inp:
                async for h, url in inp:
                    data = None
                    # The chunk cache's index is used on this (trio) thread only: an apsw connection
                    # raises ThreadingViolationError when two threads use it at once. Only the chunk
                    # file is written in a worker thread.
                    if url is None and chunk_cache is not None:
                        data = chunk_cache.get(h)
                        if data is not None:
                            self._counters.chunks_from_cache += 1
                    if data is None:
                        data = await self._get_verified(node_id, version, h, sizes[h], url)
                        if chunk_cache is not None:
                            await trio.to_thread.run_sync(partial(chunk_cache.store_file, h, data, verified=True))
                            chunk_cache.record(h, len(data))
                    await deliver(h, data)

        async with _workers() as nursery:
            jobs_in, jobs_out = trio.open_memory_channel[tuple[str, SignedUrl | None]](workers)
            nursery.start_soon(feed, jobs_in)
            async with jobs_out:
                for _ in range(workers):
                    nursery.start_soon(work, jobs_out.clone())

    async def _get_verified(self, node_id: int, version: int, h: str, size: int, url: SignedUrl | None) -> bytes:
        """Fetch one chunk and return its plain bytes only if they hash to `h`; refetch once, then CorruptChunk."""
        for attempt in (1, 2):
            if url is None:
                (url,) = await self.api.download_urls(node_id, version, [h])
            try:
                encoding, body = await self.api.get_blob(url)
            except errors.Expired:
                (url,) = await self.api.download_urls(node_id, version, [h])
                encoding, body = await self.api.get_blob(url)
            self._counters.chunks_received += 1
            self._counters.bytes_received += len(body)
            try:
                data = await trio.to_thread.run_sync(_decode, h, size, encoding, body)
            except errors.CorruptChunk:
                if attempt == 2:
                    raise
                log.warning("chunk %s failed verification; fetching it again", h)
                continue
            self._counters.plain_bytes_received += len(data)
            return data
        raise AssertionError("unreachable")

    async def download_ranges(self, node_id: int, version: int, h: str, size: int,
                              ranges: Sequence[tuple[int, int]], *, chunk_cache: ChunkCache,
                              nearby: Sequence[str] = ()) -> None:
        """Get the blocks of chunk `h` (`size` bytes) under the byte ranges [start, end) into `chunk_cache`.

        One ranged GET per run of adjacent blocks not held yet; every block is checked against the block
        hash the server computed for the chunk (a range failing that is fetched once more, then
        CorruptChunk). The last block to arrive makes the partial chunk whole (checked against `h`). A chunk
        the server has no block hashes for (stored before it computed them, or stored zstd) is fetched
        and stored whole instead. `nearby`: other chunks of the version a random reader may well come to
        next; their URLs are asked for in the same request and kept for later calls.
        """
        url = await self._range_url(node_id, version, h, nearby)
        if url.encoding != "none" or url.block_hashes is None or url.block_size is None:
            data = await self._get_verified(node_id, version, h, size, url)
            await trio.to_thread.run_sync(partial(chunk_cache.store_file, h, data, verified=True))
            chunk_cache.record(h, len(data))
            return
        try:
            bmap = BlockMap.empty(h, size, url.block_size, url.block_hashes)
        except ValueError as e:
            raise errors.CorruptChunk(f"the server's block hashes do not fit chunk {h}: {e}", h) from None
        wanted: set[int] = set()
        for start, end in ranges:
            wanted.update(block_range(start, end - start, size, bmap.block_size))
        held = chunk_cache.block_map(h)
        if held is not None and held.digests == bmap.digests:
            wanted = set(held.missing(wanted))
        for blocks in runs(wanted):
            url, data = await self._get_blocks_verified(node_id, version, bmap, blocks, url)
            self._range_urls[(node_id, version, h)] = url
            # As in _fetch: the file is written in a worker thread, the index used on this one only.
            await trio.to_thread.run_sync(chunk_cache.store_blocks, bmap, blocks[0], data)
            now = chunk_cache.record_blocks(bmap, blocks)
            if now is not None and now.complete:
                if await trio.to_thread.run_sync(chunk_cache.promote_file, h):
                    chunk_cache.record(h, size)
                else:
                    chunk_cache.drop_blocks(h)

    async def _range_url(self, node_id: int, version: int, h: str, nearby: Sequence[str] = ()) -> SignedUrl:
        """A signed URL of chunk `h` with its block hashes, reused while it has a while to live: random
        reads come back to the same chunks, and a new URL costs a request to the server each time (so
        the URLs of `nearby` chunks without a usable one come in the same request)."""
        def usable(x: str) -> bool:
            url = self._range_urls.get((node_id, version, x))
            return url is not None and url.expires_at - time.time() >= RANGE_URL_MARGIN_S

        if not usable(h):
            wanted = [h] + [x for x in dict.fromkeys(nearby) if x != h and not usable(x)][:DOWNLOAD_URL_BATCH - 1]
            for url in await self.api.download_urls(node_id, version, wanted, blocks=True):
                self._range_urls[(node_id, version, url.hash)] = url
        return self._range_urls[(node_id, version, h)]

    async def _get_blocks_verified(self, node_id: int, version: int, bmap: BlockMap, blocks: range,
                                   url: SignedUrl) -> tuple[SignedUrl, bytes]:
        """One ranged GET of these blocks, returned (with the URL used) only if every block matches its
        hash; refetched once, then CorruptChunk."""
        start, end = bmap.span(blocks[0])[0], bmap.span(blocks[-1])[1]
        for attempt in (1, 2):
            try:
                body = await self.api.get_blob_range(url, start, end)
            except errors.Expired:
                (url,) = await self.api.download_urls(node_id, version, [bmap.hash], blocks=True)
                body = await self.api.get_blob_range(url, start, end)
            self._counters.ranges_received += 1
            self._counters.bytes_received += len(body)
            if len(body) > _VERIFY_INLINE:
                bad = await trio.to_thread.run_sync(bmap.verify, blocks, body)
            else:  # a block or two: hashing costs less than the thread hop
                bad = bmap.verify(blocks, body)
            if not bad and len(body) == end - start:
                self._counters.plain_bytes_received += len(body)
                return url, body
            if attempt == 2:
                raise errors.CorruptChunk(f"blocks {bad or list(blocks)} of chunk {bmap.hash} do not match their "
                                          "hashes: the stored copy is damaged", bmap.hash)
            log.warning("blocks %s of chunk %s failed verification; fetching them again", list(blocks), bmap.hash)
        raise AssertionError("unreachable")


@asynccontextmanager
async def _workers() -> AsyncIterator[trio.Nursery]:
    """A nursery whose failure is raised as the first worker's own exception (e.g. CorruptChunk), not as
    an ExceptionGroup: when one worker fails the others are cancelled, and callers catch our error types.
    Groups holding anything but ordinary exceptions (KeyboardInterrupt, ...) pass through unchanged."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if not leaves or not all(isinstance(e, Exception) for e in leaves):
            raise
        first = leaves[0]
        if first.__cause__ is None:
            first.__suppress_context__ = True
        raise first


def _leaves(group: BaseExceptionGroup) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


class _DoneMarker:
    """Batches the hashes an upload has sent into the index's done set, at most once per MARK_EVERY_S."""

    def __init__(self, index: Index | None, key: str) -> None:
        self.index = index
        self.key = key
        self.pending: list[str] = []
        self.last = trio.current_time()

    def add(self, h: str) -> None:
        if self.index is None:
            return
        self.pending.append(h)
        if trio.current_time() - self.last >= MARK_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self.index is None or not self.pending:
            return
        try:
            self.index.mark_upload_done(self.key, self.pending)
        except KeyError:
            pass  # the state was dropped (committed or conflicted): nothing left to record
        self.pending = []
        self.last = trio.current_time()


def _target_key(upload_key: str) -> str:
    return f"upload_target:{upload_key}"


def _target_json(target: dict[str, Any]) -> str:
    return json.dumps(target, sort_keys=True, separators=(",", ":"))


def _scan(path: str) -> _Scan:
    """Chunk refs and the SHA-256 of the whole file, reading it once and keeping no chunk bytes."""
    whole = hashlib.sha256()
    refs = []
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        for ref, data in chunk_stream(f):
            whole.update(data)
            refs.append(ref)
            trio.from_thread.check_cancelled()
        after = os.fstat(f.fileno())
    size = sum(r.size for r in refs)
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or size != after.st_size:
        raise errors.FileChanged(f"{path} changed while it was being read; upload it again")
    return _Scan(tuple(refs), size, whole.hexdigest())


def _prepare(fd: int, ref: ChunkRef, level: int) -> _Prepared:
    """Read one chunk again, check it is still what was scanned, and compress it if that pays."""
    data = os.pread(fd, ref.size, ref.offset)
    if len(data) != ref.size or hash_bytes(data) != ref.hash:
        raise errors.FileChanged(f"the file changed during its upload (chunk at offset {ref.offset}); upload it again")
    packed = zstandard.ZstdCompressor(level=level).compress(data)
    if len(packed) <= len(data) * (1 - MIN_SAVING):
        return _Prepared(ref, packed, "zstd")
    return _Prepared(ref, data, "none")


def _decode(h: str, size: int, encoding: str, body: bytes) -> bytes:
    """The plain bytes of a stored chunk, only if they are `size` bytes hashing to `h`."""
    if encoding == "zstd":
        try:
            data = zstandard.ZstdDecompressor().decompress(body, max_output_size=size)
        except zstandard.ZstdError as e:
            raise errors.CorruptChunk(f"chunk {h} is not valid zstd data: {e}", h) from None
    elif encoding == "none":
        data = body
    else:
        raise errors.CorruptChunk(f"chunk {h} came in an unknown encoding {encoding!r}", h)
    if len(data) != size:
        raise errors.CorruptChunk(f"chunk {h} holds {len(data)} bytes, not {size}", h)
    if hash_bytes(data) != h:
        raise errors.CorruptChunk(f"chunk {h} does not match its hash: the stored copy is damaged", h)
    return data


def _pwrite_all(fd: int, data: bytes, offsets: Sequence[int]) -> None:
    for offset in offsets:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
