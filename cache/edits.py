"""Which byte ranges of each local copy changed since it last matched a known chunk list, so that its next
commit cuts and hashes only those (cache/chunker.py: recut) instead of the whole file."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from .chunker import ChunkRef

__all__ = ["TO_END", "Edits", "FileId", "KnownContent"]

# The end of a range that runs to the end of the file, whatever it becomes (a truncation records one).
TO_END = 2**62

# (st_dev, st_ino) of a local copy: a list describes the bytes of one file, not of whatever file is at
# the path later.
FileId = tuple[int, int]


@dataclass(frozen=True)
class KnownContent:
    """A local copy as a chunk list it matched, plus the [start, end) ranges written or cut since."""

    refs: tuple[ChunkRef, ...]
    changed: tuple[tuple[int, int], ...]
    file_id: FileId


@dataclass
class _Record:
    version: int
    refs: tuple[ChunkRef, ...]
    file_id: FileId
    gen: int
    changed: list[tuple[int, int]] = field(default_factory=list)


class Edits:
    """Per inode: the chunk list its local copy matched at a server version and content generation, and
    every range changed since. In memory only: after a restart the first commit of a file cuts it whole.

    A record is only as good as its notes, so it is given up on at the first doubt: a generation that
    moved without a note (a change made some other way), another server version, another data file, or
    too many scattered ranges. A commit without a record cuts the whole file, as it always could.
    """

    MAX_RANGES = 4096
    MAX_REFS = 64 * 1024  # all records together, ~12 MiB of refs; the oldest go first

    def __init__(self) -> None:
        self._records: OrderedDict[int, _Record] = OrderedDict()
        self._refs = 0

    def known(self, inode: int, version: int, refs: Sequence[ChunkRef], file_id: FileId, gen: int) -> None:
        """The local copy `file_id` of `inode` holds exactly version `version`, cut into `refs`, at `gen`."""
        self.drop(inode)
        if len(refs) > self.MAX_REFS:
            return
        self._records[inode] = _Record(version, tuple(refs), file_id, gen)
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
        return KnownContent(r.refs, tuple(r.changed), r.file_id)

    def drop(self, inode: int) -> None:
        r = self._records.pop(inode, None)
        if r is not None:
            self._refs -= len(r.refs)
