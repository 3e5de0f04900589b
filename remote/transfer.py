"""Moving file bytes to and from the blob store through signed URLs: chunked, deduplicated, compressed
when it pays, verified, in parallel, and resumable after a crash.

Upload (`Transfer.upload_file`):

1. Scan and send in one pass: a worker thread cuts the file into content-defined chunks and hashes
   them (cache.chunker), and passes each chunk's ref on as it is cut to a
   router, which asks the server which of a batch it lacks (POST /chunks/missing: deduplicated against
   what this user can already read), gets signed PUT URLs and hands them to parallel putters. So the
   first PUT starts while the rest of the file is still being cut, and each chunk is hashed once:

       cutter (read, cut, hash) ─refs─> router (missing?, [read + zstd], URLs) ─(chunk, url)─> putters

   A chunk's bytes are read again (from the page cache the cutter just filled) only when it is about
   to be sent, so memory holds about one chunk per putter whatever the file size. They are not hashed
   again: the server hashes every chunk it receives and refuses bytes that do not match their name
   (FileChanged here), and the file's size, mtime and ctime are compared before and after the pass
   (FileChanged if it was written meanwhile). zstd is tried only on chunks whose sample compresses
   (see _packable), and kept when it saves at least 10%; those chunks are read and compressed before
   their URL is asked for, since the stored size is signed into it.
   A new version of a file whose local copy is known to match its base version's chunk list except in
   some ranges (`known`, cache.edits) is cut again only there (cache.chunker.recut): the chunks no
   change touched are taken as they are, without reading them, and the server already has them.
2. Session: open an upload session with the manifest (POST /uploads); every chunk is on the server by
   now, so its missing list is normally empty. With an Index and an upload key the session id and the
   target (which holds the content hash) are saved, so a rerun after a crash between opening and
   committing finds the committed session (and gets the same node back, not a second version).
   A run killed during step 1 needs no saved state: the server already holds the chunks it verified,
   so the rerun sends only the others.
3. Commit the session (idempotent on the server, so retried freely); on MissingChunks, re-read those by
   offset, check their hash (FileChanged otherwise), send them and commit again; on an expired session,
   open a new one (uploaded chunks are kept) and go on.

Download (`Transfer.download_chunks`, `Transfer.download_file`): signed GET URLs in batches, fetched in
parallel; each chunk is decoded and checked against its hash before anyone sees it (CorruptChunk
otherwise), and stored in the ChunkCache when one is given. `Transfer.download_ranges` fetches only
some blocks of a chunk (ranged GETs, for random reads), each checked against the block hashes the
server computed for the chunk, into the ChunkCache as a partial chunk.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import trio
import zstandard
from cachetools import LRUCache

from cache.blocks import BlockMap, block_range, runs
from cache.chunkcache import ChunkCache
from cache.chunker import MIN_CHUNK, ChunkRef, chunk_views, content_hash, hash_bytes, recut, untouched
from cache.holes import SparseFile, Unfilled
from cache.edits import FileId, KnownContent, file_id
from cache.index import Index

from . import errors
from .client import ApiClient
from .models import Node, SignedUrl, UploadChunk, UploadSession, VersionDetail
from .tasks import worker_nursery

__all__ = ["Progress", "Transfer", "TransferStatistics", "pwrite_all"]

# A new version this large first checks that its base is still current, so an upload bound to be
# refused sends nothing (one request, against seconds of PUTs; smaller files skip it).
PRECHECK_BYTES = 8 * 2**20

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
# Refs the cutter may run ahead of the router, and the most it asks the server about at once. Refs are
# small (no bytes), so this only bounds how far ahead of the PUTs the file is read.
ROUTE_BATCH = 32
# Files up to this size are one chunk (FastCDC never cuts below its minimum): they are hashed on the spot
# and sent by the commit, in four requests (session, URL, PUT, commit) instead of the pass's five.
SMALL_FILE_BYTES = MIN_CHUNK
# Bytes of a chunk's start and of its middle compressed to judge whether zstd pays for it.
SAMPLE_BYTES = 32 * 2**10
# Rounds of send-then-commit before an upload whose chunks keep going missing gives up.
COMMIT_ROUNDS = 4

# Chunk bytes as downloaded: a bytearray when read straight from the socket (remote.blobhttp), never mutated.
Bytes = bytes | bytearray

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
    bytes_cut: int  # plain bytes read, cut and hashed to upload files (a recut reads only what changed)


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
    bytes_cut: int = 0


@dataclass(frozen=True)
class _Scan:
    refs: tuple[ChunkRef, ...]
    size: int
    content_hash: str


@dataclass(frozen=True)
class _Prepared:
    """One chunk ready to PUT: its stored bytes (plain or zstd) and how they are encoded. A plain chunk may
    come without its bytes (body None): it is read from the file just before its PUT."""

    ref: ChunkRef
    body: bytes | None
    encoding: str

    def upload_chunk(self) -> UploadChunk:
        stored = self.ref.size if self.body is None else len(self.body)
        return UploadChunk(hash=self.ref.hash, size=self.ref.size, stored_size=stored,
                           encoding=self.encoding)  # type: ignore[arg-type]


@dataclass(frozen=True)
class _Cut:
    """A chunk just cut, as the cutter hands it on: where it is, and whether zstd is worth trying on it."""

    ref: ChunkRef
    packable: bool


_Signed = tuple[_Prepared, SignedUrl]


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
        # The same for whole-chunk downloads (no block hashes asked for), for download_chunks.
        self._whole_urls: LRUCache[tuple[int, int, str], SignedUrl] = LRUCache(maxsize=1024)

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
        known: KnownContent | None = None,
        on_committed: Callable[[tuple[ChunkRef, ...], FileId], None] | None = None,
        holes: SparseFile | None = None,
    ) -> Node:
        """Upload the file at `path` as a new file (parent_id + name) or a new version (node_id + base_version).

        `known`: what is known of a new version's bytes (its base version's chunk list and the ranges
        changed since, for the file `known.file_id`), so that only those ranges are cut again; ignored
        for another file. `on_committed(refs, file_id)` is told the committed chunk list and of which file.
        `holes`: the chunks a sparse local copy has not fetched yet. Reading any of them raises
        cache.holes.Unfilled, with the range that was to be read: fill it and call again.

        With `index`, the upload's state is kept under `upload_key` (default: the file's absolute path)
        so a run killed midway resumes: call again with the same key. Raises VersionConflict when the
        file moved past `base_version` (the saved state is dropped; from PRECHECK_BYTES on this is found
        before any chunk is sent, else the chunks stay uploaded) and NotFound when it is gone, FileChanged
        when the local file changes during the upload, and the other errors of remote.errors.
        """
        if (node_id is None) == (parent_id is None) or (parent_id is not None and not name) or (
                node_id is not None and base_version is None):
            raise ValueError("give either parent_id and name (a new file) or node_id and base_version")
        path = os.fspath(path)
        workers = concurrency or self.concurrency
        key = upload_key or f"path:{os.path.abspath(path)}"
        # Opened once: chunks are re-read for their PUT from the same file the pass cut.
        with os.fdopen(os.open(path, os.O_RDONLY), "rb") as f:
            src = _Source(f.fileno(), holes if holes else None)
            before = os.fstat(f.fileno())
            report = _Progress(progress, before.st_size)
            if node_id is not None and before.st_size >= PRECHECK_BYTES:
                try:
                    await self._check_base(node_id, base_version)
                except errors.VersionConflict:
                    self._forget(index, key)
                    raise
            if known is not None and (node_id is None or known.file_id != file_id(before)):
                known = None
            if before.st_size <= SMALL_FILE_BYTES:
                # One chunk: the session's answer says whether it is missing and _commit sends it, so the
                # pass needs no /chunks/missing request of its own, nor a worker thread to cut in.
                src.check(0, before.st_size)
                scan = _cut_small(f)
                self._counters.bytes_cut += scan.size
            else:
                scan = await self._scan_and_send(f, src, workers, report, known)
            if _identity(os.fstat(f.fileno())) != _identity(before) or scan.size != before.st_size:
                raise errors.FileChanged(f"{path} changed while it was being uploaded; upload it again")
            target: dict[str, Any] = {"node_id": node_id, "base_version": base_version, "parent_id": parent_id,
                                      "name": name, "mode": mode, "mtime_ns": mtime_ns,
                                      "content_hash": scan.content_hash}
            session = await self._resume(index, key, target) if index is not None else None
            if session is None:
                session = await self._open_session(index, key, scan, target)
            else:
                log.info("resuming upload %s: %d chunks still missing", key, len(session.missing))
            node = await self._commit(src, index, key, session, scan, target, workers)
        self._forget(index, key)
        if on_committed is not None:
            on_committed(scan.refs, file_id(before))
        report.finish(scan.size)
        return node

    async def _check_base(self, node_id: int, base_version: int | None) -> None:
        """Fail before sending anything when the commit is bound to fail: the file moved past the base or
        is gone. (The session is opened only after the PUTs, so the server would say so only then.)"""
        node = await self.api.get_node(node_id)
        if node.deleted:
            raise errors.NotFound(f"{node.name!r} was deleted on the server")
        if node.version != base_version:
            raise errors.VersionConflict(
                f"{node.name!r} changed on the server (version {node.version}, upload based on {base_version})",
                details={"current_version": node.version, "content_hash": node.content_hash})

    async def _commit(self, src: _Source, index: Index | None, key: str, session: UploadSession, scan: _Scan,
                      target: dict[str, Any], workers: int) -> Node:
        """Commit the session, first sending (re-read from `src`) any chunk the server still lacks."""
        by_hash = {ref.hash: ref for ref in scan.refs}
        for _round in range(COMMIT_ROUNDS):
            if not session.committed and session.missing:
                unknown = [h for h in session.missing if h not in by_hash]
                if unknown:
                    raise errors.RemoteError(f"the server asks for {len(unknown)} chunks this file does not have")
                await self._send(src, [by_hash[h] for h in dict.fromkeys(session.missing)], workers)
            try:
                return await self.api.commit_upload(session.id)
            except errors.MissingChunks as e:
                log.warning("commit of upload %s found %d chunks missing; sending them again", key, len(e.missing))
                session = UploadSession(id=session.id, missing=tuple(e.missing), expires_at=session.expires_at)
            except (errors.Expired, errors.NotFound):
                # The session expired or was dropped; chunks already sent are kept by the server.
                session = await self._open_session(index, key, scan, target)
            except errors.VersionConflict:
                self._forget(index, key)
                raise
        raise errors.RemoteError(f"upload {key}: chunks kept going missing after {COMMIT_ROUNDS} commits")

    async def _open_session(self, index: Index | None, key: str, scan: _Scan, target: dict[str, Any]) -> UploadSession:
        session = await self.api.create_upload(scan.refs, scan.size, **target)
        if index is not None:
            # No manifest and no done set are kept: the target holds the content hash, which names the
            # content, and the server knows which chunks it has. So the row stays small for any file.
            with index.transaction():
                index.save_upload(key, session.id)
                index.set_kv(_target_key(key), _target_json(target))
        return session

    async def _resume(self, index: Index, key: str, target: dict[str, Any]) -> UploadSession | None:
        """The saved session of this upload if it is for the same content and target and still open."""
        state = index.load_upload(key)
        if state is None:
            return None
        if state.session_id is not None and index.get_kv(_target_key(key)) == _target_json(target):
            try:
                return await self.api.get_upload(state.session_id)
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

    async def _scan_and_send(self, f: BinaryIO, src: _Source, workers: int, report: _Progress,
                             known: KnownContent | None) -> _Scan:
        """Cut and hash the open file (with `known`: only what changed), sending each chunk the server
        lacks while the rest is still being cut (at most `workers` PUTs at a time); the refs and the
        content hash are the result."""
        level = self.zstd_level
        scans: list[_Scan] = []

        async def cut(out: trio.MemorySendChannel[_Cut]) -> None:
            async with out:
                scan, read = await trio.to_thread.run_sync(_cut, f, src, out, known)
                self._counters.bytes_cut += read
                report.add(scan.size - read)  # the chunks taken as known: the server has them
                scans.append(scan)

        async def route(inp: trio.MemoryReceiveChannel[_Cut], out: trio.MemorySendChannel[_Signed]) -> None:
            handled: set[str] = set()  # hashes already sent or found on the server in this pass
            async with inp, out:
                while batch := await _receive_batch(inp, ROUTE_BATCH):
                    fresh = list(dict.fromkeys(c.ref.hash for c in batch if c.ref.hash not in handled))
                    handled.update(fresh)
                    lacking = set(await self.api.missing_chunks(fresh)) if fresh else set()
                    self._counters.chunks_skipped += len(fresh) - len(lacking)
                    plain: list[_Prepared] = []
                    packable: list[ChunkRef] = []
                    for c in batch:
                        if c.ref.hash not in lacking:
                            report.add(c.ref.size)
                            continue
                        lacking.discard(c.ref.hash)  # a chunk repeated in the batch is sent once
                        if c.packable:
                            packable.append(c.ref)
                        else:
                            plain.append(_Prepared(c.ref, None, "none"))
                    # Plain chunks hold no bytes until their PUT, so a whole batch is signed at once;
                    # compressed ones are held, so a few at a time.
                    await self._sign(plain, out)
                    for i in range(0, len(packable), workers):
                        group = packable[i:i + workers]
                        await self._sign(await trio.to_thread.run_sync(_pack_group, src, group, level), out)

        async with worker_nursery() as nursery:
            cut_in, cut_out = trio.open_memory_channel[_Cut](ROUTE_BATCH)
            put_in, put_out = trio.open_memory_channel[_Signed](0)
            nursery.start_soon(cut, cut_in)
            nursery.start_soon(route, cut_out, put_in)
            async with put_out:
                for _ in range(workers):
                    nursery.start_soon(self._put, src, put_out.clone(), report)
        return scans[0]

    async def _send(self, src: _Source, refs: Sequence[ChunkRef], workers: int) -> None:
        """PUT these chunks (re-read from `src` and checked against their hash), at most `workers` at a time."""
        level = self.zstd_level

        async def prepare(out: trio.MemorySendChannel[_Signed]) -> None:
            async with out:
                for i in range(0, len(refs), workers):
                    ready = [await trio.to_thread.run_sync(_prepare, src, ref, level) for ref in refs[i:i + workers]]
                    await self._sign(ready, out)

        async with worker_nursery() as nursery:
            put_in, put_out = trio.open_memory_channel[_Signed](0)
            nursery.start_soon(prepare, put_in)
            async with put_out:
                for _ in range(workers):
                    nursery.start_soon(self._put, src, put_out.clone(), _Progress(None, 0))

    async def _sign(self, ready: list[_Prepared], out: trio.MemorySendChannel[_Signed]) -> None:
        """Get PUT URLs for a batch of prepared chunks (one request) and pass each on with its URL."""
        if not ready:
            return
        urls = await self.api.upload_urls([p.upload_chunk() for p in ready])
        for item, url in zip(ready, urls, strict=True):
            await out.send((item, url))

    async def _put(self, src: _Source, inp: trio.MemoryReceiveChannel[_Signed], report: _Progress) -> None:
        async with inp:
            async for item, url in inp:
                # Read on this thread, not in a worker: the cutter has just brought these bytes into the
                # page cache, and glibc gives each thread that allocates chunks an arena of its own whose
                # freed memory it keeps (eight putters' threads grew the RSS with the file).
                body = item.body if item.body is not None else _read(src, item.ref)
                try:
                    try:
                        await self.api.put_blob(url, body)
                    except errors.Expired:
                        (url,) = await self.api.upload_urls([item.upload_chunk()])
                        await self.api.put_blob(url, body)
                except errors.Invalid:
                    # The server hashes every chunk it receives: bytes read again that no longer match
                    # the hash they were cut with mean the file was written since.
                    raise errors.FileChanged(f"the file changed during its upload (chunk at offset "
                                             f"{item.ref.offset}); upload it again") from None
                c = self._counters
                c.chunks_sent += 1
                c.bytes_sent += len(body)
                c.plain_bytes_sent += item.ref.size
                c.chunks_compressed += item.encoding == "zstd"
                report.add(item.ref.size)
                del body

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
        on_chunk: Callable[[str, Bytes], Awaitable[None] | None] | None = None,
        keep: bool = True,
        nearby: Sequence[str] = (),
        store: bool = True,
    ) -> dict[str, Bytes]:
        """The verified plain bytes of these chunks of a version, by hash (held in memory: ask for a window).

        Chunks found in `chunk_cache` are not fetched; fetched ones are stored there (unless store=False:
        for a caller that keeps the bytes elsewhere, such as a file's whole local copy). Raises
        CorruptChunk if a chunk does not match its hash (after one refetch). `on_chunk(hash, bytes)` is
        called with each chunk's verified bytes as it arrives (after it is in `chunk_cache`), so a reader
        need not wait for the whole window; an awaitable it returns is awaited before that fetcher goes
        on. With keep=False the bytes are not collected (an empty dict is returned): memory stays bounded
        by the chunks in flight. `nearby`: chunks of the version the caller will likely ask for next (a
        sequential reader's next ones); their signed URLs come in the same request as these and are kept
        for later calls while they live.
        """
        out: dict[str, Bytes] = {}
        sizes = {e.hash: e.size for e in entries}
        total = sum(sizes.values())
        got = 0

        async def deliver(h: str, data: Bytes) -> None:
            nonlocal got
            if keep:
                out[h] = data
            got += len(data)
            if progress is not None:
                progress(got, total)
            if on_chunk is not None and (pending := on_chunk(h, data)) is not None:
                await pending

        await self._fetch(node_id, version, sizes, deliver, chunk_cache, concurrency or self.concurrency, nearby,
                          store=store)
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

            async def deliver(h: str, data: Bytes) -> None:
                nonlocal got
                await trio.to_thread.run_sync(pwrite_all, fd, data, offsets[h])
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
        deliver: Callable[[str, Bytes], Awaitable[None]],
        chunk_cache: ChunkCache | None,
        workers: int,
        nearby: Sequence[str] = (),
        store: bool = True,
    ) -> None:
        """Get each chunk in `sizes` (hash -> plain size) from the cache or the blob store, verified, and
        hand it to deliver(hash, bytes), at most `workers` at a time (URLs of `nearby` asked along);
        fetched chunks go into the cache too unless store=False."""
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
                    for url in await self._chunk_urls(node_id, version, wanted[i:i + DOWNLOAD_URL_BATCH], nearby):
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
                        keeper = chunk_cache if store else None
                        data = await self._get_verified(node_id, version, h, sizes[h], url, keeper)
                        if keeper is not None:
                            keeper.record(h, len(data))
                    await deliver(h, data)

        async with worker_nursery() as nursery:
            jobs_in, jobs_out = trio.open_memory_channel[tuple[str, SignedUrl | None]](workers)
            nursery.start_soon(feed, jobs_in)
            async with jobs_out:
                for _ in range(workers):
                    nursery.start_soon(work, jobs_out.clone())

    async def _chunk_urls(self, node_id: int, version: int, hashes: Sequence[str],
                          nearby: Sequence[str]) -> list[SignedUrl]:
        """Signed URLs of these chunks: kept ones while they have a while to live, the others (with those
        of `nearby` chunks that have none) in one request, so a sequential reader asking for a few chunks
        at a time costs one URL request per DOWNLOAD_URL_BATCH chunks, not one per call."""
        def usable(x: str) -> bool:
            url = self._whole_urls.get((node_id, version, x))
            return url is not None and url.expires_at - time.time() >= RANGE_URL_MARGIN_S

        lacking = [h for h in dict.fromkeys(hashes) if not usable(h)]
        if lacking:
            extra = [x for x in dict.fromkeys(nearby) if x not in lacking and not usable(x)]
            for url in await self.api.download_urls(node_id, version,
                                                    (lacking + extra)[:max(DOWNLOAD_URL_BATCH, len(lacking))]):
                self._whole_urls[(node_id, version, url.hash)] = url
        return [url for h in hashes if (url := self._whole_urls.get((node_id, version, h))) is not None]

    async def _get_verified(self, node_id: int, version: int, h: str, size: int, url: SignedUrl | None,
                            store: ChunkCache | None = None) -> Bytes:
        """Fetch one chunk and return its plain bytes only if they hash to `h`; refetch once, then CorruptChunk.
        With `store`, the verified chunk's file is written there in the same worker thread that checked it
        (the caller records it in the index, on its own thread)."""
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
                data = await trio.to_thread.run_sync(_decode_and_store, h, size, encoding, body, store)
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
            data = await self._get_verified(node_id, version, h, size, url, chunk_cache)
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
                                   url: SignedUrl) -> tuple[SignedUrl, Bytes]:
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


class _Progress:
    """Reports plain bytes of the file the server holds (sent or found there) to an optional callback."""

    def __init__(self, callback: Progress | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0
        if callback is not None:
            callback(0, total)

    def add(self, n: int) -> None:
        # Never past the total: a chunk found missing again at commit is sent (and counted) twice.
        self.done = min(self.done + n, self.total)
        if self.callback is not None:
            self.callback(self.done, self.total)

    def finish(self, size: int) -> None:
        if self.callback is not None:
            self.callback(size, size)


async def _receive_batch(inp: trio.MemoryReceiveChannel[_Cut], most: int) -> list[_Cut]:
    """Wait for one item, then take whatever else is ready, up to `most`; [] once the channel is closed."""
    try:
        batch = [await inp.receive()]
    except trio.EndOfChannel:
        return []
    while len(batch) < most:
        try:
            batch.append(inp.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            break
    return batch


def _target_key(upload_key: str) -> str:
    return f"upload_target:{upload_key}"


def _target_json(target: dict[str, Any]) -> str:
    return json.dumps(target, sort_keys=True, separators=(",", ":"))


class _Source:
    """The file being uploaded, read by offset; bytes a sparse local copy has not fetched yet are refused
    with Unfilled (the caller fills them and uploads again) rather than read as the zeros they hold."""

    def __init__(self, fd: int, holes: SparseFile | None) -> None:
        self.fd = fd
        self.holes = holes

    def is_hole(self, start: int, end: int) -> bool:
        return self.holes is not None and self.holes.first_within(start, end) is not None

    def check(self, start: int, end: int) -> None:
        if self.is_hole(start, end):
            raise Unfilled(start, end)

    def pread(self, offset: int, n: int) -> bytes:
        self.check(offset, offset + n)
        return os.pread(self.fd, n, offset)


def _cut(f: BinaryIO, src: _Source, out: trio.MemorySendChannel[_Cut],
         known: KnownContent | None) -> tuple[_Scan, int]:
    """(In a worker thread.) Cut and hash the file, passing each chunk's ref to `out` as soon as it is cut;
    the result holds all refs and the file's content hash, and how many bytes were cut. The bytes are
    not kept: the chunks to send are read again just before their PUT, from the page cache this pass
    just filled. With `known`, only the changed parts are cut; a chunk taken as known is not passed on
    (it is its base version's, so the server has it: were it missing, the commit would send it, checked
    against its hash)."""
    size = os.fstat(src.fd).st_size
    keep = untouched(size, known.refs, known.changed) if known is not None else None
    if keep is not None and not _spot_check(src, keep):
        keep = None
    if keep is None:
        src.check(0, size)  # a whole cut reads every byte
    pieces = recut(src.pread, size, keep) if keep is not None else chunk_views(f)
    refs, read = [], 0
    for ref, view in pieces:
        refs.append(ref)
        if view is not None:
            read += ref.size
            trio.from_thread.run(out.send, _Cut(ref, _packable(view)))
    return _scan_of(refs), read


# Unchanged chunks checked against their hash before a recut takes them as known: a change that
# reached the file without being noted would show here (and in tests) rather than go unseen.
SPOT_CHECKS = 2


def _spot_check(src: _Source, keep: Sequence[ChunkRef]) -> bool:
    """Whether a few of the chunks a recut is to take as they are still hash to their names (~1 ms each).
    Holes are not checked: nothing here has written them, and they would have to be fetched first."""
    held = [ref for ref in keep if not src.is_hole(ref.offset, ref.offset + ref.size)]
    for ref in secrets.SystemRandom().sample(held, min(SPOT_CHECKS, len(held))):
        if hash_bytes(src.pread(ref.offset, ref.size)) != ref.hash:
            log.error("the local copy changed where no change was noted (chunk at offset %d); cutting all "
                      "of it", ref.offset)
            return False
    return True


def _cut_small(f: BinaryIO) -> _Scan:
    """The scan of a file of at most SMALL_FILE_BYTES: one chunk (or none), whose hash is the file's."""
    return _scan_of([ref for ref, _ in chunk_views(f)])


def _scan_of(refs: list[ChunkRef]) -> _Scan:
    return _Scan(tuple(refs), sum(r.size for r in refs), content_hash(refs))


def _packable(data: memoryview) -> bool:
    """Whether zstd is worth trying on this chunk, judged from a sample of its start and middle: zstd's
    fastest level on 64 KiB costs ~1% of compressing the chunk, and most large files (media, archives,
    encrypted data) do not compress at all."""
    if len(data) > 2 * SAMPLE_BYTES:
        mid = len(data) // 2
        return _saves(bytes(data[:SAMPLE_BYTES]) + bytes(data[mid:mid + SAMPLE_BYTES]))
    return _saves(data)


def _saves(data: bytes | memoryview) -> bool:
    return len(zstandard.ZstdCompressor(level=1).compress(data)) <= len(data) * (1 - MIN_SAVING)


def _identity(st: os.stat_result) -> tuple[int, int, int]:
    # ctime too: a writer can set mtime back, never ctime.
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _read(src: _Source, ref: ChunkRef) -> bytes:
    data = src.pread(ref.offset, ref.size)
    if len(data) != ref.size:
        raise errors.FileChanged(f"the file shrank during its upload (chunk at offset {ref.offset}); upload it again")
    return data


def _pack_group(src: _Source, refs: Sequence[ChunkRef], level: int) -> list[_Prepared]:
    compressor = zstandard.ZstdCompressor(level=level)
    return [_pack(compressor, ref, _read(src, ref)) for ref in refs]


def _pack(compressor: zstandard.ZstdCompressor, ref: ChunkRef, data: bytes) -> _Prepared:
    """The chunk as it is to be stored: zstd when that saves at least MIN_SAVING, else plain."""
    packed = compressor.compress(data)
    if len(packed) <= len(data) * (1 - MIN_SAVING):
        return _Prepared(ref, packed, "zstd")
    return _Prepared(ref, data, "none")


def _prepare(src: _Source, ref: ChunkRef, level: int) -> _Prepared:
    """Read one chunk again, check it is still what was scanned, and compress it if that pays."""
    data = src.pread(ref.offset, ref.size)
    if len(data) != ref.size or hash_bytes(data) != ref.hash:
        raise errors.FileChanged(f"the file changed during its upload (chunk at offset {ref.offset}); upload it again")
    return _pack(zstandard.ZstdCompressor(level=level), ref, data)


def _decode_and_store(h: str, size: int, encoding: str, body: Bytes, store: ChunkCache | None) -> Bytes:
    """(In a worker thread.) _decode, then the chunk's file written to `store` if given."""
    data = _decode(h, size, encoding, body)
    if store is not None:
        store.store_file(h, data, verified=True)
    return data


def _decode(h: str, size: int, encoding: str, body: Bytes) -> Bytes:
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


def pwrite_all(fd: int, data: Bytes, offsets: Sequence[int]) -> None:
    """Write all of `data` into `fd` at each of `offsets` (a chunk that occurs more than once in a file)."""
    for offset in offsets:
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
