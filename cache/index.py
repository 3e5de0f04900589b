"""The client's SQLite index: what the cache holds, what must survive a crash, and small settings."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from cache.redo import RedoLog

__all__ = ["SCHEMA_VERSION", "Batch", "Index", "IndexVersionError", "UploadState", "create_tables"]

# Bump when create_tables changes in a way an existing index file needs migrating for.
SCHEMA_VERSION = 4

# Long enough to ride out another connection's checkpoint, short enough to surface a stuck one.
_BUSY_TIMEOUT_MS = 5000
# Batched blocks held in one open transaction at most (bounds the redo log and a replay after a kill).
BATCH_MAX = 512

log = logging.getLogger("drivefs.index")


class IndexVersionError(Exception):
    """The index file was written by a newer schema than this client knows."""


class Batch:
    """The handle of one batched block: it must end by logging the record that redoes it."""

    def __init__(self, redo: RedoLog | None) -> None:
        self._redo = redo
        self.logged = False

    def log(self, record: dict[str, Any]) -> None:
        if self._redo is not None:
            self._redo.append(record)
        self.logged = True


@dataclass(frozen=True)
class UploadState:
    """Progress of one resumable upload as it was last saved."""

    upload_key: str
    session_id: str | None
    updated: int


def create_tables(conn: apsw.Connection) -> None:
    """Create every table of the client index if missing, and stamp the schema version."""

    # Chunk files present under <cache_dir>/chunks. `hash` names the file (SHA-256 hex of the plain
    # bytes), `size` is its length in bytes, `last_access` is the LRU clock: a counter that only grows
    # (not wall time), larger means used more recently. A row may briefly outlive its file (a crash
    # between unlink and delete); readers treat a missing file as a miss and drop the row.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS cached_chunks (
            hash        TEXT PRIMARY KEY,
            size        INTEGER NOT NULL,
            last_access INTEGER NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS cached_chunks_lru ON cached_chunks(last_access)")

    # Partial chunks: chunks of which only some blocks were fetched (byte ranges, for random reads), in
    # <cache_dir>/chunks/<hash[:2]>/<hash>.blocks, a file of the chunk's full `size` that holds only those
    # blocks (sparse elsewhere). `block_size` and `digests` (the server's SHA-256 of each block, 32 bytes
    # each, concatenated) describe the blocks; `present` is a bitmap of the blocks held (bit i of byte
    # i // 8), a bit set only after the block's verified bytes are written; `bytes` is what those blocks
    # hold, counted against the cache limit; `last_access` is the LRU clock of cached_chunks. Once every
    # block is present the file is checked against the chunk's hash and moves to cached_chunks, and a
    # whole fetch of the chunk replaces it. Reads check a block's bytes against its digest every time,
    # so a bit that outlived its bytes (power cut) is only a miss.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS partial_chunks (
            hash        TEXT PRIMARY KEY,
            size        INTEGER NOT NULL,
            block_size  INTEGER NOT NULL,
            digests     BLOB NOT NULL,
            present     BLOB NOT NULL,
            bytes       INTEGER NOT NULL,
            last_access INTEGER NOT NULL
        )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS partial_chunks_lru ON partial_chunks(last_access)")

    # Chunks that eviction must not delete. `owner` is an opaque tag for who needs the chunk, e.g.
    # 'file:<inode>' for a dirty file not yet uploaded, 'pin:<inode>' for a file `drive pin` covers.
    # A chunk is pinned while any owner holds it. A pin may name a chunk not (yet) in cached_chunks.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS chunk_pins (
            hash  TEXT NOT NULL,
            owner TEXT NOT NULL,
            PRIMARY KEY (hash, owner)
        )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS chunk_pins_owner ON chunk_pins(owner)")

    # Files and folders pinned with `drive pin`: kept on this device, now and as they change. `inode` is
    # the pinned node (a folder covers everything below it); the chunks each covered file needs are
    # pinned in chunk_pins under 'pin:<inode of the file>'.
    conn.execute("CREATE TABLE IF NOT EXISTS pinned (inode INTEGER PRIMARY KEY)")

    # Small settings and cursors, e.g. 'feed_cursor'. Values are text; callers encode anything else.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS kv (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        )"""
    )

    # Resumable uploads, so that one interrupted by a crash or reboot continues where it stopped.
    # `upload_key` is chosen by the uploader (e.g. 'file:<inode>'); `session_id` is the server's upload
    # session, NULL until one is opened; `updated` is unix seconds. Which chunks are already up is not
    # kept here: the server answers that (/chunks/missing), so the row stays small for any file size.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS upload_state (
            upload_key  TEXT PRIMARY KEY,
            session_id  TEXT,
            updated     INTEGER NOT NULL
        )"""
    )

    # The local tree the kernel sees. `inode` is the number handed to the kernel: never reused
    # (AUTOINCREMENT), 1 is the drive's root and 2 the virtual 'Shared with me' folder. `node_id` is the
    # server's id, NULL until a pending op creates the node there. `parent_inode` is NULL for a node that
    # was unlinked but is still open, looked up by the kernel or named by a pending op (kept until all
    # three are gone). `version` is the server version the local state is based on (the base of the next
    # commit). `access` is the caller's access ('owner', 'write', 'read'). `listed` = 1 once a folder's
    # children were fetched from the server. `local_data` = 1 when <cache_dir>/files/<inode> holds the
    # file's whole current content (written here, or materialised for writing), except the chunks named
    # in `holes` (a sparse copy); otherwise the content is the manifest's chunks. `content_gen` counts
    # local content changes and `synced_gen` is the last one committed on the server: the file has
    # changes to upload while content_gen > synced_gen.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS inodes (
            inode        INTEGER PRIMARY KEY AUTOINCREMENT,
            node_id      INTEGER UNIQUE,
            parent_inode INTEGER,
            name         TEXT NOT NULL,
            kind         TEXT NOT NULL,
            mode         INTEGER NOT NULL,
            size         INTEGER NOT NULL DEFAULT 0,
            mtime_ns     INTEGER NOT NULL,
            ctime_ns     INTEGER NOT NULL,
            version      INTEGER NOT NULL DEFAULT 0,
            content_hash TEXT,
            target       TEXT,
            owner        TEXT,
            access       TEXT NOT NULL DEFAULT 'owner',
            listed       INTEGER NOT NULL DEFAULT 0,
            local_data   INTEGER NOT NULL DEFAULT 0,
            content_gen  INTEGER NOT NULL DEFAULT 0,
            synced_gen   INTEGER NOT NULL DEFAULT 0
        )"""
    )
    conn.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS inodes_name ON inodes(parent_inode, name)"
        " WHERE parent_inode IS NOT NULL"
    )
    conn.execute("CREATE INDEX IF NOT EXISTS inodes_dirty ON inodes(inode) WHERE content_gen > synced_gen")

    # The chunk list of a file's current server version, for reads: JSON [[hash, size], ...] in file
    # order. Replaced when the version changes; absent until first needed.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS manifests (
            inode   INTEGER PRIMARY KEY,
            version INTEGER NOT NULL,
            chunks  TEXT NOT NULL
        )"""
    )

    # Chunks a sparse local copy does not hold yet (see cache/holes.py): bytes [offset, offset + size) of
    # <cache_dir>/files/<inode> are still chunk `hash`, fetchable as part of (node_id, version), and hold
    # zeros on disk until filled. A row goes only after its chunk's bytes are written and synced, so a
    # crash never lets the zeros pass for content. Rows exist only while the inode's local_data = 1.
    # Version 4 added this table: an older client, which would read the zeros, refuses the index.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS holes (
            inode   INTEGER NOT NULL,
            offset  INTEGER NOT NULL,
            size    INTEGER NOT NULL,
            hash    TEXT NOT NULL,
            node_id INTEGER NOT NULL,
            version INTEGER NOT NULL,
            PRIMARY KEY (inode, offset)
        )"""
    )

    # Local tree changes not yet applied on the server, replayed in `seq` order so the server passes
    # through the same states as the local tree. `kind` is mkdir, symlink, create, rename, unlink,
    # rmdir or setattr; `inode` the node acted on; `parent_inode`/`name` its (new) place; `other_inode`
    # the node a rename replaced; `args` JSON extras (setattr: mode/mtime_ns). Rows of every inode an op
    # names are kept until the op is done. File contents are not ops: they follow
    # content_gen/synced_gen in `inodes`. `attempts` and `last_error` record failed tries.
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS ops (
            seq          INTEGER PRIMARY KEY AUTOINCREMENT,
            kind         TEXT NOT NULL,
            inode        INTEGER NOT NULL,
            parent_inode INTEGER,
            name         TEXT,
            other_inode  INTEGER,
            args         TEXT NOT NULL DEFAULT '{}',
            created_ns   INTEGER NOT NULL,
            attempts     INTEGER NOT NULL DEFAULT 0,
            last_error   TEXT
        )"""
    )
    conn.execute("CREATE INDEX IF NOT EXISTS ops_inode ON ops(inode)")
    conn.execute("CREATE INDEX IF NOT EXISTS ops_parent ON ops(parent_inode)")
    conn.execute("CREATE INDEX IF NOT EXISTS ops_other ON ops(other_inode)")

    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class Index:
    """One apsw connection to one account's index file.

    Writers go through transaction(), which also holds a lock, so that threads sharing this
    connection never interleave their savepoints.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.conn = apsw.Connection(self.path)
        self._lock = threading.RLock()
        self.conn.set_busy_timeout(_BUSY_TIMEOUT_MS)
        # WAL lets readers run during a write. NORMAL in WAL mode may lose the last commits on power
        # loss but never corrupts the file, and it spares an fsync per commit on the read path.
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.redo = RedoLog(Path(self.path + "-redo"))
        self.replay: Callable[[list[dict[str, Any]]], None] | None = None  # set by the owner of the records
        self._depth = 0  # blocks (transaction or batched) open on the lock's owner
        self._batch_blocks = 0  # batched blocks in the open batch; 0 when none is open
        self._batch_opened = 0.0
        found = self._check_version()
        with self.transaction():
            _migrate(self.conn, found)
            create_tables(self.conn)

    def _check_version(self) -> int:
        found = self.conn.execute("PRAGMA user_version").get
        if found > SCHEMA_VERSION:
            raise IndexVersionError(
                f"{self.path} has index schema {found}, this client knows up to {SCHEMA_VERSION}"
            )
        return found

    @property
    def in_block(self) -> bool:
        """True inside a transaction or batched block: what is read there may still be rolled back."""
        return self._depth > 0

    @contextmanager
    def transaction(self) -> Iterator[apsw.Connection]:
        """Run the block as one transaction (a savepoint when nested); rolled back if it raises. An open
        batch is committed first, so this block's changes never wait on a redo log."""
        with self._lock:
            if self._depth == 0:
                self._commit_batch()
            self._depth += 1
            try:
                with self.conn:
                    yield self.conn
            finally:
                self._depth -= 1

    @contextmanager
    def batched(self) -> Iterator[Batch]:
        """Run the block in a savepoint of a transaction left open for the next batched blocks, and
        committed with them by commit_batch (or by the next transaction). Instead of a commit, the block
        ends with `batch.log(record)`: one write to the redo log, from which `replay` rebuilds the
        block's changes if the process dies before the commit. Only blocks whose changes the record
        fully describes may be batched."""
        with self._lock:
            if self._depth == 0 and self._batch_blocks >= BATCH_MAX:
                self._commit_batch()
            if self._depth == 0 and self._batch_blocks == 0:
                self.conn.execute("BEGIN IMMEDIATE")
                self._batch_opened = time.monotonic()
            batch = Batch(self.redo if self._depth == 0 else None)  # nested: the outer block commits it
            self._depth += 1
            try:
                with self.conn:
                    yield batch
                    if not batch.logged:
                        raise RuntimeError("a batched block ended without logging its redo record")
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._batch_blocks += 1  # counted even if it rolled back: the batch is open

    def commit_batch(self, older_than: float = 0.0) -> None:
        """Commit the open batch, if any (only one opened at least `older_than` seconds ago)."""
        with self._lock:
            if self._depth == 0 and self._batch_blocks and time.monotonic() - self._batch_opened >= older_than:
                self._commit_batch()

    def _commit_batch(self) -> None:
        if not self._batch_blocks:
            return
        try:
            self.conn.execute("COMMIT")
        except apsw.Error:
            if not self.conn.in_transaction:  # SQLite rolled it back (a full disk): hold it again
                self._batch_blocks = 0
                self._reopen_batch()
            raise  # the batch stays open and in the redo log: the next commit tries again
        self._batch_blocks = 0
        self.redo.clear()

    def _reopen_batch(self) -> None:
        """Open a batch holding what the redo log records (each record skipped if already committed).
        It costs no disk space until its commit, so a full disk cannot make it fail."""
        records = self.redo.records()
        if not records:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._batch_opened = time.monotonic()
        self._batch_blocks = len(records)
        self._depth += 1
        try:
            if self.replay is not None:
                self.replay(records)
        finally:
            self._depth -= 1

    def recover(self, replay: Callable[[list[dict[str, Any]]], None]) -> None:
        """Name the function that re-applies redo records, and put back (and commit, room permitting)
        what a killed process left in the redo log."""
        self.replay = replay
        with self._lock:
            self._reopen_batch()
            try:
                self._commit_batch()
            except apsw.FullError:
                log.warning("the cache disk is full: new files from before the restart stay in the redo log "
                            "until it has room")

    def close(self) -> None:
        with self._lock:
            try:
                self._commit_batch()
            except apsw.Error as e:  # e.g. a full disk: the next start puts the batch back from the redo log
                log.warning("new files stay in the redo log until the next start: %s", e)
            self.conn.close()
            self.redo.close()

    def sync(self) -> None:
        """Make every commit so far durable: one commit with synchronous=FULL fsyncs the whole WAL."""
        with self._lock:
            self._commit_batch()
            self.conn.execute("PRAGMA synchronous = FULL")
            try:
                with self.conn:
                    self.conn.execute("INSERT OR REPLACE INTO kv(key, value) VALUES ('synced_at', ?)",
                                      (str(time.time()),))
            finally:
                self.conn.execute("PRAGMA synchronous = NORMAL")

    def get_kv(self, key: str, default: str | None = None) -> str | None:
        value = self.conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).get
        return default if value is None else value

    def set_kv(self, key: str, value: str) -> None:
        with self.transaction():
            self.conn.execute("INSERT OR REPLACE INTO kv(key, value) VALUES (?, ?)", (key, value))

    def delete_kv(self, key: str) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM kv WHERE key = ?", (key,))

    def save_upload(self, upload_key: str, session_id: str | None) -> None:
        """Record (replacing any earlier record) the server session of one upload."""
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO upload_state(upload_key, session_id, updated) VALUES (?, ?, ?)",
                (upload_key, session_id, _now()),
            )

    def load_upload(self, upload_key: str) -> UploadState | None:
        row = self.conn.execute(
            "SELECT session_id, updated FROM upload_state WHERE upload_key = ?", (upload_key,)
        ).fetchone()
        if row is None:
            return None
        return UploadState(upload_key=upload_key, session_id=row[0], updated=row[1])

    def list_uploads(self) -> list[str]:
        """Keys of every saved upload, oldest first: what to resume after a restart."""
        rows = self.conn.execute("SELECT upload_key FROM upload_state ORDER BY updated, upload_key")
        return [key for (key,) in rows]

    def drop_upload(self, upload_key: str) -> None:
        with self.transaction():
            self.conn.execute("DELETE FROM upload_state WHERE upload_key = ?", (upload_key,))


def _migrate(conn: apsw.Connection, found: int) -> None:
    """Bring an index written by an older client up to SCHEMA_VERSION (create_tables adds what is new)."""
    if 0 < found < 2:
        # Version 1 kept each upload's manifest and done set; uploads now ask the server what it lacks.
        # Dropping the rows only means an interrupted upload opens a new session.
        conn.execute("DROP TABLE IF EXISTS upload_state")


def _now() -> int:
    return int(time.time())
