"""The metadata store: every rule of the tree, versions, chunks, shares and the feed, in portable SQL.

Handlers call this and nothing else for metadata. All SQL is dialect-neutral (see db.py), so a
PostgreSQL adapter reuses this file unchanged. Every write happens in one transaction that also writes
the journal and the feed, so a change and its announcement are atomic.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .. import limits, models
from ..errors import (
    ApiError,
    BadRequest,
    Conflict,
    CrossOwner,
    Exists,
    Forbidden,
    Gone,
    Invalid,
    IsADirectory,
    MissingChunks,
    NotADirectory,
    NotEmpty,
    NotFound,
    VersionConflict,
)
from .db import Database, Tx
from .schema import migrate

_NODE_COLS = (
    "n.id, n.parent_id, u.name, n.name, n.kind, n.mode, n.mtime_ns, n.ctime_ns, n.size, n.version,"
    " n.content_hash, n.target, n.deleted, n.owner_id"
)
_NODE_FROM = "FROM nodes n JOIN users u ON u.id = n.owner_id"
_ACCESS_RANK = {"read": 1, "write": 2, "owner": 3}
_IN_BATCH = 500


@dataclass(frozen=True)
class User:
    """An authenticated caller."""

    id: int
    name: str
    root_id: int


@dataclass(frozen=True)
class NodeRow:
    """A node as stored, plus its owner's name."""

    id: int
    parent_id: int | None
    owner: str
    name: str
    kind: str
    mode: int
    mtime_ns: int
    ctime_ns: int
    size: int
    version: int
    content_hash: str | None
    target: str | None
    deleted: bool
    owner_id: int

    def out(self, access: str) -> models.Node:
        return models.Node(
            id=self.id, parent_id=self.parent_id, owner=self.owner, name=self.name, kind=self.kind,
            mode=self.mode, mtime_ns=self.mtime_ns, ctime_ns=self.ctime_ns, size=self.size,
            version=self.version, content_hash=self.content_hash, target=self.target,
            deleted=self.deleted, access=access,
        )


@dataclass(frozen=True)
class ChunkInfo:
    """A chunk present in the blob store."""

    hash: str
    size: int
    stored_size: int
    encoding: str
    # SHA-256 (hex, concatenated) of each limits.BLOCK_BYTES block of the plain bytes; only for encoding
    # 'none', and None for chunks stored before the server computed them (those are fetched whole).
    block_hashes: str | None = None


_CHUNK_COLUMNS = "hash, size, stored_size, encoding, block_hashes"


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _batches(items: Sequence[Any], n: int = _IN_BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _marks(n: int) -> str:
    return ",".join("?" * n)


class _Writer:
    """Collects the feed entries of one write transaction."""

    def __init__(self, tx: Tx, now: int) -> None:
        self.tx = tx
        self.now = now
        self.touched: set[int] = set()


class MetadataStore:
    """The drive's metadata: users, tree, versions, chunks, shares, upload sessions and the feed."""

    def __init__(self, db: Database, on_change: Callable[[set[int]], None] | None = None,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.db = db
        self._on_change = on_change or (lambda users: None)
        self._clock = clock

    # ---- setup -------------------------------------------------------------------------------

    def init_schema(self) -> None:
        """Create or upgrade the schema (idempotent; see schema.migrate)."""
        with self.db.transaction(write=True) as tx:
            migrate(tx, self.db.dialect)

    @contextmanager
    def _write(self) -> Iterator[_Writer]:
        with self.db.transaction(write=True) as tx:
            w = _Writer(tx, self._clock())
            yield w
        if w.touched:
            self._on_change(w.touched)

    # ---- users and tokens --------------------------------------------------------------------

    def add_user(self, name: str) -> tuple[User, str]:
        """Create a user with an empty drive; return it and its first token (shown once)."""
        name = name.strip()
        if not name or len(name) > 255 or any(c in name for c in "/\x00\n\r\t"):
            raise BadRequest("a user name must be 1-255 characters without '/', NUL or control characters")
        with self._write() as w:
            if w.tx.one("SELECT 1 FROM users WHERE name = ?", (name,)):
                raise Exists(f"user {name!r} already exists")
            uid = w.tx.one("INSERT INTO users(name, created_ns) VALUES (?, ?) RETURNING id", (name, w.now))[0]
            root = w.tx.one(
                "INSERT INTO nodes(owner_id, parent_id, name, kind, mode, mtime_ns, ctime_ns)"
                " VALUES (?, NULL, '', 'dir', ?, ?, ?) RETURNING id",
                (uid, 0o755, w.now, w.now),
            )[0]
            w.tx.execute("UPDATE users SET root_id = ? WHERE id = ?", (root, uid))
            token = self._new_token(w.tx, uid, w.now)
        return User(uid, name, root), token

    def new_token(self, name: str) -> str:
        """Issue another token for an existing user."""
        with self._write() as w:
            row = w.tx.one("SELECT id FROM users WHERE name = ?", (name,))
            if row is None:
                raise NotFound(f"no user named {name!r}")
            return self._new_token(w.tx, row[0], w.now)

    def _new_token(self, tx: Tx, uid: int, now: int) -> str:
        token = "drv_" + secrets.token_urlsafe(32)
        tx.execute("INSERT INTO tokens(token_hash, user_id, created_ns) VALUES (?, ?, ?)",
                   (_token_hash(token), uid, now))
        return token

    def user_by_token(self, token: str) -> User | None:
        with self.db.transaction() as tx:
            row = tx.one(
                "SELECT u.id, u.name, u.root_id FROM tokens t JOIN users u ON u.id = t.user_id"
                " WHERE t.token_hash = ?",
                (_token_hash(token),),
            )
        return User(*row) if row else None

    def list_users(self) -> list[str]:
        with self.db.transaction() as tx:
            return [r[0] for r in tx.all("SELECT name FROM users ORDER BY name")]

    # ---- access ------------------------------------------------------------------------------

    def _row(self, tx: Tx, node_id: int) -> NodeRow | None:
        row = tx.one(f"SELECT {_NODE_COLS} {_NODE_FROM} WHERE n.id = ?", (node_id,))
        return NodeRow(*row[:12], bool(row[12]), row[13]) if row else None

    def _ancestors(self, tx: Tx, node_id: int) -> list[tuple[int, int | None, int]]:
        """(id, parent_id, deleted) from the node up to its root."""
        return tx.all(
            "WITH RECURSIVE anc(id, parent_id, deleted, depth) AS ("
            " SELECT id, parent_id, deleted, 0 FROM nodes WHERE id = ?"
            " UNION ALL SELECT n.id, n.parent_id, n.deleted, anc.depth + 1"
            " FROM nodes n JOIN anc ON n.id = anc.parent_id)"
            " SELECT id, parent_id, deleted FROM anc ORDER BY depth",
            (node_id,),
        )

    def _access(self, tx: Tx, user: User, node_id: int, *, allow_deleted: bool = False) -> tuple[NodeRow, str]:
        """The node and the caller's access to it; NotFound if it is gone or not theirs to see."""
        row = self._row(tx, node_id)
        if row is None:
            raise NotFound(f"no node {node_id}")
        chain = self._ancestors(tx, node_id)
        hidden = [a for a in chain if a[2]]
        # allow_deleted: the node itself may be in the trash (folders above it too; restore_node then says so)
        if hidden and not (allow_deleted and hidden[0] == chain[0]):
            raise NotFound(f"no node {node_id}")
        if row.owner_id == user.id:
            return row, "owner"
        best = None
        for batch in _batches([a[0] for a in chain]):
            for (perm,) in tx.all(
                f"SELECT permission FROM shares WHERE user_id = ? AND node_id IN ({_marks(len(batch))})",
                (user.id, *batch),
            ):
                if best is None or _ACCESS_RANK[perm] > _ACCESS_RANK[best]:
                    best = perm
        if best is None:
            raise NotFound(f"no node {node_id}")
        return row, best

    def _writable(self, tx: Tx, user: User, node_id: int, **kw: bool) -> NodeRow:
        row, access = self._access(tx, user, node_id, **kw)
        if access == "read":
            raise Forbidden(f"{row.name or 'this folder'!r} is shared with you read-only")
        return row

    def _folder(self, tx: Tx, user: User, node_id: int, write: bool) -> tuple[NodeRow, str]:
        row, access = self._access(tx, user, node_id)
        if row.kind != "dir":
            raise NotADirectory(f"{row.name!r} is not a folder")
        if write and access == "read":
            raise Forbidden(f"{row.name or 'this folder'!r} is shared with you read-only")
        return row, access

    def _parent_writable(self, tx: Tx, user: User, node: NodeRow) -> NodeRow:
        """The folder holding a visible node, if the caller may change it (a shared item's own folder is not theirs)."""
        assert node.parent_id is not None
        try:
            parent, _ = self._folder(tx, user, node.parent_id, write=True)
        except NotFound:
            raise Forbidden(f"{node.name!r} was shared with you; only its owner can move or delete it") from None
        return parent

    def _audience(self, tx: Tx, node_id: int) -> dict[int, str]:
        """Every user who can see the node, with their access."""
        row = self._row(tx, node_id)
        assert row is not None
        out: dict[int, str] = {row.owner_id: "owner"}
        if any(a[2] for a in self._ancestors(tx, node_id)[1:]):
            return out
        chain = [a[0] for a in self._ancestors(tx, node_id)]
        for batch in _batches(chain):
            for uid, perm in tx.all(
                f"SELECT user_id, permission FROM shares WHERE node_id IN ({_marks(len(batch))})", tuple(batch)
            ):
                if uid not in out or _ACCESS_RANK[perm] > _ACCESS_RANK[out[uid]]:
                    out[uid] = perm
        return out

    def _emit(self, w: _Writer, kind: str, node_id: int, audience: dict[int, str], *,
              old: NodeRow | None = None, device: str | None = None, row: NodeRow | None = None) -> None:
        """Journal one change and give each user in `audience` its feed entry."""
        if not audience:
            return
        row = row or self._row(w.tx, node_id)
        assert row is not None
        seq = w.tx.one("INSERT INTO journal(at_ns) VALUES (?) RETURNING seq", (w.now,))[0]
        entries = []
        for uid, access in audience.items():
            payload = {
                "node": row.out(access).model_dump(),
                "old_parent_id": old.parent_id if old else None,
                "old_name": old.name if old else None,
                "device": device,
                "at_ns": w.now,
            }
            entries.append((uid, seq, node_id, kind, json.dumps(payload)))
        w.tx.executemany("INSERT INTO feed(user_id, seq, node_id, kind, payload) VALUES (?, ?, ?, ?, ?)", entries)
        w.touched.update(audience)

    def _child(self, tx: Tx, parent_id: int, name: str) -> NodeRow | None:
        row = tx.one(f"SELECT {_NODE_COLS} {_NODE_FROM} WHERE n.parent_id = ? AND n.name = ? AND n.deleted = 0",
                     (parent_id, name))
        return NodeRow(*row[:12], bool(row[12]), row[13]) if row else None

    def _check_new_name(self, tx: Tx, parent: NodeRow, name: str) -> None:
        limits.check_name(name, at_root=parent.parent_id is None)
        existing = self._child(tx, parent.id, name)
        if existing is not None:
            raise Exists(f"{name!r} already exists", node_id=existing.id, kind=existing.kind)

    # ---- reading the tree --------------------------------------------------------------------

    def me(self, user: User) -> models.Me:
        return models.Me(id=user.id, name=user.name, root_id=user.root_id)

    def get_node(self, user: User, node_id: int) -> models.Node:
        with self.db.transaction() as tx:
            row, access = self._access(tx, user, node_id)
        return row.out(access)

    def node_by_path(self, user: User, path: str) -> models.Node:
        """Resolve a '/'-separated path inside the caller's own drive."""
        parts = [p for p in path.split("/") if p]
        with self.db.transaction() as tx:
            row = self._row(tx, user.root_id)
            assert row is not None
            for part in parts:
                if row.kind != "dir":
                    raise NotFound(f"no such path: {path}")
                child = self._child(tx, row.id, part)
                if child is None:
                    raise NotFound(f"no such path: {path}")
                row = child
        return row.out("owner")

    def list_children(self, user: User, folder_id: int, cursor: str | None, limit: int) -> models.Listing:
        """A page of a folder's live children, ordered by name; `cursor` is the last name seen."""
        with self.db.transaction() as tx:
            folder, access = self._folder(tx, user, folder_id, write=False)
            rows = tx.all(
                f"SELECT {_NODE_COLS} {_NODE_FROM} WHERE n.parent_id = ? AND n.deleted = 0 AND n.name > ?"
                " ORDER BY n.name LIMIT ?",
                (folder.id, cursor or "", limit + 1),
            )
        nodes = [NodeRow(*r[:12], bool(r[12]), r[13]).out(access) for r in rows[:limit]]
        more = len(rows) > limit
        return models.Listing(entries=nodes, next_cursor=nodes[-1].name if more else None)

    def list_trash(self, user: User, limit: int) -> models.Listing:
        with self.db.transaction() as tx:
            rows = tx.all(
                f"SELECT {_NODE_COLS} {_NODE_FROM} WHERE n.owner_id = ? AND n.deleted = 1"
                " ORDER BY n.deleted_ns DESC LIMIT ?",
                (user.id, limit),
            )
        return models.Listing(entries=[NodeRow(*r[:12], True, r[13]).out("owner") for r in rows], next_cursor=None)

    # ---- changing the tree -------------------------------------------------------------------

    def create_folder(self, user: User, req: models.FolderCreate, device: str | None = None) -> models.Node:
        with self._write() as w:
            parent, _ = self._folder(w.tx, user, req.parent_id, write=True)
            self._check_new_name(w.tx, parent, req.name)
            nid = w.tx.one(
                "INSERT INTO nodes(owner_id, parent_id, name, kind, mode, mtime_ns, ctime_ns)"
                " VALUES (?, ?, ?, 'dir', ?, ?, ?) RETURNING id",
                (parent.owner_id, parent.id, req.name, req.mode, req.mtime_ns or w.now, w.now),
            )[0]
            return self._announce(w, user, "create", nid, device=device)

    def create_symlink(self, user: User, req: models.SymlinkCreate, device: str | None = None) -> models.Node:
        if "\x00" in req.target or len(req.target.encode("utf-8", "surrogatepass")) > limits.MAX_SYMLINK_TARGET_BYTES:
            raise Invalid("a symlink target cannot contain NUL and is at most 4096 bytes")
        with self._write() as w:
            parent, _ = self._folder(w.tx, user, req.parent_id, write=True)
            self._check_new_name(w.tx, parent, req.name)
            nid = w.tx.one(
                "INSERT INTO nodes(owner_id, parent_id, name, kind, mode, mtime_ns, ctime_ns, size, target)"
                " VALUES (?, ?, ?, 'symlink', ?, ?, ?, ?, ?) RETURNING id",
                (parent.owner_id, parent.id, req.name, 0o777, req.mtime_ns or w.now, w.now,
                 len(req.target.encode("utf-8", "surrogatepass")), req.target),
            )[0]
            return self._announce(w, user, "create", nid, device=device)

    def _announce(self, w: _Writer, user: User, kind: str, node_id: int, device: str | None = None,
                  old: NodeRow | None = None) -> models.Node:
        audience = self._audience(w.tx, node_id)
        self._emit(w, kind, node_id, audience, device=device, old=old)
        row, access = self._access(w.tx, user, node_id)
        return row.out(access)

    def commit_file(self, user: User, req: models.FileCommit) -> models.Node:
        """Commit a new version (of an existing file, or a new file), atomically."""
        with self._write() as w:
            return self._commit(w, user, req)

    def commit_files(self, user: User, items: Sequence[tuple[ChunkInfo | None, models.FileCommit]]
                     ) -> list[models.Node | ApiError]:
        """Several commits in one transaction, so one durable commit (one fsync) for all: each file's
        chunk (if any) is recorded as record_chunk would, and the file committed in a savepoint of its
        own. A commit refused is rolled back to that savepoint and its error returned in its place,
        exactly as commit_file would have raised it; the others go on."""
        results: list[models.Node | ApiError] = []
        with self._write() as w:
            for chunk, req in items:
                if chunk is not None:
                    self._record_chunk(w.tx, user.id, chunk)
                w.tx.execute("SAVEPOINT one_file")
                try:
                    results.append(self._commit(w, user, req))
                except ApiError as e:
                    w.tx.execute("ROLLBACK TO SAVEPOINT one_file")
                    results.append(e)
                w.tx.execute("RELEASE SAVEPOINT one_file")
        return results

    def _commit(self, w: _Writer, user: User, req: models.FileCommit) -> models.Node:
        tx = w.tx
        if req.node_id is not None:
            node = self._writable(tx, user, req.node_id)
            if node.kind != "file":
                raise IsADirectory(f"{node.name!r} is not a file") if node.kind == "dir" else Invalid(
                    f"{node.name!r} is a symlink")
            if req.base_version != node.version:
                raise VersionConflict(
                    f"{node.name!r} changed on the server (version {node.version}, commit based on {req.base_version})",
                    current_version=node.version, content_hash=node.content_hash,
                )
            nid, version, kind = node.id, node.version + 1, "update"
        else:
            assert req.parent_id is not None and req.name is not None
            parent, _ = self._folder(tx, user, req.parent_id, write=True)
            self._check_new_name(tx, parent, req.name)
            nid = tx.one(
                "INSERT INTO nodes(owner_id, parent_id, name, kind, mode, mtime_ns, ctime_ns)"
                " VALUES (?, ?, ?, 'file', ?, ?, ?) RETURNING id",
                (parent.owner_id, parent.id, req.name, req.mode, req.mtime_ns or w.now, w.now),
            )[0]
            version, kind = 1, "create"
        missing = self._missing(tx, user, [c.hash for c in req.manifest])
        if missing:
            raise MissingChunks(f"{len(missing)} chunks are not uploaded yet", missing=missing)
        self._add_version(tx, user, nid, version, req, w.now)
        return self._announce(w, user, kind, nid, device=req.device)

    def _add_version(self, tx: Tx, user: User, nid: int, version: int, req: models.FileCommit, now: int) -> None:
        mtime = req.mtime_ns or now
        tx.execute(
            "INSERT INTO versions(node_id, version, size, content_hash, mode, mtime_ns, created_ns, created_by, device)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (nid, version, req.size, req.content_hash, req.mode, mtime, now, user.id, req.device),
        )
        rows, offset = [], 0
        for idx, c in enumerate(req.manifest):
            rows.append((nid, version, idx, c.hash, c.size, offset))
            offset += c.size
        if rows:
            tx.executemany(
                'INSERT INTO version_chunks(node_id, version, idx, hash, size, "offset") VALUES (?, ?, ?, ?, ?, ?)', rows
            )
        tx.execute(
            "UPDATE nodes SET version = ?, size = ?, content_hash = ?, mode = ?, mtime_ns = ?, ctime_ns = ?"
            " WHERE id = ?",
            (version, req.size, req.content_hash, req.mode, mtime, now, nid),
        )

    def set_attr(self, user: User, node_id: int, req: models.AttrUpdate, device: str | None = None) -> models.Node:
        with self._write() as w:
            node = self._writable(w.tx, user, node_id)
            if node.kind == "symlink" and req.mode is not None:
                raise Invalid("a symlink has no mode of its own")
            w.tx.execute(
                "UPDATE nodes SET mode = ?, mtime_ns = ?, ctime_ns = ? WHERE id = ?",
                (node.mode if req.mode is None else req.mode,
                 node.mtime_ns if req.mtime_ns is None else req.mtime_ns, w.now, node.id),
            )
            return self._announce(w, user, "update", node.id, device=device)

    def move(self, user: User, node_id: int, req: models.Move, device: str | None = None) -> models.Node:
        """Rename and/or move with rename(2) semantics; a file renamed over a file becomes its new version."""
        with self._write() as w:
            tx = w.tx
            src = self._row(tx, node_id)
            if src is None:
                raise NotFound(f"no node {node_id}")
            if src.parent_id is None:
                self._access(tx, user, node_id)
                raise Forbidden("a drive's top folder cannot be moved")
            self._access(tx, user, node_id)
            self._parent_writable(tx, user, src)
            new_parent, _ = self._folder(tx, user, req.parent_id, write=True)
            if new_parent.owner_id != src.owner_id:
                raise CrossOwner("cannot move between two owners' drives; copy instead")
            limits.check_name(req.name, at_root=new_parent.parent_id is None)
            if any(a[0] == src.id for a in self._ancestors(tx, new_parent.id)):
                raise BadRequest("cannot move a folder into itself")
            if new_parent.id == src.parent_id and req.name == src.name:
                return src.out(self._access(tx, user, src.id)[1])
            target = self._child(tx, new_parent.id, req.name)
            if target is not None:
                if not req.replace:
                    raise Exists(f"{req.name!r} already exists", node_id=target.id, kind=target.kind)
                if src.kind == "file" and target.kind == "file":
                    return self._save_over(w, user, src, target, device)
                self._clear_target(w, src, target, device)
            before = self._audience(tx, src.id)
            tx.execute("UPDATE nodes SET parent_id = ?, name = ?, ctime_ns = ? WHERE id = ?",
                       (new_parent.id, req.name, w.now, src.id))
            after = self._audience(tx, src.id)
            # those who lose sight of it learn where it was, never where it went
            self._emit(w, "delete", src.id, {u: a for u, a in before.items() if u not in after}, old=src, device=device,
                       row=src)
            self._emit(w, "create", src.id, {u: a for u, a in after.items() if u not in before}, device=device)
            self._emit(w, "move", src.id, {u: a for u, a in after.items() if u in before}, old=src, device=device)
            row, access = self._access(tx, user, src.id)
            return row.out(access)

    def _clear_target(self, w: _Writer, src: NodeRow, target: NodeRow, device: str | None) -> None:
        """Make way for `src` at `target`'s name, as rename(2) would, or refuse."""
        if src.kind == "dir":
            if target.kind != "dir":
                raise NotADirectory(f"cannot replace the file {target.name!r} with a folder")
            if w.tx.one("SELECT 1 FROM nodes WHERE parent_id = ? AND deleted = 0 LIMIT 1", (target.id,)):
                raise NotEmpty(f"{target.name!r} is not empty")
        elif target.kind == "dir":
            raise IsADirectory(f"cannot replace the folder {target.name!r} with a file")
        self._trash(w, target, device)

    def _save_over(self, w: _Writer, user: User, src: NodeRow, target: NodeRow, device: str | None) -> models.Node:
        """File renamed over a file: the target keeps its id, shares and history and gains src's content."""
        tx = w.tx
        manifest = tx.all(
            'SELECT hash, size FROM version_chunks WHERE node_id = ? AND version = ? ORDER BY idx', (src.id, src.version)
        )
        req = models.FileCommit.model_construct(
            manifest=[models.ChunkSpec.model_construct(hash=h, size=s) for h, s in manifest],
            size=src.size, mode=src.mode, mtime_ns=src.mtime_ns, content_hash=src.content_hash, device=device,
        )
        src_audience = self._audience(tx, src.id)
        self._add_version(tx, user, target.id, target.version + 1, req, w.now)
        self._purge(tx, src.id)
        self._emit(w, "delete", src.id, src_audience, row=src, device=device)
        return self._announce(w, user, "update", target.id, device=device)

    def _purge(self, tx: Tx, node_id: int) -> None:
        """Remove a node that only ever was a stepping stone (the temp file of a save-by-rename)."""
        tx.execute("DELETE FROM version_chunks WHERE node_id = ?", (node_id,))
        tx.execute("DELETE FROM versions WHERE node_id = ?", (node_id,))
        tx.execute("DELETE FROM shares WHERE node_id = ?", (node_id,))
        tx.execute("DELETE FROM nodes WHERE id = ?", (node_id,))

    def _trash(self, w: _Writer, node: NodeRow, device: str | None = None) -> None:
        audience = self._audience(w.tx, node.id)
        w.tx.execute("UPDATE nodes SET deleted = 1, deleted_ns = ?, ctime_ns = ? WHERE id = ?", (w.now, w.now, node.id))
        self._emit(w, "delete", node.id, audience, device=device)

    def delete(self, user: User, node_id: int, require_empty: bool = False, device: str | None = None) -> models.Node:
        """Move a node (and its subtree) to the trash."""
        with self._write() as w:
            node, _ = self._access(w.tx, user, node_id)
            if node.parent_id is None:
                raise Forbidden("a drive's top folder cannot be deleted")
            self._parent_writable(w.tx, user, node)
            if require_empty and node.kind == "dir" and w.tx.one(
                "SELECT 1 FROM nodes WHERE parent_id = ? AND deleted = 0 LIMIT 1", (node.id,)
            ):
                raise NotEmpty(f"{node.name!r} is not empty")
            self._trash(w, node, device)
            row = self._row(w.tx, node.id)
            assert row is not None
            return row.out("owner" if node.owner_id == user.id else "write")

    def restore_node(self, user: User, node_id: int, name: str | None, device: str | None = None) -> models.Node:
        """Bring a node back from the trash, under its old name or `name`."""
        with self._write() as w:
            node, _ = self._access(w.tx, user, node_id, allow_deleted=True)
            if not node.deleted:
                raise Conflict(f"{node.name!r} is not in the trash")
            assert node.parent_id is not None
            try:
                parent, _ = self._folder(w.tx, user, node.parent_id, write=True)
            except NotFound:
                raise Conflict("the folder it was in is in the trash too; restore that first") from None
            new_name = name or node.name
            self._check_new_name(w.tx, parent, new_name)
            w.tx.execute("UPDATE nodes SET deleted = 0, deleted_ns = NULL, name = ?, ctime_ns = ? WHERE id = ?",
                         (new_name, w.now, node.id))
            return self._announce(w, user, "create", node.id, device=device)

    # ---- versions ------------------------------------------------------------------------------

    def versions(self, user: User, node_id: int) -> models.VersionList:
        with self.db.transaction() as tx:
            node, _ = self._access(tx, user, node_id)
            rows = tx.all(
                "SELECT v.version, v.size, v.content_hash, v.mode, v.mtime_ns, v.created_ns, u.name, v.device"
                " FROM versions v JOIN users u ON u.id = v.created_by WHERE v.node_id = ? ORDER BY v.version DESC",
                (node.id,),
            )
        return models.VersionList(versions=[models.Version(
            version=r[0], size=r[1], content_hash=r[2], mode=r[3], mtime_ns=r[4], created_ns=r[5],
            created_by=r[6], device=r[7]) for r in rows])

    def version_detail(self, user: User, node_id: int, version: int) -> models.VersionDetail:
        with self.db.transaction() as tx:
            node, _ = self._access(tx, user, node_id)
            return self._version_detail(tx, node.id, version)

    def _version_detail(self, tx: Tx, node_id: int, version: int) -> models.VersionDetail:
        row = tx.one(
            "SELECT v.version, v.size, v.content_hash, v.mode, v.mtime_ns, v.created_ns, u.name, v.device"
            " FROM versions v JOIN users u ON u.id = v.created_by WHERE v.node_id = ? AND v.version = ?",
            (node_id, version),
        )
        if row is None:
            raise NotFound(f"no version {version} of node {node_id}")
        chunks = tx.all(
            'SELECT hash, size, "offset" FROM version_chunks WHERE node_id = ? AND version = ? ORDER BY idx',
            (node_id, version),
        )
        return models.VersionDetail(
            version=row[0], size=row[1], content_hash=row[2], mode=row[3], mtime_ns=row[4], created_ns=row[5],
            created_by=row[6], device=row[7],
            manifest=[models.ManifestEntry(hash=h, size=s, offset=o) for h, s, o in chunks],
        )

    def restore_version(self, user: User, node_id: int, version: int, device: str | None = None) -> models.Node:
        """Make an old version current again, as a new version (history is never rewritten)."""
        with self._write() as w:
            node = self._writable(w.tx, user, node_id)
            old = self._version_detail(w.tx, node.id, version)
            req = models.FileCommit.model_construct(
                manifest=[models.ChunkSpec.model_construct(hash=c.hash, size=c.size) for c in old.manifest],
                size=old.size, mode=old.mode, mtime_ns=w.now, content_hash=old.content_hash, device=device,
            )
            self._add_version(w.tx, user, node.id, node.version + 1, req, w.now)
            return self._announce(w, user, "update", node.id, device=device)

    # ---- chunks --------------------------------------------------------------------------------

    def _missing(self, tx: Tx, user: User, hashes: Iterable[str]) -> list[str]:
        wanted = list(dict.fromkeys(hashes))
        held: set[str] = set()
        for batch in _batches(wanted):
            held.update(r[0] for r in tx.all(
                "SELECT uc.hash FROM user_chunks uc JOIN chunks c ON c.hash = uc.hash"
                f" WHERE uc.user_id = ? AND uc.hash IN ({_marks(len(batch))})",
                (user.id, *batch),
            ))
        return [h for h in wanted if h not in held]

    def missing_chunks(self, user: User, hashes: Sequence[str]) -> list[str]:
        """Which of these chunks the caller must still upload (judged only from chunks they hold)."""
        with self.db.transaction() as tx:
            return self._missing(tx, user, hashes)

    def chunk_info(self, hash_: str) -> ChunkInfo | None:
        with self.db.transaction() as tx:
            row = tx.one(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE hash = ?", (hash_,))
        return ChunkInfo(*row) if row else None

    def record_chunk(self, user_id: int, info: ChunkInfo) -> ChunkInfo:
        """Note a verified upload: the chunk is present and the user holds it. Returns the stored form.

        A chunk recorded before its block hashes were computed gets them now, if `info` brings them for
        the same stored form."""
        with self.db.transaction(write=True) as tx:
            return self._record_chunk(tx, user_id, info)

    def _record_chunk(self, tx: Tx, user_id: int, info: ChunkInfo) -> ChunkInfo:
        tx.execute(
            "INSERT INTO chunks(hash, size, stored_size, encoding, block_hashes, created_ns)"
            " VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (hash) DO UPDATE SET block_hashes = excluded.block_hashes"
            " WHERE chunks.block_hashes IS NULL AND chunks.encoding = excluded.encoding",
            (info.hash, info.size, info.stored_size, info.encoding, info.block_hashes, self._clock()),
        )
        tx.execute("INSERT INTO user_chunks(user_id, hash) VALUES (?, ?) ON CONFLICT DO NOTHING",
                   (user_id, info.hash))
        row = tx.one(f"SELECT {_CHUNK_COLUMNS} FROM chunks WHERE hash = ?", (info.hash,))
        return ChunkInfo(*row)

    def readable_chunks(self, user: User, node_id: int, version: int, hashes: Sequence[str]) -> list[ChunkInfo]:
        """The stored form of chunks of a version the caller can read; NotFound for any other hash. The
        owner can still read a file in the trash: a device that was editing it when another deleted it
        puts its version back, and a sparse local copy must fetch the chunks it had not yet for that."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, ChunkInfo] = {}
        with self.db.transaction() as tx:
            node, access = self._access(tx, user, node_id, allow_deleted=True)
            if node.deleted and access != "owner":
                raise NotFound(f"no node {node_id}")
            if not tx.one("SELECT 1 FROM versions WHERE node_id = ? AND version = ?", (node.id, version)):
                raise NotFound(f"no version {version} of node {node_id}")
            for batch in _batches(wanted):
                for row in tx.all(
                    "SELECT DISTINCT c.hash, c.size, c.stored_size, c.encoding, c.block_hashes FROM version_chunks vc"
                    " JOIN chunks c ON c.hash = vc.hash"
                    f" WHERE vc.node_id = ? AND vc.version = ? AND vc.hash IN ({_marks(len(batch))})",
                    (node.id, version, *batch),
                ):
                    found[row[0]] = ChunkInfo(*row)
        absent = [h for h in wanted if h not in found]
        if absent:
            raise NotFound(f"{len(absent)} of these chunks are not part of version {version}", missing=absent)
        return [found[h] for h in wanted]

    # ---- resumable upload sessions -----------------------------------------------------------

    def create_session(self, user: User, req: models.FileCommit, ttl_s: float) -> models.UploadSession:
        """Start a resumable upload: checks the target now, commits later once every chunk is there."""
        with self._write() as w:
            if req.node_id is not None:
                self._writable(w.tx, user, req.node_id)
            else:
                assert req.parent_id is not None and req.name is not None
                parent, _ = self._folder(w.tx, user, req.parent_id, write=True)
                limits.check_name(req.name, at_root=parent.parent_id is None)
            sid = secrets.token_urlsafe(18)
            expires = w.now + int(ttl_s * 1e9)
            w.tx.execute(
                "INSERT INTO upload_sessions(id, user_id, request, created_ns, expires_ns) VALUES (?, ?, ?, ?, ?)",
                (sid, user.id, req.model_dump_json(), w.now, expires),
            )
            missing = self._missing(w.tx, user, [c.hash for c in req.manifest])
        return models.UploadSession(id=sid, missing=missing, expires_at=expires / 1e9)

    def _session(self, tx: Tx, user: User, sid: str, now: int) -> tuple[models.FileCommit, int, int | None]:
        row = tx.one("SELECT request, expires_ns, committed_node FROM upload_sessions WHERE id = ? AND user_id = ?",
                     (sid, user.id))
        if row is None:
            raise NotFound("no such upload session")
        if row[2] is None and row[1] < now:
            raise Gone("this upload session has expired; start a new one (uploaded chunks are kept)")
        return models.FileCommit.model_validate_json(row[0]), row[1], row[2]

    def session(self, user: User, sid: str) -> models.UploadSession:
        with self.db.transaction() as tx:
            req, expires, committed = self._session(tx, user, sid, self._clock())
            missing = [] if committed else self._missing(tx, user, [c.hash for c in req.manifest])
        return models.UploadSession(id=sid, missing=missing, expires_at=expires / 1e9, committed=committed is not None)

    def commit_session(self, user: User, sid: str) -> models.Node:
        """Commit a session's file version; committing twice returns the same node (safe to retry)."""
        with self._write() as w:
            req, _, committed = self._session(w.tx, user, sid, w.now)
            if committed is not None:
                row, access = self._access(w.tx, user, committed)
                return row.out(access)
            node = self._commit(w, user, req)
            w.tx.execute("UPDATE upload_sessions SET committed_node = ? WHERE id = ?", (node.id, sid))
            return node

    def drop_session(self, user: User, sid: str) -> None:
        with self.db.transaction(write=True) as tx:
            tx.execute("DELETE FROM upload_sessions WHERE id = ? AND user_id = ?", (sid, user.id))

    def expire_sessions(self, keep_committed_s: float = 86400) -> int:
        """Forget expired sessions (the chunks they uploaded stay); returns how many."""
        now = self._clock()
        with self.db.transaction(write=True) as tx:
            n = tx.one("SELECT count(*) FROM upload_sessions WHERE expires_ns < ?", (now - int(keep_committed_s * 1e9),))[0]
            tx.execute("DELETE FROM upload_sessions WHERE expires_ns < ?", (now - int(keep_committed_s * 1e9),))
        return n

    # ---- shares --------------------------------------------------------------------------------

    def _user_id(self, tx: Tx, name: str) -> int:
        row = tx.one("SELECT id FROM users WHERE name = ?", (name,))
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return row[0]

    def share(self, user: User, node_id: int, req: models.ShareCreate) -> models.Share:
        with self._write() as w:
            node, access = self._access(w.tx, user, node_id)
            if access != "owner":
                raise Forbidden("only the owner can share this")
            if node.parent_id is None:
                raise BadRequest("share a folder inside your drive, not the whole drive")
            uid = self._user_id(w.tx, req.user)
            if uid == user.id:
                raise BadRequest("you already own this")
            w.tx.execute(
                "INSERT INTO shares(node_id, user_id, permission, created_ns) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (node_id, user_id) DO UPDATE SET permission = excluded.permission",
                (node.id, uid, req.permission, w.now),
            )
            self._emit(w, "share", node.id, {uid: req.permission})
            created = w.tx.one("SELECT created_ns FROM shares WHERE node_id = ? AND user_id = ?", (node.id, uid))[0]
        return models.Share(node_id=node.id, owner=node.owner, user=req.user, permission=req.permission,
                            created_ns=created)

    def unshare(self, user: User, node_id: int, name: str) -> None:
        """The owner removes someone's access, or a recipient leaves a share."""
        with self._write() as w:
            node, access = self._access(w.tx, user, node_id)
            if access != "owner" and name != user.name:
                raise Forbidden("only the owner can change who has access")
            uid = self._user_id(w.tx, name)
            if not w.tx.one("SELECT 1 FROM shares WHERE node_id = ? AND user_id = ?", (node.id, uid)):
                raise NotFound(f"{name!r} has no share of this")
            w.tx.execute("DELETE FROM shares WHERE node_id = ? AND user_id = ?", (node.id, uid))
            self._emit(w, "unshare", node.id, {uid: "read"})

    def _share_rows(self, tx: Tx, where: str, params: Sequence[Any]) -> list[models.Share]:
        rows = tx.all(
            "SELECT s.node_id, o.name, u.name, s.permission, s.created_ns FROM shares s"
            " JOIN nodes n ON n.id = s.node_id JOIN users o ON o.id = n.owner_id JOIN users u ON u.id = s.user_id"
            f" WHERE {where} ORDER BY s.node_id, u.name",
            params,
        )
        return [models.Share(node_id=r[0], owner=r[1], user=r[2], permission=r[3], created_ns=r[4]) for r in rows]

    def shares_of(self, user: User, node_id: int) -> models.ShareList:
        """Who has access to a node: shares on it and on the folders above it."""
        with self.db.transaction() as tx:
            self._access(tx, user, node_id)
            chain = [a[0] for a in self._ancestors(tx, node_id)]
            out: list[models.Share] = []
            for batch in _batches(chain):
                out += self._share_rows(tx, f"s.node_id IN ({_marks(len(batch))})", batch)
        return models.ShareList(shares=out)

    def shared_with_me(self, user: User) -> models.SharedItems:
        items = []
        with self.db.transaction() as tx:
            for share in self._share_rows(tx, "s.user_id = ?", (user.id,)):
                try:
                    row, access = self._access(tx, user, share.node_id)
                except NotFound:
                    continue  # in the owner's trash
                items.append(models.SharedItem(share=share, node=row.out(access)))
        return models.SharedItems(items=items)

    def shared_by_me(self, user: User) -> models.ShareList:
        with self.db.transaction() as tx:
            return models.ShareList(shares=self._share_rows(tx, "n.owner_id = ?", (user.id,)))

    # ---- the changes feed ----------------------------------------------------------------------

    def changes(self, user: User, cursor: int, limit: int, exclude_device: str | None = None) -> models.Changes:
        """Up to `limit` feed entries after `cursor`. With `exclude_device`, that device's own changes are
        left out (it made them, so it has them), yet the cursor moves past them all the same."""
        with self.db.transaction() as tx:
            rows = tx.all(
                "SELECT seq, kind, payload FROM feed WHERE user_id = ? AND seq > ? ORDER BY seq, node_id LIMIT ?",
                (user.id, cursor, limit + 1),
            )
        changes = [models.Change(seq=seq, kind=kind, **json.loads(payload)) for seq, kind, payload in rows[:limit]]
        new_cursor = changes[-1].seq if changes else cursor
        if exclude_device is not None:
            changes = [c for c in changes if c.device != exclude_device]
        return models.Changes(changes=changes, cursor=str(new_cursor), has_more=len(rows) > limit)

    def latest_cursor(self) -> int:
        with self.db.transaction() as tx:
            return tx.one("SELECT coalesce(max(seq), 0) FROM journal")[0]
