"""The filesystem's logic, without FUSE: lookups, listings, creates, renames, reads and write-back.

Operations (mountfs/fs.py) calls these methods and maps FsError to errno. Everything here runs on the
trio thread that serves FUSE; the index is only touched from that thread. Local changes are applied to
the index at once and queued as ops (or dirty content) for the syncer, so the mount never waits for the
network to change the tree.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

import trio

from cache.edits import TO_END, Edits, file_id
from cache.holes import Hole, SparseFile
from cache.spares import SpareFiles
from cache.tree import ROOT_INODE, SHARED_INODE, SHARED_NAME, Entry, Tree
from remote import errors as rerr

from .errors import FsError
from .reader import Layout
from .sparse import SPARSE_MIN, Filler

log = logging.getLogger("drivefs.vfs")

MAX_NAME_BYTES = 255
LIST_PAGE = 1000
# Closed writers whose sizes go into the index in one transaction (a few ms: FUSE requests wait meanwhile).
PERSIST_GROUP = 256


@dataclass
class Handle:
    """One open file: its inode, whether it may write, and its fd on the local data file if any."""

    fh: int
    inode: int
    writable: bool
    fd: int | None = None
    last_end: int = -1
    wrote: bool = False
    version: int = 0  # the server version a reader sees for as long as it keeps the file open
    sparse: SparseFile | None = None  # the holes of the copy `fd` is open on, if it was sparse


@dataclass(frozen=True)
class Attr:
    """What getattr reports: the entry plus live size/mtime of a file being written."""

    entry: Entry
    size: int
    mtime_ns: int


@dataclass
class LiveState:
    """Per-inode state that only lives while mounted."""

    lookups: Counter = field(default_factory=Counter)
    opens: Counter = field(default_factory=Counter)
    writers: Counter = field(default_factory=Counter)
    gen: dict[int, int] = field(default_factory=dict)
    fsync_requested: set[int] = field(default_factory=set)
    remote_gen: Counter = field(default_factory=Counter)
    opened_at_gen: dict[int, int] = field(default_factory=dict)
    # (size, mtime_ns) of a local copy as stat'ed when its writer flushed; any change to it drops the
    # entry, so getattr of a closed file needs no os.stat.
    stat: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Inodes whose index row is known to be dirty, so a write needs no SELECT to find out; whatever makes
    # a row clean again (a commit, a conflicted copy) must call Vfs.content_synced.
    known_dirty: set[int] = field(default_factory=set)
    # Closed writers whose size and mtime (in `stat`) the index row does not have yet: written in groups
    # by persist_pending, not one transaction per close (see release).
    unpersisted: set[int] = field(default_factory=set)


def check_name(raw: bytes) -> str:
    """Decode a name from the kernel; the server stores UTF-8 names of at most 255 bytes."""
    if len(raw) > MAX_NAME_BYTES:
        raise FsError(errno.ENAMETOOLONG, "name longer than 255 bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FsError(errno.EINVAL, "names must be valid UTF-8") from None


def existing_name(raw: bytes) -> str:
    """Decode a name to find: none longer than 255 bytes or not UTF-8 can exist, since check_name refuses them.

    Too long is ENAMETOOLONG as on local filesystems; not UTF-8 is simply absent (ENOENT), never an EIO
    from the index refusing the undecodable text.
    """
    if len(raw) > MAX_NAME_BYTES:
        raise FsError(errno.ENAMETOOLONG)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FsError(errno.ENOENT) from None


class Vfs:
    """The mounted drive's tree and file contents, as the kernel sees them."""

    def __init__(self, tree: Tree, reader: Any, remote: Any, wake_syncer: Callable[[], None], user: str,
                 spares: SpareFiles | None = None, filler: Filler | None = None) -> None:
        self.tree = tree
        self.filler = filler  # without one, local copies are always fetched whole
        self.spares = spares
        self.reader = reader
        self.remote = remote
        self.wake_syncer = wake_syncer
        self.user = user
        self.live = LiveState()
        self.edits = Edits()
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1
        self._listing_locks: dict[int, trio.Lock] = {}
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.invalidator: Callable[[int | None, int | None, str | None], None] | None = None
        # trio.current_time() of the latest FUSE request: the write-back waits for a pause in a burst.
        self.last_request = 0.0

    # ---- entries and attributes ----------------------------------------------------------------

    def entry(self, inode: int) -> Entry:
        e = self.tree.get(inode)
        if e is None:
            raise FsError(errno.ENOENT, f"inode {inode} is unknown")
        return e

    def attr(self, entry: Entry) -> Attr:
        if entry.local_data:
            known = self.live.stat.get(entry.inode)
            if known is not None:
                return Attr(entry, *known)
            try:
                st = os.stat(self.tree.data_path(entry.inode))
                return Attr(entry, st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                log.error("local data of inode %d is missing", entry.inode)
        return Attr(entry, entry.size, entry.mtime_ns)

    def getattr(self, inode: int) -> Attr:
        return self.attr(self.entry(inode))

    def keep_cache(self, inode: int) -> bool:
        """Let the kernel keep a file's pages if no other device changed it since it was last opened."""
        now = self.live.remote_gen[inode]
        keep = self.live.opened_at_gen.get(inode) == now
        self.live.opened_at_gen[inode] = now
        return keep

    def invalidate(self, inode: int | None, parent_inode: int | None = None, name: str | None = None) -> None:
        """Tell the kernel an inode (and a name in a folder) changed; the daemon supplies the real one."""
        if self.invalidator is not None:
            self.invalidator(inode, parent_inode, name)

    def live_gen(self, inode: int) -> int:
        g = self.live.gen.get(inode)
        if g is None:
            g = self.live.gen[inode] = self.entry(inode).content_gen
        return g

    def is_being_written(self, inode: int) -> bool:
        return self.live.writers[inode] > 0 and inode not in self.live.fsync_requested

    def has_handles(self, inode: int) -> bool:
        return self.live.opens[inode] > 0

    # ---- lookups and listings ----------------------------------------------------------------

    async def lookup(self, parent_inode: int, raw: bytes) -> Entry:
        name = existing_name(raw)
        parent = self._dir(parent_inode)
        await self.ensure_listed(parent)
        child = self.tree.child(parent.inode, name)
        if child is None:
            raise FsError(errno.ENOENT)
        self.live.lookups[child.inode] += 1
        return child

    def _dir(self, inode: int) -> Entry:
        e = self.entry(inode)
        if e.kind != "dir":
            raise FsError(errno.ENOTDIR)
        return e

    async def ensure_listed(self, folder: Entry) -> None:
        """Fetch a folder's children from the server the first time it is used."""
        if folder.listed or (folder.node_id is None and folder.inode != SHARED_INODE):
            return
        lock = self._listing_locks.setdefault(folder.inode, trio.Lock())
        async with lock:
            if self.entry(folder.inode).listed:
                return
            try:
                if folder.inode == SHARED_INODE:
                    await self._list_shared()
                else:
                    await self._list_folder(folder)
            except rerr.TransportFailure as e:
                raise FsError(errno.EIO, f"cannot list {folder.name!r}: server unreachable ({e})") from None
            except rerr.NotFound:
                raise FsError(errno.ENOENT, f"{folder.name!r} is gone on the server") from None

    async def _list_folder(self, folder: Entry) -> None:
        assert folder.node_id is not None
        remote_nodes = []
        cursor = None
        while True:
            page = await self.remote.list_children(folder.node_id, cursor=cursor, limit=LIST_PAGE)
            remote_nodes.extend(page.entries)
            cursor = page.next_cursor
            if cursor is None:
                break
        seen = {node.id for node in remote_nodes}
        with self.tree.index.transaction():
            for child in self.tree.children(folder.inode):
                if child.node_id is not None and child.node_id not in seen and not child.dirty \
                        and not self.tree.named_by_ops(child.inode):
                    self.forget_local(child)  # deleted or moved away on another device
            for node in remote_nodes:
                self.merge_remote(folder.inode, node)
            self.tree.update(folder.inode, listed=True)

    async def _list_shared(self) -> None:
        items = await self.remote.shared_with_me()
        taken: set[str] = set()
        with self.tree.index.transaction():
            for item in items:
                node = item.node
                name = node.name if node.name not in taken else f"{node.name} (from {node.owner})"
                taken.add(name)
                self.merge_remote(SHARED_INODE, node, name=name)

    def merge_remote(self, parent_inode: int, node: Any, name: str | None = None) -> Entry | None:
        """Record a node the server reported under `parent_inode`; local unsynced changes win."""
        name = name or node.name
        existing = self.tree.by_node(node.id)
        if existing is not None:
            if existing.dirty or self.tree.named_by_ops(existing.inode):
                return existing
            changes: dict[str, Any] = dict(mode=node.mode, mtime_ns=node.mtime_ns, ctime_ns=node.ctime_ns,
                                           target=node.target, access=node.access, owner=node.owner)
            if existing.version != node.version or existing.size != node.size:
                changes.update(size=node.size, version=node.version, content_hash=node.content_hash)
                self.live.remote_gen[existing.inode] += 1
            return self.tree.update(existing.inode, **changes)
        clash = self.tree.child(parent_inode, name)
        if clash is not None:
            log.warning("server has %r in folder inode %d while a local, unsynced one exists; keeping local",
                        name, parent_inode)
            return None
        return self.tree.add(parent_inode, name, node.kind, node.mode, node_id=node.id, size=node.size,
                             mtime_ns=node.mtime_ns, ctime_ns=node.ctime_ns, version=node.version,
                             target=node.target, owner=node.owner, access=node.access,
                             content_hash=node.content_hash)

    async def readdir(self, inode: int, after: int) -> list[Entry]:
        self._dir(inode)
        if inode == SHARED_INODE and after == 0:
            self.tree.update(SHARED_INODE, listed=False)
        await self.ensure_listed(self.entry(inode))
        return self.tree.children(inode, after)

    def forget(self, inode: int, n: int) -> None:
        self.live.lookups[inode] -= n
        if self.live.lookups[inode] <= 0:
            del self.live.lookups[inode]
            self.collect(inode)

    def forget_local(self, e: Entry) -> None:
        """Drop a node that no longer exists on the server from the local tree (its subtree too)."""
        for child in self.tree.children(e.inode):
            if child.dirty or self.tree.named_by_ops(child.inode):
                continue
            self.forget_local(child)
        self.tree.update(e.inode, parent_inode=None, node_id=None)
        self.collect(e.inode)

    def collect(self, inode: int) -> None:
        """Drop an unlinked node once nothing references it any more."""
        e = self.tree.get(inode)
        if e is None or e.parent_inode is not None or inode in (ROOT_INODE, SHARED_INODE):
            return
        if self.live.lookups[inode] > 0 or self.live.opens[inode] > 0 or self.tree.named_by_ops(inode):
            return
        self.tree.remove(inode, recycle=self.spares.recycle if self.spares is not None else None)
        self.live.gen.pop(inode, None)
        self.live.known_dirty.discard(inode)  # the number may be used again
        self.live.stat.pop(inode, None)
        self.live.unpersisted.discard(inode)
        self.edits.drop(inode)

    # ---- changing the tree ---------------------------------------------------------------------

    def _writable_dir(self, inode: int) -> Entry:
        d = self._dir(inode)
        if inode == SHARED_INODE:
            raise FsError(errno.EACCES, "'Shared with me' only holds what others share")
        if not d.writable:
            raise FsError(errno.EACCES, f"{d.name!r} is shared with you read-only")
        return d

    async def _new_name(self, parent: Entry, raw: bytes) -> str:
        name = check_name(raw)
        await self.ensure_listed(parent)
        if parent.inode == ROOT_INODE and name == SHARED_NAME:
            raise FsError(errno.EEXIST)
        if self.tree.child(parent.inode, name) is not None:
            raise FsError(errno.EEXIST)
        return name

    async def mkdir(self, parent_inode: int, raw: bytes, mode: int) -> Entry:
        parent = self._writable_dir(parent_inode)
        name = await self._new_name(parent, raw)
        with self.tree.index.transaction():
            e = self.tree.add(parent.inode, name, "dir", mode & 0o7777, owner=parent.owner or self.user,
                              access=parent.access if parent.inode != ROOT_INODE else "owner", listed=True)
            self.tree.enqueue("mkdir", e.inode, parent.inode, name)
        self.live.lookups[e.inode] += 1
        self.wake_syncer()
        return e

    async def symlink(self, parent_inode: int, raw: bytes, target: bytes) -> Entry:
        parent = self._writable_dir(parent_inode)
        name = await self._new_name(parent, raw)
        try:
            text = target.decode("utf-8")
        except UnicodeDecodeError:
            raise FsError(errno.EINVAL, "symlink targets must be valid UTF-8") from None
        with self.tree.index.transaction():
            e = self.tree.add(parent.inode, name, "symlink", 0o777, size=len(target), target=text,
                              owner=parent.owner or self.user, access=self._child_access(parent))
            self.tree.enqueue("symlink", e.inode, parent.inode, name)
        self.live.lookups[e.inode] += 1
        self.wake_syncer()
        return e

    def _child_access(self, parent: Entry) -> str:
        return "owner" if parent.inode == ROOT_INODE else parent.access

    async def create(self, parent_inode: int, raw: bytes, mode: int, flags: int) -> tuple[Handle, Entry]:
        parent = self._writable_dir(parent_inode)
        name = await self._new_name(parent, raw)
        fd = None
        try:
            # One row, dirty from the start, and its create op, at once; held with the next creates in a
            # transaction committed later, and until then kept safe by one write of a redo record (a
            # commit per create was a third of the daemon's time in a burst of small files).
            with self.tree.index.batched() as batch:
                e = self.tree.add(parent.inode, name, "file", mode & 0o7777, owner=parent.owner or self.user,
                                  access=self._child_access(parent), local_data=True, content_gen=1)
                fd = self._new_data_file(e.inode)
                batch.log(self.tree.created_record(e, self.tree.enqueue("create", e.inode, parent.inode, name)))
        except BaseException:
            if fd is not None:
                os.close(fd)
            raise
        self.live.gen[e.inode] = 1
        self.live.lookups[e.inode] += 1
        handle = self._open_handle(e, writable=True)
        handle.fd = fd  # the program's writes go straight to the data file just made
        self.wake_syncer()
        return handle, e

    def _new_data_file(self, inode: int) -> int:
        """Open a new, empty local data file for `inode`: a spare made ahead of time when one is ready.

        Either way a file already at that path is replaced: an inode number a rolled-back create used may
        come again with its stray file."""
        path = self.tree.data_path(inode)
        fd = self.spares.take(path) if self.spares is not None else None
        if fd is None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)
        return fd

    async def _child_to_remove(self, parent_inode: int, raw: bytes) -> Entry:
        parent = self._writable_dir(parent_inode)
        name = existing_name(raw)
        await self.ensure_listed(parent)
        e = self.tree.child(parent.inode, name)
        if e is None:
            raise FsError(errno.ENOENT)
        return e

    async def unlink(self, parent_inode: int, raw: bytes) -> None:
        e = await self._child_to_remove(parent_inode, raw)
        if e.kind == "dir":
            raise FsError(errno.EISDIR)
        self._detach(e, "unlink")

    async def rmdir(self, parent_inode: int, raw: bytes) -> None:
        e = await self._child_to_remove(parent_inode, raw)
        if e.kind != "dir":
            raise FsError(errno.ENOTDIR)
        if e.inode == SHARED_INODE:  # it has no node on the server; removing it would lose it for good
            raise FsError(errno.EACCES, f"'{SHARED_NAME}' cannot be removed")
        await self.ensure_listed(e)
        if self.tree.has_children(e.inode):
            raise FsError(errno.ENOTEMPTY)
        self._detach(e, "rmdir")

    def _detach(self, e: Entry, op: str) -> None:
        with self.tree.index.transaction():
            self.tree.update(e.inode, parent_inode=None)
            self.tree.enqueue(op, e.inode, None, e.name)
        self.wake_syncer()

    async def rename(self, old_parent: int, old_raw: bytes, new_parent: int, new_raw: bytes, flags: int) -> None:
        RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
        if flags & RENAME_EXCHANGE:
            raise FsError(errno.EINVAL, "RENAME_EXCHANGE is not supported")
        src_dir = self._writable_dir(old_parent)
        dst_dir = self._writable_dir(new_parent)
        old_name = existing_name(old_raw)
        await self.ensure_listed(src_dir)
        src = self.tree.child(src_dir.inode, old_name)
        if src is None:
            raise FsError(errno.ENOENT)
        if src.inode == SHARED_INODE:  # the virtual folder stays where it is, under its name
            raise FsError(errno.EACCES, f"'{SHARED_NAME}' cannot be renamed")
        new_name = check_name(new_raw)
        await self.ensure_listed(dst_dir)
        if (src.owner or self.user) != (dst_dir.owner or self.user):
            raise FsError(errno.EXDEV, "moving between two owners' drives copies instead")
        if dst_dir.inode == ROOT_INODE and new_name == SHARED_NAME:
            raise FsError(errno.EACCES, f"'{SHARED_NAME}' is reserved")
        if src.kind == "dir" and self._is_ancestor(src.inode, dst_dir.inode):
            raise FsError(errno.EINVAL, "cannot move a folder into itself")
        target = self.tree.child(dst_dir.inode, new_name)
        if target is not None and target.inode == src.inode:
            return
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FsError(errno.EEXIST)
            await self._check_replace(src, target)
        with self.tree.index.transaction():
            if target is not None:
                self.tree.update(target.inode, parent_inode=None)
            self.tree.update(src.inode, parent_inode=dst_dir.inode, name=new_name)
            self.tree.enqueue("rename", src.inode, dst_dir.inode, new_name,
                              other_inode=target.inode if target else None)
        if target is not None:
            self.collect(target.inode)
        self.wake_syncer()

    async def _check_replace(self, src: Entry, target: Entry) -> None:
        if src.kind == "dir":
            if target.kind != "dir":
                raise FsError(errno.ENOTDIR)
            await self.ensure_listed(target)
            if self.tree.has_children(target.inode):
                raise FsError(errno.ENOTEMPTY)
        elif target.kind == "dir":
            raise FsError(errno.EISDIR)

    def _is_ancestor(self, ancestor: int, inode: int) -> bool:
        cur: int | None = inode
        while cur is not None:
            if cur == ancestor:
                return True
            e = self.tree.get(cur)
            cur = e.parent_inode if e else None
        return False

    async def setattr(self, inode: int, *, mode: int | None = None, size: int | None = None,
                      mtime_ns: int | None = None, fh: int | None = None) -> Attr:
        e = self.entry(inode)
        if inode in (ROOT_INODE, SHARED_INODE) and (mode is not None or size is not None):
            raise FsError(errno.EACCES)
        if not e.writable or e.parent_inode == SHARED_INODE and mode is not None:
            raise FsError(errno.EACCES, f"{e.name!r} is shared with you read-only")
        if size is not None:
            if e.kind != "file":
                raise FsError(errno.EISDIR if e.kind == "dir" else errno.EINVAL)
            await self._truncate(e, size)
        changes: dict[str, Any] = {}
        if mode is not None:
            changes["mode"] = mode & 0o7777
        if mtime_ns is not None:
            changes["mtime_ns"] = mtime_ns
            e = self.entry(inode)
            if e.local_data:
                self.live.stat.pop(inode, None)
                async with self._changing(inode):
                    st = os.stat(self.tree.data_path(inode))
                    os.utime(self.tree.data_path(inode), ns=(st.st_atime_ns, mtime_ns))
        if changes:
            with self.tree.index.batched() as batch:  # like a create: tar and cp -p set both on every file
                ctime_ns = time.time_ns()
                self.tree.update(inode, ctime_ns=ctime_ns, **changes)
                seq = self.tree.enqueue("setattr", inode, None, None, **changes)
                batch.log(self.tree.setattr_record(inode, ctime_ns, changes, seq))
            self.wake_syncer()
        return self.getattr(inode)

    async def _truncate(self, e: Entry, size: int) -> None:
        path = self.tree.data_path(e.inode)
        if size == 0 and not e.local_data:
            with open(path, "wb"):
                pass
            with self.tree.index.transaction():  # a new, empty local copy and dirty, at once
                self.tree.update(e.inode, local_data=True)
                self._touched(e.inode, 0, TO_END)
            return
        if size != 0:
            await self.materialize(e)
        async with self._changing(e.inode):
            sf = self.tree.holes.get(e.inode)
            if sf is not None and any(h.offset < size for h in sf.within(size, size + 1)):
                with self._copy_fd(e.inode) as fd:  # the new end falls inside a hole
                    await self._fill(sf, fd, size - 1, size)
            # Marked dirty before the local copy changes: killed in between, the index must not call a
            # truncated copy clean (the mount would show the cut bytes and never upload them).
            self._touched(e.inode, size, TO_END)
            if size == 0:
                with open(path, "wb"):
                    pass
            else:
                os.truncate(path, size)
            # After the cut, not before: killed in between, holes past the end are dropped at start
            # (Mount.recover); the other way, a copy not yet cut would hold zeros where its holes were.
            self.tree.holes.cut(e.inode, size)

    # ---- file contents -------------------------------------------------------------------------

    def _open_handle(self, e: Entry, writable: bool) -> Handle:
        h = Handle(self._next_fh, e.inode, writable, version=e.version)
        self._next_fh += 1
        self._handles[h.fh] = h
        self.live.opens[e.inode] += 1
        if writable:
            self.live.writers[e.inode] += 1
        return h

    def handle(self, fh: int) -> Handle:
        try:
            return self._handles[fh]
        except KeyError:
            raise FsError(errno.EBADF) from None

    async def open(self, inode: int, flags: int) -> Handle:
        e = self.entry(inode)
        if e.kind == "dir":
            raise FsError(errno.EISDIR)
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable and not e.writable:
            raise FsError(errno.EACCES, f"{e.name!r} is shared with you read-only")
        h = self._open_handle(e, writable)
        if writable and flags & os.O_TRUNC:
            await self._truncate(e, 0)
        return h

    def _fd(self, h: Handle) -> int | None:
        if h.fd is None and self.entry(h.inode).local_data:
            h.fd = os.open(self.tree.data_path(h.inode), os.O_RDWR)
            h.sparse = self.tree.holes.get(h.inode)
        return h.fd

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        h = self.handle(fh)
        fd = self._fd(h)
        # Where a read ends is noted when it is asked, not when answered: the kernel sends a sequential
        # reader's next reads (its read-ahead) while the earlier ones are still being fetched.
        sequential, h.last_end = offset == h.last_end, offset + size
        if fd is not None:
            holes = h.sparse.within(offset, offset + size) if h.sparse else []
            if holes:
                return await self._read_sparse(h, fd, offset, size, holes, sequential)
            return os.pread(fd, size, offset)
        e = self.entry(h.inode)
        return await self.reader.read(e, offset, size, sequential=sequential,
                                      version=h.version if not h.writable else None)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        h = self.handle(fh)
        if not h.writable:
            raise FsError(errno.EBADF)
        fd = self._fd(h)
        if fd is None:
            await self.materialize(self.entry(h.inode))
            fd = self._fd(h)
            assert fd is not None
        if h.sparse:
            async with self._lock(h.sparse):
                await self._fill(h.sparse, fd, offset, offset + len(data))
                return self._write_at(h, fd, offset, data)
        return self._write_at(h, fd, offset, data)

    def _write_at(self, h: Handle, fd: int, offset: int, data: bytes) -> int:
        # Marked dirty before the bytes land: neither a kill in between nor an index that cannot record
        # it (cache disk full: the write then fails with nothing written) leaves changed bytes clean.
        self._touched(h.inode, offset, offset + len(data))
        h.wrote = True
        try:
            n = os.pwrite(fd, data, offset)
        except OSError as e:
            raise FsError(e.errno or errno.EIO, f"writing the local copy failed: {e}") from None
        return n

    def _touched(self, inode: int, start: int, end: int) -> None:
        """Bytes [start, end) of the content change: bump the live generation and note the range with it
        (the next commit cuts only around what was noted); the first change after a sync is made durable."""
        gen = self.live_gen(inode) + 1
        self.live.gen[inode] = gen
        self.edits.note(inode, start, end, gen)
        self.live.stat.pop(inode, None)
        if inode in self.live.known_dirty:
            return
        e = self.entry(inode)
        if not e.dirty:
            self.tree.update(inode, content_gen=gen)
        self.live.known_dirty.add(inode)

    def content_synced(self, inode: int) -> None:
        """The index row may be clean now: the next write must look again (and mark it dirty)."""
        self.live.known_dirty.discard(inode)

    # ---- sparse local copies (see cache/holes.py) -----------------------------------------------

    def _lock(self, sf: SparseFile) -> Any:
        assert self.filler is not None  # holes are only made with one
        return self.filler.lock(sf)

    def _changing(self, inode: int) -> Any:
        """Held while the local copy of `inode` changes other than by a write through a handle: no fill of
        it may run meanwhile (a fill puts the copy's mtime back)."""
        sf = self.tree.holes.get(inode)
        return self._lock(sf) if sf is not None else contextlib.nullcontext()

    async def _fill(self, sf: SparseFile, fd: int, start: int, end: int) -> None:
        assert self.filler is not None
        try:
            await self.filler.fill(sf, fd, start, end)
        except rerr.RemoteError as exc:
            raise FsError(errno.EIO, f"cannot fetch the chunks a local copy lacks: {exc}") from None
        except OSError as exc:
            raise FsError(exc.errno or errno.EIO, f"cannot fill the local copy: {exc}") from None

    async def fill_copy(self, inode: int, start: int = 0, end: int = TO_END) -> None:
        """Fill the holes of the local copy of `inode` within [start, end) (all of them by default), for a
        reader of the copy by name (an upload, a conflicted copy, a pin). Raises what Filler.fill does."""
        sf = self.tree.holes.get(inode)
        if sf:
            assert self.filler is not None
            async with self._lock(sf):
                with self._copy_fd(inode) as fd:
                    await self.filler.fill(sf, fd, start, end)

    @contextlib.contextmanager
    def _copy_fd(self, inode: int) -> Iterator[int]:
        fd = os.open(self.tree.data_path(inode), os.O_RDWR)
        try:
            yield fd
        finally:
            os.close(fd)

    async def _read_sparse(self, h: Handle, fd: int, offset: int, size: int, holes: list[Hole],
                           sequential: bool) -> bytes:
        """Bytes [offset, offset + size) of a sparse copy: what it holds from the copy, and each hole from
        its chunk through the reader (the chunk cache, read-ahead, ranged fetches), like a file with no
        local copy. Reading does not fill: a hole is at the same offset in the version it came from, and
        nothing but a fill writes it, so the copy stays small and a reader never waits for an fsync."""
        end = offset + size
        e = self.entry(h.inode)
        parts: list[bytes] = []
        pos = offset
        for hole in holes:
            start, stop = max(hole.offset, offset), min(hole.end, end)
            if pos < start:
                parts.append(os.pread(fd, start - pos, pos))
            base = replace(e, node_id=hole.node_id)
            parts.append(await self.reader.read(base, start, stop - start, sequential=sequential,
                                                version=hole.version))
            pos = stop
        if pos < end:
            parts.append(os.pread(fd, end - pos, pos))
        return b"".join(parts)

    async def _new_copy(self, e: Entry,
                        write: Callable[[BinaryIO], Awaitable[Layout]]) -> tuple[Layout, os.stat_result]:
        """Make `e`'s local copy: `write` fills a temporary file and returns the layout it wrote, which is
        then put in place with the file's mtime. Returns that layout and the copy's stat."""
        path = self.tree.data_path(e.inode)
        tmp = path.with_name(path.name + ".part")
        try:
            with open(tmp, "wb") as f:
                layout = await write(f)
                f.truncate(layout.size)
                st = os.fstat(f.fileno())
            os.utime(tmp, ns=(e.mtime_ns, e.mtime_ns))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.live.stat.pop(e.inode, None)
        return layout, st

    async def _materialize_sparse(self, e: Entry) -> None:
        """Give a big file a local copy that holds none of its chunks yet: each is fetched when a write or
        a read first needs it (Filler)."""
        assert e.node_id is not None
        layout = await self.reader.layout(e)
        e = self.entry(e.inode)
        if e.local_data:
            return
        if e.version != layout.version:  # another device's version came meanwhile: the copy is of that
            await self._materialize_sparse(e)
            return

        async def nothing(f: BinaryIO) -> Layout:
            return layout

        _, st = await self._new_copy(e, nothing)
        refs = layout.refs()
        with self.tree.index.transaction():
            self.tree.update(e.inode, local_data=True)
            self.tree.holes.make(e.inode, [Hole(r.offset, r.size, r.hash, e.node_id, layout.version) for r in refs])
        self.edits.known(e.inode, layout.version, refs, file_id(st), self.live_gen(e.inode))

    async def materialize(self, e: Entry) -> None:
        """Give a file a local copy so it can be written in place: whole, or sparse for a big one."""
        if e.local_data:
            return
        if self.filler is not None and e.node_id is not None and e.size >= SPARSE_MIN:
            await self._materialize_sparse(e)
            return

        async def whole(f: BinaryIO) -> Layout:
            if e.size and e.node_id is not None:
                return await self.reader.copy_to(e, f.fileno())
            return Layout.of(e.version, [])

        layout, st = await self._new_copy(e, whole)
        self.tree.update(e.inode, local_data=True)
        if layout.hashes:  # the first commit after this write cuts only what the writes change
            self.edits.known(e.inode, layout.version, layout.refs(), file_id(st), self.live_gen(e.inode))

    def _persist(self, inode: int) -> None:
        """Record the local copy's size and mtime in the index (at fsync, and for closed writers in
        persist_pending); the index only caches them: recovery takes them from the local copy again."""
        self.live.unpersisted.discard(inode)
        e = self.tree.get(inode)
        if e is None or not e.local_data:
            return
        known = self.live.stat.get(inode)
        if known is None:
            try:
                st = os.stat(self.tree.data_path(inode))
            except FileNotFoundError:
                return
            known = self.live.stat[inode] = (st.st_size, st.st_mtime_ns)
        size, mtime_ns = known
        gen = max(self.live_gen(inode), e.content_gen)
        if (e.size, e.mtime_ns, e.content_gen) != (size, mtime_ns, gen):  # e.g. release after fsync
            self.tree.update(inode, size=size, mtime_ns=mtime_ns, content_gen=gen)

    def _note_closed(self, h: Handle) -> None:
        """A writer closed: its size and mtime are known at once (getattr needs no os.stat), and go to
        the index with others later. Nothing depends on that row for safety: the first write already
        marked the file dirty there, and after a kill recovery takes both from the local copy."""
        try:
            st = os.fstat(h.fd) if h.fd is not None else os.stat(self.tree.data_path(h.inode))
        except FileNotFoundError:
            return
        self.live.stat[h.inode] = (st.st_size, st.st_mtime_ns)
        self.live.unpersisted.add(h.inode)

    def persist_pending(self, limit: int = PERSIST_GROUP) -> bool:
        """Write up to `limit` closed writers' sizes and mtimes into the index in one transaction (one
        commit per close cost a third of a small file's create-write-close here); True if more wait."""
        group = []
        while self.live.unpersisted and len(group) < limit:
            group.append(self.live.unpersisted.pop())
        if group:
            with self.tree.index.transaction():
                for inode in group:
                    self._persist(inode)
        return bool(self.live.unpersisted)

    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handle(fh)
        if h.fd is not None:
            await trio.to_thread.run_sync(os.fsync, h.fd)
        self._persist(h.inode)
        self.tree.index.sync()
        if h.wrote:
            self.live.fsync_requested.add(h.inode)
            self.wake_syncer()

    async def release(self, fh: int) -> None:
        h = self._handles.pop(fh, None)
        if h is None:
            return
        if h.wrote and h.inode not in self.live.stat:  # else fsync persisted it and nothing changed since
            self._note_closed(h)
        if h.fd is not None:
            os.close(h.fd)
        self.live.opens[h.inode] -= 1
        if h.writable:
            self.live.writers[h.inode] -= 1
            if self.live.writers[h.inode] <= 0:
                self.live.fsync_requested.discard(h.inode)
        if self.live.opens[h.inode] <= 0:
            del self.live.opens[h.inode]
        if h.wrote:
            self.wake_syncer()
        self.collect(h.inode)

    def readlink(self, inode: int) -> bytes:
        e = self.entry(inode)
        if e.kind != "symlink" or e.target is None:
            raise FsError(errno.EINVAL)
        return e.target.encode("utf-8")

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.tree.files_dir)
