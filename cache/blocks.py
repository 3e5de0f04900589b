"""Blocks of a chunk: the fixed-size pieces a chunk can be fetched and verified in, one SHA-256 each.

The server computes a plain chunk's block hashes when it verifies the chunk (server/blobs/base.py) and
hands them out with its download URL; a client fetching a byte range of the chunk checks every block
it receives against them, and keeps which blocks it holds in a BlockMap (cache/chunkcache.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace

__all__ = ["BLOCK_BYTES", "BlockMap", "block_range", "runs"]

# The block size readers plan with; a chunk's own map carries the size the server used for it.
BLOCK_BYTES = 64 * 2**10

_DIGEST = 32


def block_range(offset: int, length: int, size: int, block_size: int = BLOCK_BYTES) -> range:
    """Indices of the blocks of a `size`-byte chunk that bytes [offset, offset + length) touch."""
    end = min(offset + length, size)
    if length <= 0 or offset >= end:
        return range(0)
    return range(offset // block_size, (end - 1) // block_size + 1)


def runs(indices: Iterable[int]) -> Iterator[range]:
    """Sorted distinct block indices grouped into runs of adjacent ones (one ranged request each)."""
    start = prev = None
    for i in sorted(set(indices)):
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            yield range(start, prev + 1)
        start = prev = i
    if start is not None:
        yield range(start, prev + 1)


@dataclass(frozen=True)
class BlockMap:
    """Which blocks of one chunk are held: the chunk's size, its block size, the server's block digests
    (32 bytes each, concatenated) and a bitmap of the blocks present (bit i of byte i // 8)."""

    hash: str
    size: int
    block_size: int
    digests: bytes
    present: bytes

    @classmethod
    def empty(cls, hash: str, size: int, block_size: int, hex_digests: Sequence[str]) -> BlockMap:
        """No block held yet; ValueError unless there is one digest per block of the chunk."""
        if block_size <= 0 or len(hex_digests) != -(-size // block_size):
            raise ValueError(f"chunk {hash}: {len(hex_digests)} block hashes for {size} bytes in blocks of "
                             f"{block_size}")
        digests = b"".join(bytes.fromhex(d) for d in hex_digests)
        if len(digests) != _DIGEST * len(hex_digests):
            raise ValueError(f"chunk {hash}: a block hash is not a SHA-256")
        return cls(hash, size, block_size, digests, bytes(-(-len(hex_digests) // 8)))

    @property
    def count(self) -> int:
        return len(self.digests) // _DIGEST

    def span(self, index: int) -> tuple[int, int]:
        """Byte range [start, end) of block `index` in the chunk (the last block may be short)."""
        start = index * self.block_size
        return start, min(start + self.block_size, self.size)

    def has(self, index: int) -> bool:
        return bool(self.present[index >> 3] & (1 << (index & 7)))

    def missing(self, indices: Iterable[int]) -> list[int]:
        return [i for i in indices if not self.has(i)]

    @property
    def complete(self) -> bool:
        return all(self.has(i) for i in range(self.count))

    @property
    def present_bytes(self) -> int:
        """Bytes of the chunk held: what the partial chunk counts against the cache's limit."""
        total = 0
        for i in range(self.count):
            if self.has(i):
                start, end = self.span(i)
                total += end - start
        return total

    def with_blocks(self, indices: Iterable[int], present: bool = True) -> BlockMap:
        bits = bytearray(self.present)
        for i in indices:
            if not 0 <= i < self.count:
                raise IndexError(f"block {i} of chunk {self.hash} (it has {self.count})")
            if present:
                bits[i >> 3] |= 1 << (i & 7)
            else:
                bits[i >> 3] &= ~(1 << (i & 7)) & 0xFF
        return replace(self, present=bytes(bits))

    def verify(self, blocks: range, data: bytes | memoryview) -> list[int]:
        """The blocks of `blocks` whose bytes in `data` (those blocks laid end to end) do not match their
        digest; bytes missing from a short `data` make their blocks bad too."""
        bad = []
        view = memoryview(data)
        pos = 0
        for i in blocks:
            start, end = self.span(i)
            piece = view[pos:pos + end - start]
            pos += end - start
            if len(piece) != end - start or hashlib.sha256(piece).digest() != self.digest(i):
                bad.append(i)
        return bad

    def digest(self, index: int) -> bytes:
        return self.digests[index * _DIGEST:(index + 1) * _DIGEST]
