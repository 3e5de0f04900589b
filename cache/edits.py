"""Which byte ranges of each local copy changed since it last matched a known chunk list, so that its next
commit cuts and hashes only those (cache/chunker.py: recut) instead of the whole file."""

from __future__ import annotations

import os
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from .chunker import ChunkRef

__all__ = ["TO_END", "Edits", "FileId", "KnownContent", "file_id"]

# The end of a range that runs to the end of the file, whatever it becomes (a truncation records one).
TO_END = 2**62

# (st_dev, st_ino) of a local copy: a list describes the bytes of one file, not of whatever file is at
# the path later.
FileId = tuple[int, int]


def file_id(st: os.stat_result) -> FileId:
    """The FileId of the file `st` describes."""
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class KnownContent:
    """A local copy as a chunk list it matched, plus the [start, end) ranges written or cut since."""

    refs: tuple[ChunkRef, ...]
    changed: tuple[tuple[int, int], ...]
    file_id: FileId


@dataclass
class _Record:
    """A chunk list kept compact (32 bytes of hash and 8 of size per chunk, not a ~500-byte ChunkRef)."""

    version: int
    digests: bytes
    sizes: array[int]
    file_id: FileId
    gen: int
    changed: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def of(cls, version: int, refs: Sequence[ChunkRef], file_id: FileId, gen: int) -> _Record:
        return cls(version, b"".join(bytes.fromhex(r.hash) for r in refs), array("Q", (r.size for r in refs)),
                   file_id, gen)

    def refs(self) -> tuple[ChunkRef, ...]:
        out, offset = [], 0
        for i, size in enumerate(self.sizes):
            out.append(ChunkRef(offset=offset, size=size, hash=self.digests[32 * i:32 * i + 32].hex()))
            offset += size
        return tuple(out)


class Edits:
    """Per inode: the chunk list its local copy matched at a server version and content generation, and
    every range changed since. In memory only: after a restart the first commit of a file cuts it whole.

    A record is only as good as its notes, so it is given up on at the first doubt: a generation that
    moved without a note (a change made some other way), another server version, another data file, or
    too many scattered ranges. A commit without a record cuts the whole file, as it always could.
    """

    MAX_RANGES = 4096
    MAX_REFS = 64 * 1024  # chunks of all records together (2.5 MiB; ~64 GiB of files); the oldest go first

    def __init__(self) -> None:
        self._records: OrderedDict[int, _Record] = OrderedDict()
        self._refs = 0

    def known(self, inode: int, version: int, refs: Sequence[ChunkRef], file_id: FileId, gen: int) -> None:
        """The local copy `file_id` of `inode` holds exactly version `version`, cut into `refs`, at `gen`."""
        self.drop(inode)
        if len(refs) > self.MAX_REFS or not _whole(refs):
            return
        self._records[inode] = _Record.of(version, refs, file_id, gen)
        self._refs += len(refs)
        while self._refs > self.MAX_REFS:
            self.drop(next(iter(self._records)))

    def note(self, inode: int, start: int, end: int, gen: int) -> None:
        """Bytes [start, end) of the local copy change, as the change that made its generation `gen`."""
        r = self._records.get(inode)
        if r is None:
            return
        if r.gen != gen - 1:  # a change in between that was not noted
            self.drop(inode)
            return
        r.gen = gen
        last = r.changed[-1] if r.changed else None
        if last is not None and last[0] <= start <= last[1]:  # sequential writes make one range
            r.changed[-1] = (last[0], max(last[1], end))
        elif len(r.changed) < self.MAX_RANGES:
            r.changed.append((start, end))
        else:
            self.drop(inode)

    def take(self, inode: int, version: int, gen: int) -> KnownContent | None:
        """What is known of the local copy of `inode` if it is based on `version` and at `gen` (else None).
        The record stays, noting changes, until `known` replaces it or `drop` ends it."""
        r = self._records.get(inode)
        if r is None or r.version != version or r.gen != gen:
            return None
        self._records.move_to_end(inode)
        return KnownContent(r.refs(), tuple(r.changed), r.file_id)

    def drop(self, inode: int) -> None:
        r = self._records.pop(inode, None)
        if r is not None:
            self._refs -= len(r.sizes)


def _whole(refs: Sequence[ChunkRef]) -> bool:
    """Whether the refs are a whole file's: each starting where the one before ended, from 0."""
    offset = 0
    for r in refs:
        if r.offset != offset:
            return False
        offset += r.size
    return True
