"""The chunks a sparse local copy does not hold yet, kept durable: a write into a big uncached file fetches
only the chunks it touches, and whoever reads the copy fills the holes it meets first."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from cache.index import Index

log = logging.getLogger("drivefs.holes")


@dataclass(frozen=True, slots=True)
class Hole:
    """Bytes [offset, offset + size) of a local copy that are still chunk `hash` of that server version.

    A hole is never written (a write fills it first), so it holds its base chunk whatever commits happen
    meanwhile: (node_id, version) only says where the server lets us fetch it from."""

    offset: int
    size: int
    hash: str
    node_id: int
    version: int

    @property
    def end(self) -> int:
        return self.offset + self.size


class Unfilled(Exception):
    """A reader of a local copy met bytes that are still a hole; fill [start, end) and read again."""

    def __init__(self, start: int, end: int) -> None:
        super().__init__(f"bytes {start}..{end} of the local copy are not fetched yet")
        self.start = start
        self.end = end


class SparseFile:
    """The holes of one local copy, in offset order.

    Handles that opened the copy keep this object: if the copy is dropped or replaced while they are
    open (another device changed the file), they go on reading and filling the file they opened, and
    only the object that is still `current` is mirrored in the index."""

    def __init__(self, inode: int, holes: Iterable[Hole]) -> None:
        self.inode = inode
        self._holes = sorted(holes, key=lambda h: h.offset)
        self._starts = [h.offset for h in self._holes]
        self.current = True

    def __len__(self) -> int:
        return len(self._holes)

    def __bool__(self) -> bool:
        return bool(self._holes)

    def holes(self) -> list[Hole]:
        return list(self._holes)

    def within(self, start: int, end: int) -> list[Hole]:
        """The holes overlapping bytes [start, end)."""
        if end <= start or not self._holes:
            return []
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        found = []
        while i < len(self._holes) and self._holes[i].offset < end:
            if self._holes[i].end > start:
                found.append(self._holes[i])
            i += 1
        return found

    def first_within(self, start: int, end: int) -> Hole | None:
        found = self.within(start, end)
        return found[0] if found else None

    def discard(self, gone: Iterable[Hole]) -> None:
        """Drop these holes from this view only (HoleStore.filled also drops their rows)."""
        gone_offsets = {h.offset for h in gone}
        self._holes = [h for h in self._holes if h.offset not in gone_offsets]
        self._starts = [h.offset for h in self._holes]


class HoleStore:
    """Every sparse local copy's holes: in memory for the readers, and in the index's `holes` table so a
    crash or restart never lets the zeros of a hole pass for the file's bytes."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.conn = index.conn
        self._files: dict[int, SparseFile] = {}
        self._load()

    def _load(self) -> None:
        with self.index.transaction():
            # Rows of a copy that is gone describe nothing. Tree drops them in the transaction that drops
            # the copy, so there should be none; this only makes sure.
            self.conn.execute("DELETE FROM holes WHERE inode NOT IN (SELECT inode FROM inodes WHERE local_data = 1)")
        by_inode: dict[int, list[Hole]] = {}
        for inode, offset, size, h, node_id, version in self.conn.execute(
                "SELECT inode, offset, size, hash, node_id, version FROM holes"):
            by_inode.setdefault(inode, []).append(Hole(offset, size, h, node_id, version))
        self._files = {inode: SparseFile(inode, holes) for inode, holes in by_inode.items()}
        if self._files:
            log.info("%d local copies are sparse (%d chunks not fetched yet)", len(self._files),
                     sum(len(f) for f in self._files.values()))

    def get(self, inode: int) -> SparseFile | None:
        """The holes of `inode`'s local copy, or None when it has none (a whole copy, or none at all)."""
        return self._files.get(inode)

    def __contains__(self, inode: int) -> bool:
        return inode in self._files

    def make(self, inode: int, holes: list[Hole]) -> SparseFile:
        """`inode`'s new local copy holds none of these chunks yet; call in the transaction that records
        the copy, so that the index never has the copy without its holes."""
        self.drop(inode)
        with self.index.transaction():
            self.conn.executemany(
                "INSERT INTO holes(inode, offset, size, hash, node_id, version) VALUES (?, ?, ?, ?, ?, ?)",
                [(inode, h.offset, h.size, h.hash, h.node_id, h.version) for h in holes])
        f = self._files[inode] = SparseFile(inode, holes)
        return f

    def filled(self, f: SparseFile, holes: list[Hole]) -> None:
        """These holes of `f` now hold their chunks, durably (the caller synced the copy first)."""
        if f.current:
            with self.index.transaction():
                self.conn.executemany("DELETE FROM holes WHERE inode = ? AND offset = ?",
                                      [(f.inode, h.offset) for h in holes])
        f.discard(holes)
        if f.current and not f:
            del self._files[f.inode]

    def cut(self, inode: int, size: int) -> None:
        """The copy is cut to `size` bytes: the holes from there on are gone with it. (A hole the new end
        falls inside must be filled first: its start is still the file's.)"""
        f = self._files.get(inode)
        if f is None:
            return
        gone = [h for h in f.holes() if h.offset >= size]
        if any(h.offset < size < h.end for h in f.holes()):
            raise ValueError(f"inode {inode}: the new end {size} falls inside a hole")
        self.filled(f, gone)

    def drop(self, inode: int) -> None:
        """The local copy of `inode` is gone or replaced whole: forget its holes (open handles keep theirs)."""
        f = self._files.pop(inode, None)
        if f is not None:
            f.current = False
        with self.index.transaction():
            self.conn.execute("DELETE FROM holes WHERE inode = ?", (inode,))
