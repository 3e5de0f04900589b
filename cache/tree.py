"""The local tree in the index: inodes and their server ids, manifests, and the queue of pending ops."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import apsw
from cachetools import LRUCache

from cache.holes import HoleStore
from cache.index import Index

log = logging.getLogger("drivefs.tree")

ROOT_INODE = 1
SHARED_INODE = 2
SHARED_NAME = "Shared with me"

_COLS = (
    "inode", "node_id", "parent_inode", "name", "kind", "mode", "size", "mtime_ns", "ctime_ns", "version",
    "content_hash", "target", "owner", "access", "listed", "local_data", "content_gen", "synced_gen",
)
_SELECT = "SELECT " + ", ".join(_COLS) + " FROM inodes"

# Entries kept in memory: enough for the folders and files a program is working in, small enough
# (a few hundred bytes each) not to show in the daemon's RSS.
ENTRY_CACHE_SIZE = 8192


@dataclass(frozen=True, slots=True)
class Entry:
    """One local node (see the `inodes` table in cache/index.py for what each field means)."""

    inode: int
    node_id: int | None
    parent_inode: int | None
    name: str
    kind: str
    mode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    version: int
    content_hash: str | None
    target: str | None
    owner: str | None
    access: str
    listed: bool
    local_data: bool
    content_gen: int
    synced_gen: int

    @property
    def dirty(self) -> bool:
        return self.content_gen > self.synced_gen

    @property
    def writable(self) -> bool:
        return self.access != "read"


@dataclass(frozen=True)
class Op:
    """A pending change to replay on the server."""

    seq: int
    kind: str
    inode: int
    parent_inode: int | None
    name: str | None
    other_inode: int | None
    args: dict[str, Any]
    attempts: int


def _entry(row: tuple) -> Entry:
    values = list(row)
    values[14] = bool(values[14])
    values[15] = bool(values[15])
    return Entry(*values)


class Tree:
    """Queries and updates of the local tree; every method is one short transaction.

    Every change to the `inodes` table goes through this object, so it keeps the entries it read last
    in memory (a lookup or getattr then runs no SQL). Only rows that stay are kept: committed ones, or
    ones in an open batch (which the redo log keeps); a read inside a transaction or batched block is
    not cached (it may roll back), and each write drops the entry it touches first.
    """

    def __init__(self, index: Index, files_dir: Path) -> None:
        self.index = index
        self.conn = index.conn
        self.files_dir = files_dir
        files_dir.mkdir(parents=True, exist_ok=True)
        self._entries: LRUCache[int, Entry] = LRUCache(ENTRY_CACHE_SIZE)
        # (parent, name) -> inode; only a hint, checked against the entry it names on every use.
        self._names: LRUCache[tuple[int, str], int] = LRUCache(ENTRY_CACHE_SIZE)
        index.recover(self.replay_batch)  # what a killed process held in its last open batch
        self.holes = HoleStore(index)

    # ---- reading -------------------------------------------------------------------------------

    def get(self, inode: int) -> Entry | None:
        e = self._entries.get(inode)
        if e is not None:
            return e
        row = self.conn.execute(f"{_SELECT} WHERE inode = ?", (inode,)).fetchone()
        return self._keep(_entry(row)) if row else None

    def _keep(self, e: Entry) -> Entry:
        if not self.index.in_block:
            self._entries[e.inode] = e
            if e.parent_inode is not None:
                self._names[(e.parent_inode, e.name)] = e.inode
        return e

    def _forget(self, inode: int) -> None:
        self._entries.pop(inode, None)

    def by_node(self, node_id: int) -> Entry | None:
        row = self.conn.execute(f"{_SELECT} WHERE node_id = ?", (node_id,)).fetchone()
        return _entry(row) if row else None

    def child(self, parent_inode: int, name: str) -> Entry | None:
        inode = self._names.get((parent_inode, name))
        if inode is not None:
            e = self.get(inode)
            if e is not None and e.parent_inode == parent_inode and e.name == name:
                return e
            self._names.pop((parent_inode, name), None)
        row = self.conn.execute(f"{_SELECT} WHERE parent_inode = ? AND name = ?", (parent_inode, name)).fetchone()
        return self._keep(_entry(row)) if row else None

    def children(self, parent_inode: int, after_inode: int = 0, limit: int = 10_000) -> list[Entry]:
        """Children in inode order, so readdir offsets (the inode) stay stable while the folder changes."""
        return [_entry(r) for r in self.conn.execute(
            f"{_SELECT} WHERE parent_inode = ? AND inode > ? ORDER BY inode LIMIT ?", (parent_inode, after_inode, limit))]

    def has_children(self, parent_inode: int) -> bool:
        return self.conn.execute("SELECT 1 FROM inodes WHERE parent_inode = ? LIMIT 1", (parent_inode,)).fetchone() is not None

    def local_files(self) -> list[Entry]:
        """Files whose whole content is in a local data file."""
        return [_entry(r) for r in self.conn.execute(f"{_SELECT} WHERE local_data = 1 ORDER BY inode")]

    def dirty_files(self) -> list[Entry]:
        return [_entry(r) for r in self.conn.execute(f"{_SELECT} WHERE content_gen > synced_gen ORDER BY inode")]

    def data_path(self, inode: int) -> Path:
        """Where a file's whole local content lives while it is written or materialised."""
        return self.files_dir / str(inode)

    def manifest(self, inode: int) -> tuple[int, list[tuple[str, int]]] | None:
        row = self.conn.execute("SELECT version, chunks FROM manifests WHERE inode = ?", (inode,)).fetchone()
        return (row[0], [tuple(c) for c in json.loads(row[1])]) if row else None

    # ---- writing -------------------------------------------------------------------------------

    def ensure_roots(self, root_node_id: int | None) -> None:
        now = time.time_ns()
        self._forget(ROOT_INODE)
        self._forget(SHARED_INODE)
        with self.index.transaction():
            if self.get(1) is None:
                self.conn.execute(
                    "INSERT INTO inodes(inode, node_id, parent_inode, name, kind, mode, mtime_ns, ctime_ns)"
                    " VALUES (1, ?, NULL, '', 'dir', ?, ?, ?)", (root_node_id, 0o755, now, now))
            elif root_node_id is not None:
                self.conn.execute("UPDATE inodes SET node_id = ? WHERE inode = 1", (root_node_id,))
            if self.get(SHARED_INODE) is None:
                self.conn.execute(
                    "INSERT INTO inodes(inode, node_id, parent_inode, name, kind, mode, mtime_ns, ctime_ns, access)"
                    " VALUES (2, NULL, 1, ?, 'dir', ?, ?, ?, 'read')", (SHARED_NAME, 0o555, now, now))

    def add(self, parent_inode: int, name: str, kind: str, mode: int, *, node_id: int | None = None,
            size: int = 0, mtime_ns: int | None = None, ctime_ns: int | None = None, version: int = 0,
            target: str | None = None, owner: str | None = None, access: str = "owner",
            listed: bool = False, local_data: bool = False, content_hash: str | None = None,
            content_gen: int = 0, inode: int | None = None) -> Entry:
        """Insert a row and return its entry; under the next inode number, or under `inode` when putting
        back a row made before a crash."""
        now = time.time_ns()
        with self.index.transaction():
            self.conn.execute(
                "INSERT INTO inodes(inode, node_id, parent_inode, name, kind, mode, size, mtime_ns, ctime_ns,"
                " version, target, owner, access, listed, local_data, content_hash, content_gen)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (inode, node_id, parent_inode, name, kind, mode, size, mtime_ns or now, ctime_ns or now, version,
                 target, owner, access, int(listed), int(local_data), content_hash, content_gen))
            inode = self.conn.last_insert_rowid()
        entry = self.get(inode)
        assert entry is not None
        return entry

    def update(self, inode: int, **changes: Any) -> Entry:
        bad = set(changes) - {f.name for f in fields(Entry)}
        if bad or "inode" in changes:
            raise ValueError(f"cannot update {sorted(bad | ({'inode'} & set(changes)))}")
        if changes:
            sets = ", ".join(f"{k} = ?" for k in changes)
            values = [int(v) if isinstance(v, bool) else v for v in changes.values()]
            self._forget(inode)
            with self.index.transaction():
                self.conn.execute(f"UPDATE inodes SET {sets} WHERE inode = ?", (*values, inode))
                if "local_data" in changes:  # a copy dropped or made anew: the old one's holes are not its
                    self.holes.drop(inode)
        entry = self.get(inode)
        assert entry is not None
        return entry

    def remove(self, inode: int, recycle: Callable[[Path], bool] | None = None) -> None:
        """Delete the row and its local data file, or hand that file to `recycle` (which returns False
        when it will not take it)."""
        self._forget(inode)
        with self.index.transaction():
            self.conn.execute("DELETE FROM inodes WHERE inode = ?", (inode,))
            self.conn.execute("DELETE FROM manifests WHERE inode = ?", (inode,))
            self.holes.drop(inode)
        path = self.data_path(inode)
        if recycle is None or not recycle(path):
            path.unlink(missing_ok=True)

    def set_manifest(self, inode: int, version: int, chunks: list[tuple[str, int]]) -> None:
        with self.index.transaction():
            self.conn.execute("INSERT OR REPLACE INTO manifests(inode, version, chunks) VALUES (?, ?, ?)",
                              (inode, version, json.dumps(chunks)))

    # ---- the op queue --------------------------------------------------------------------------

    def enqueue(self, kind: str, inode: int, parent_inode: int | None = None, name: str | None = None,
                other_inode: int | None = None, *, seq: int | None = None, **args: Any) -> int:
        """Queue an op (under `seq` when replaying one, else the next number); its sequence number."""
        with self.index.transaction():
            self.conn.execute(
                "INSERT INTO ops(seq, kind, inode, parent_inode, name, other_inode, args, created_ns)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, kind, inode, parent_inode, name, other_inode, json.dumps(args), time.time_ns()))
            return self.conn.last_insert_rowid()

    # ---- batched creates -----------------------------------------------------------------------

    @staticmethod
    def created_record(e: Entry, seq: int) -> dict[str, Any]:
        """What replay_batch needs to make again a new, empty, dirty file row and its create op."""
        return {"t": "create", "inode": e.inode, "parent": e.parent_inode, "name": e.name, "mode": e.mode,
                "mtime": e.mtime_ns, "ctime": e.ctime_ns, "owner": e.owner, "access": e.access, "seq": seq}

    @staticmethod
    def setattr_record(inode: int, ctime_ns: int, changes: dict[str, Any], seq: int) -> dict[str, Any]:
        """What replay_batch needs to apply a mode or mtime change and its setattr op again."""
        return {"t": "setattr", "inode": inode, "ctime": ctime_ns, "changes": changes, "seq": seq}

    def replay_batch(self, records: list[dict[str, Any]]) -> None:
        """Apply again the records of a batch that was not committed (created_record, setattr_record), in
        order; a record whose op is already in the index was committed and is skipped."""
        for r in records:
            if self.conn.execute("SELECT 1 FROM ops WHERE seq = ?", (r.get("seq"),)).fetchone():
                continue  # committed: killed after the commit, before the log was emptied
            try:
                with self.index.transaction():
                    self._redo(r)
            except (apsw.ConstraintError, KeyError, ValueError) as e:
                log.error("cannot apply again a change made just before the last stop (%r): %s", r, e)

    def _redo(self, r: dict[str, Any]) -> None:
        if r["t"] == "create":
            if self.conn.execute("SELECT 1 FROM inodes WHERE inode = ?", (r["inode"],)).fetchone():
                return  # the row is there already (cannot happen while seqs are never reused)
            self.add(r["parent"], r["name"], "file", r["mode"], mtime_ns=r["mtime"], ctime_ns=r["ctime"],
                     owner=r["owner"], access=r["access"], local_data=True, content_gen=1, inode=r["inode"])
            self.enqueue("create", r["inode"], r["parent"], r["name"], seq=r["seq"])
            log.info("put back new file %r (inode %d), made just before the last stop", r["name"], r["inode"])
        elif r["t"] == "setattr":
            changes = {k: int(v) for k, v in r["changes"].items() if k in ("mode", "mtime_ns")}
            if not changes or self.get(r["inode"]) is None:
                return
            self.update(r["inode"], ctime_ns=int(r["ctime"]), **changes)
            self.enqueue("setattr", r["inode"], seq=r["seq"], **changes)
        else:
            raise ValueError(f"unknown record type {r['t']!r}")

    def ops(self, limit: int = 100) -> Iterator[Op]:
        for seq, kind, inode, parent, name, other, args, attempts in self.conn.execute(
            "SELECT seq, kind, inode, parent_inode, name, other_inode, args, attempts FROM ops ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall():
            yield Op(seq, kind, inode, parent, name, other, json.loads(args), attempts)

    def ops_of(self, inode: int, kind: str) -> list[Op]:
        """The queued ops of one kind on one node, in queue order."""
        return [Op(seq, kind, inode, parent, name, other, json.loads(args), attempts)
                for seq, parent, name, other, args, attempts in self.conn.execute(
                    "SELECT seq, parent_inode, name, other_inode, args, attempts FROM ops"
                    " WHERE inode = ? AND kind = ? ORDER BY seq", (inode, kind))]

    def op_done(self, *seqs: int) -> None:
        with self.index.transaction():
            self.conn.executemany("DELETE FROM ops WHERE seq = ?", ((seq,) for seq in seqs))

    def op_failed(self, seq: int, error: str) -> None:
        with self.index.transaction():
            self.conn.execute("UPDATE ops SET attempts = attempts + 1, last_error = ? WHERE seq = ?", (error, seq))

    def pending_ops(self) -> int:
        return self.conn.execute("SELECT count(*) FROM ops").fetchone()[0]

    def pending_items(self) -> int:
        """Files and folders with a change not yet on the server: each counted once, however many ops and
        new content it has (a new file is both a create op and dirty content)."""
        return self.conn.execute(
            "SELECT count(*) FROM (SELECT inode FROM ops UNION"
            " SELECT inode FROM inodes WHERE content_gen > synced_gen AND parent_inode IS NOT NULL)").fetchone()[0]

    def named_by_ops(self, inode: int) -> bool:
        """Whether a pending op still needs this inode's row (as subject, place or replaced node)."""
        return self.conn.execute(
            "SELECT 1 FROM ops WHERE inode = ? OR parent_inode = ? OR other_inode = ? LIMIT 1", (inode, inode, inode)
        ).fetchone() is not None

    def orphans(self) -> list[Entry]:
        return [_entry(r) for r in self.conn.execute(f"{_SELECT} WHERE parent_inode IS NULL AND inode > 2")]
