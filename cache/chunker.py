"""Cuts file bytes into content-defined chunks so that a local edit re-uploads only the chunks it touched."""

from __future__ import annotations

import bisect
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from pyfastcdc import FastCDC

__all__ = [
    "AVG_CHUNK",
    "MAX_CHUNK",
    "MIN_CHUNK",
    "ChunkRef",
    "chunk_file",
    "chunk_stream",
    "chunk_views",
    "content_hash",
    "hash_bytes",
    "is_chunk_hash",
    "manifest_of",
    "recut",
    "untouched",
]

MIN_CHUNK = 256 * 1024
AVG_CHUNK = 1024 * 1024
MAX_CHUNK = 4 * 1024 * 1024

# These two change every cut point when changed, which would defeat dedupe against everything already
# uploaded, so they are pinned here rather than left to pyfastcdc's defaults.
_NORMALIZED_CHUNKING = 1
_GEAR_SEED = 0

# Streams up to this size are read whole and cut in memory (the stream cutter's own buffer is as big).
_WHOLE_LIMIT = 2 * MAX_CHUNK

# Starts what a content hash of several chunks hashes, so that it names a list of chunks, not bytes.
_CHUNK_LIST_PREFIX = b"drivefs chunk list 1\n"

_HASH_HEX_LEN = 64
_HEX_DIGITS = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: where it sits in the file, how long it is, and the hash of its plain bytes."""

    offset: int
    size: int
    hash: str


def hash_bytes(data: bytes | bytearray | memoryview) -> str:
    """The chunk fingerprint used everywhere: SHA-256 hex digest of the plain (uncompressed) bytes."""
    return hashlib.sha256(data).hexdigest()


def content_hash(refs: Sequence[ChunkRef]) -> str:
    """A file's content hash, from its ordered chunk refs alone (SHA-256, hex).

    Empty, or of one chunk (every file up to MIN_CHUNK bytes): the SHA-256 of the bytes, as `sha256sum`
    prints it. More chunks: the SHA-256 of a prefix and each chunk's binary hash and size, in order. The
    cut points depend only on the content, so equal contents have equal content hashes. It is no
    whole-file SHA-256 because that needs a second pass over every byte of an upload, which on a small
    machine that also runs the server slowed `drive flush` of a 1 GiB file by a tenth; and because a file
    changed in one place can get its new hash from the chunks around the change.
    """
    if len(refs) <= 1:
        return refs[0].hash if refs else hashlib.sha256(b"").hexdigest()
    h = hashlib.sha256(_CHUNK_LIST_PREFIX)
    for ref in refs:
        h.update(bytes.fromhex(ref.hash))
        h.update(ref.size.to_bytes(8, "big"))
    return h.hexdigest()


def is_chunk_hash(name: str) -> bool:
    """True if `name` has the shape of a fingerprint (it becomes a file name, so this guards paths too)."""
    return len(name) == _HASH_HEX_LEN and set(name) <= _HEX_DIGITS


def _new_cutter() -> FastCDC:
    return FastCDC(
        AVG_CHUNK,
        min_size=MIN_CHUNK,
        max_size=MAX_CHUNK,
        normalized_chunking=_NORMALIZED_CHUNKING,
        seed=_GEAR_SEED,
    )


def chunk_stream(f: BinaryIO) -> Iterator[tuple[ChunkRef, bytes]]:
    """Yield (ref, bytes) for each chunk of the stream, in order, with memory bounded by a few MAX_CHUNKs."""
    for ref, view in chunk_views(f):
        yield ref, bytes(view)


def chunk_views(f: BinaryIO) -> Iterator[tuple[ChunkRef, memoryview]]:
    """chunk_stream without copying: each chunk's bytes are a view into the cutter's buffer, valid only
    until the next chunk is asked for (for callers that hash or sample them on the spot).

    pyfastcdc's stream cutter keeps one buffer of 2 * MAX_CHUNK and refills it (looping over short
    reads) whenever less than MAX_CHUNK is left, so every cut decision sees the same bytes however the
    stream happens to split its reads: the result depends only on the content.
    """
    # The stream cutter allocates and zeroes a buffer of 2 * MAX_CHUNK every time, which was most of the
    # cost of syncing a small file. A stream that fits in that buffer is cut from memory instead (the
    # same cut points: they depend only on the content), and one of at most MIN_CHUNK bytes is a single
    # chunk whatever its content (FastCDC never cuts below its minimum).
    head = _read_up_to(f, _WHOLE_LIMIT + 1)
    if len(head) <= MIN_CHUNK:
        if head:
            yield ChunkRef(offset=0, size=len(head), hash=hash_bytes(head)), memoryview(head)
        return
    if len(head) <= _WHOLE_LIMIT:
        chunks = _new_cutter().cut_buf(head)
    else:
        chunks = _new_cutter().cut_stream(_Prefixed(head, f))
        del head  # _Prefixed lets go of these 8 MiB once the cutter has copied them into its own buffer
    for chunk in chunks:
        # The memoryview points into pyfastcdc's buffer, which the next chunk overwrites.
        view = chunk.data
        yield ChunkRef(offset=chunk.offset, size=len(view), hash=hash_bytes(view)), view


def _read_up_to(f: BinaryIO, n: int) -> bytes:
    """Up to `n` bytes, fewer only at the end of the stream (short reads are retried)."""
    parts, got = [], 0
    while got < n:
        part = f.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


class _Prefixed:
    """A stream that yields `head` and then the rest of `rest` (for cutting a stream whose start was read)."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readinto(self, buf: memoryview) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            # An empty slice would still hold the whole head: drop it once consumed.
            self._head = self._head[n:] if n < len(self._head) else memoryview(b"")
            return n
        readinto = getattr(self._rest, "readinto", None)
        if readinto is not None:
            return readinto(buf) or 0
        data = self._rest.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def chunk_file(path: str | os.PathLike[str]) -> Iterator[tuple[ChunkRef, bytes]]:
    """chunk_stream over the file at `path`; the file stays open until the iterator is exhausted or closed."""
    with open(path, "rb") as f:
        yield from chunk_stream(f)


def manifest_of(path: str | os.PathLike[str]) -> list[ChunkRef]:
    """The ordered chunk refs of the file at `path`, without keeping any chunk bytes."""
    return [ref for ref, _data in chunk_file(path)]


def untouched(size: int, known: Sequence[ChunkRef], changed: Sequence[tuple[int, int]]) -> list[ChunkRef]:
    """The chunks of `known`, a file's earlier chunk list, that a recut of it may take as they are now
    that it is `size` bytes and the [start, end) ranges `changed` were written or cut: those no change
    touches that still end where a cut of the file does."""
    spans = _merged(changed)
    starts = [start for start, _end in spans]
    old_end = known[-1].offset + known[-1].size if known else 0
    out = []
    for ref in known:
        end = ref.offset + ref.size
        # The old last chunk ended where the old file did, not where its bytes said: only a file that
        # ends there too cuts it the same.
        if end > size or (end == old_end and end != size):
            continue
        i = bisect.bisect_left(starts, end)  # spans starting before this chunk's end
        if i == 0 or spans[i - 1][1] <= ref.offset:
            out.append(ref)
    return out


def recut(read_at: Callable[[int, int], bytes], size: int,
          keep: Sequence[ChunkRef]) -> Iterator[tuple[ChunkRef, memoryview | None]]:
    """The chunks of a file of `size` bytes, read with `read_at(offset, n)` (like os.pread), given the
    chunks of its earlier list it still holds as they were (`keep`, from `untouched`); as chunk_views
    yields them, but a kept chunk comes as it is, with None for its bytes.

    Only the rest is read, cut and hashed: from the start of each gap between kept chunks, until a cut
    lands on the start of a kept chunk. That gives the very list a cut of the whole file would, because a
    cut point depends only on the bytes since the previous one.
    """
    by_start = {ref.offset: ref for ref in keep}
    pos = 0
    while pos < size:
        ref = by_start.get(pos)
        if ref is not None:
            yield ref, None
            pos += ref.size
            continue
        for cut, view in _cuts_from(read_at, pos, size):
            yield cut, view
            pos = cut.offset + cut.size
            if pos in by_start:
                break
        else:
            return  # the end of the file (which the caller checks against `size`)


# What _cuts_from has read ahead before it first tries to cut; it reads on, doubling, up to MAX_CHUNK.
_FIRST_READ = AVG_CHUNK


def _cuts_from(read_at: Callable[[int, int], bytes], pos: int, size: int) -> Iterator[tuple[ChunkRef, memoryview]]:
    """Cut from `pos`, a cut point, to `size`, reading only as far ahead as each cut needs.

    A cut found before the end of what was read is the one a cut of the whole file makes there: FastCDC
    decides at each byte from the bytes since the chunk's start, and having less than MAX_CHUNK in hand
    changes only how far it may look, not its masks before the end of what it has. So a recut that stops
    after a chunk or two reads about that much (each byte once), not the stream cutter's 8 MiB, which
    matters for a file with changes scattered over many chunks (a database between two commits).
    """
    cutter = _new_cutter()
    data = b""  # the file's bytes from `pos` on, read ahead
    while pos < size:
        need = min(_FIRST_READ, size - pos)
        while True:
            if len(data) < need:
                more = read_at(pos + len(data), need - len(data))
                if len(more) < need - len(data):  # shorter than it was: the caller sees the sizes differ
                    size = pos + len(data) + len(more)
                    need = size - pos
                data += more
                if not data:
                    return
            window = memoryview(data)[:MAX_CHUNK]
            first = next(iter(cutter.cut_buf(window)))
            if first.length < len(window) or len(window) >= MAX_CHUNK or pos + len(window) >= size:
                break
            need = min(2 * len(window), MAX_CHUNK, size - pos)  # more than in hand: the window grows
        chunk, data = data[:first.length], data[first.length:]
        yield ChunkRef(offset=pos, size=len(chunk), hash=hash_bytes(chunk)), memoryview(chunk)
        pos += len(chunk)


def _merged(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ranges sorted, with overlapping or adjacent ones joined, and empty ones left out."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
