"""Write-back: replays queued tree ops on the server in order, then commits changed file contents.

Invariants: an op is deleted only after the server applied it (or refused it for good, which is
logged); a file stays dirty (content_gen > synced_gen) until a commit of at least that generation
succeeded; a file's content is committed only once its create op went through. Nothing local is
discarded: a commit the server refuses as stale becomes a conflicted copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any

import trio

from cache.edits import TO_END
from cache.holes import Unfilled
from cache.tree import Entry, Op, Tree
from remote import errors as rerr
from remote.client import SMALL_FILE_BYTES, SMALL_FILES, SMALL_FILES_BYTES
from remote.models import SmallFile

log = logging.getLogger("drivefs.syncer")


class Unfillable(Exception):
    """A sparse local copy cannot be completed: its missing chunks are no longer readable on the server."""


Report = Callable[[dict], Awaitable[None]]
# A small file to send inline: what it is for (its create op or its entry), the file, the content
# generation read.
_Small = tuple[Any, SmallFile, int]

# Ops that make a new node by name in a folder; a run of up to REPLAY_RUN of them goes up together:
# the small closed files in one request with their bytes, the others concurrently, this many at once.
CREATE_KINDS = ("create", "mkdir", "symlink")
REPLAY_RUN = SMALL_FILES
REPLAY_PARALLEL = 8
# The write-back shares the FUSE thread: during a burst of requests each step waits for a pause this
# long, at most QUIET_MAX_S, and in all no longer than QUIET_MAX_S plus the time the pass has worked,
# so under a steady stream of requests it still gets about half of the thread.
QUIET_S = 0.1
QUIET_MAX_S = 1.0


def _requests(items: Iterable[_Small | None]) -> Iterator[list[_Small]]:
    """The small files of `items` (None: not one) in groups the server takes in one request (at most
    SMALL_FILES files and SMALL_FILES_BYTES bytes), drawn lazily so at most one group's bytes are held."""
    group: list[_Small] = []
    size = 0
    for item in items:
        if item is None:
            continue
        n = len(item[1].content)
        if group and (len(group) == SMALL_FILES or size + n > SMALL_FILES_BYTES):
            yield group
            group, size = [], 0
        group.append(item)
        size += n
    if group:
        yield group


def _carries(node: Any, attrs: dict[str, Any]) -> bool:
    """Whether a node the server returned already has the mode and mtime a queued setattr would set."""
    if node is None:
        return False
    return all(attrs.get(k) is None or getattr(node, k) == attrs[k] for k in ("mode", "mtime_ns"))


@dataclass(frozen=True)
class SyncStatistics:
    """What `drive status` shows of the write-back."""

    online: bool
    pending_ops: int
    pending_files: int
    pending_items: int  # files and folders with any pending change, each once
    pending_bytes: int
    last_sync: float | None
    last_error: str | None
    uploading: str | None


def conflict_name(name: str, device: str, day: date, n: int = 1) -> str:
    """'report (conflicted copy from laptop 2026-11-21).txt' — the extension stays last."""
    p = PurePosixPath(name)
    stem, ext = (p.stem, p.suffix) if p.suffix and p.stem else (name, "")
    extra = f" {n}" if n > 1 else ""
    return f"{stem} (conflicted copy from {device} {day.isoformat()}{extra}){ext}"


class Syncer:
    """Pushes local changes to the server in the background."""

    def __init__(self, vfs: Any, tree: Tree, remote: Any, transfer: Any, device: str,
                 debounce_s: float = 0.1, retry_max_s: float = 30.0) -> None:
        self.vfs = vfs
        self.tree = tree
        self.remote = remote
        self.transfer = transfer
        self.device = device
        self.debounce_s = debounce_s
        self.retry_max_s = retry_max_s
        self.online = True
        self.last_sync: float | None = None
        self.last_error: str | None = None
        self.uploading: str | None = None
        self._wakeup = trio.Event()
        self.stuck = False  # the last pass left a change the server refused
        self._force = 0
        self._flush_asked = trio.Event()  # set while a flush waits: cuts a debounce short
        self._progress = trio.Event()
        self._bytes_done = 0
        self._pass_start = self._pass_waited = 0.0  # when the pass began, and how long it waited for pauses

    def wake(self) -> None:
        self._wakeup.set()

    def statistics(self) -> SyncStatistics:
        dirty = [e for e in self.tree.dirty_files() if e.parent_inode is not None]
        return SyncStatistics(self.online, self.tree.pending_ops(), len(dirty), self.tree.pending_items(),
                              sum(self.vfs.attr(e).size for e in dirty), self.last_sync, self.last_error,
                              self.uploading)

    def _pending(self) -> bool:
        return self.tree.pending_ops() > 0 or any(e.parent_inode is not None for e in self.tree.dirty_files())

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failures = 0
        first = True  # changes left from before a restart go up at once
        while True:
            if first:
                first = False
            elif self._force and self._pending():
                await trio.lowlevel.checkpoint()  # a flush is waiting: no debounce, but let others run
            else:
                with trio.move_on_after(5.0 if self._pending() else 60.0):
                    await self._wakeup.wait()
                if not self._force:
                    await self._debounce()
            self._wakeup = trio.Event()
            try:
                await self.sync_once(force=self._force > 0)
                failures = 0
                self.online = True
            except rerr.TransportFailure as e:
                failures += 1
                self.online = False
                self._note_error(f"cannot reach the server: {e}")
                await trio.sleep(min(self.retry_max_s, 0.5 * 2 ** min(failures, 6)))
            except rerr.ServerError as e:
                failures += 1
                self._note_error(f"the server keeps failing: {e}")
                await trio.sleep(min(self.retry_max_s, 0.5 * 2 ** min(failures, 6)))
            except Exception as e:
                # A bug must not end the write-back (and with it the mount): keep everything queued.
                failures += 1
                log.exception("write-back pass failed")
                self._note_error(f"write-back failed: {e}")
                await trio.sleep(min(self.retry_max_s, 0.5 * 2 ** min(failures, 6)))
            finally:
                self._progress.set()
                self._progress = trio.Event()

    async def _debounce(self) -> None:
        """Let rapid rewrites coalesce for debounce_s, unless a flush asks meanwhile (it would otherwise
        wait out the rest: a `drive flush` right after a save took 0.1 s longer than its commit)."""
        with trio.move_on_after(self.debounce_s):
            await self._flush_asked.wait()

    async def _quiet_moment(self) -> None:
        """Wait until no FUSE request came for QUIET_S, within the pass's budget; not while a flush waits."""
        start = trio.current_time()
        worked = start - self._pass_start - self._pass_waited
        deadline = start + max(0.0, min(QUIET_MAX_S, QUIET_MAX_S + worked - self._pass_waited))
        try:
            while not self._force:
                now = trio.current_time()
                wait = min(self.vfs.last_request + QUIET_S, deadline) - now
                if wait <= 0:
                    return
                await trio.sleep(min(wait, 0.05))  # in steps, so a flush asking meanwhile is not kept waiting
        finally:
            self._pass_waited += trio.current_time() - start

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s", message)
        self.last_error = message

    async def sync_once(self, force: bool = False) -> None:
        """One pass: every queued op, then every file whose content is ready to commit."""
        self.stuck = False
        self._pass_start, self._pass_waited = trio.current_time(), 0.0
        while self.vfs.persist_pending():
            await trio.lowlevel.checkpoint()
        await self.replay_ops()
        await self._update_small_files(force)
        for e in self.tree.dirty_files():
            if e.parent_inode is None or e.node_id is None:
                continue
            if self.vfs.is_being_written(e.inode) and not force:
                continue
            await self._quiet_moment()
            try:
                await self.upload_content(e)
            except (rerr.TransportFailure, rerr.ServerError):
                raise
            except rerr.RemoteError as exc:
                # Refused for this file only (e.g. too large): it stays dirty, the others go on.
                self.stuck = True
                self._note_error(f"cannot commit {e.name!r}: {exc}")
        self.last_sync = time.time()
        if not self._pending():
            self.last_error = None

    async def flush(self, report: Report) -> dict:
        """Block until every local change is committed; report progress as bytes and files go up."""
        start = self.statistics()
        total_bytes, total_files = start.pending_bytes, start.pending_items
        self._force += 1
        self._flush_asked.set()
        try:
            while self._pending():
                self.wake()
                progress = self._progress
                await progress.wait()
                now = self.statistics()
                left = now.pending_items
                await report({"done_bytes": max(total_bytes - now.pending_bytes, 0), "total_bytes": total_bytes,
                              "done_files": max(total_files - left, 0), "total_files": total_files})
                if not self.online or self.stuck:
                    return {"ok": False, "error": f"{left} changes still pending: {self.last_error}"}
        finally:
            self._force -= 1
            if not self._force:
                self._flush_asked = trio.Event()
        await report({"done_bytes": total_bytes, "total_bytes": total_bytes, "done_files": total_files,
                      "total_files": total_files})
        return {"ok": True, "error": None}

    # ---- tree ops ------------------------------------------------------------------------------

    async def replay_ops(self) -> None:
        while True:
            batch = list(self.tree.ops(limit=2 * REPLAY_RUN))
            if not batch:
                return
            for i, op in enumerate(batch):
                await self._quiet_moment()
                creates = self._independent_creates(batch, i)
                if creates:
                    # The run also settles later ops of its nodes (their setattrs), so read the queue again.
                    await self._replay_creates(creates)
                    break
                await self._replay(op)

    async def _replay(self, op: Op) -> Any:
        """Apply one op and drop it from the queue; the node it created, if it created one."""
        node = None
        try:
            node = await self._apply(op)
        except (rerr.TransportFailure, rerr.ServerError):
            raise  # not applied: the op stays queued for the next pass
        except rerr.ApiError as e:
            # The server refused for good (e.g. the folder was deleted elsewhere): record and move on.
            self._note_error(f"{op.kind} of {op.name!r} was refused by the server: {e}")
            self.tree.op_failed(op.seq, str(e))
        self.tree.op_done(op.seq)
        for inode in (op.inode, op.parent_inode, op.other_inode):
            if inode is not None:
                self.vfs.collect(inode)
        return node

    def _independent_creates(self, batch: list[Op], start: int) -> list[Op]:
        """The run of creates from `start` that may go up at once.

        Creates of new names do not depend on each other (a second create of the same name would need
        an unlink or rename between them, which ends the run), only on their folder: one that already
        has a server id, or a folder made earlier in the run (the run goes up in waves, see
        _replay_creates). A setattr of a node created in the run only needs its create first, so it
        does not end the run: the create usually carries its mode and mtime (see _settle_setattrs).
        Anything else ends the run, keeping every other op in queue order.
        """
        creates: list[Op] = []
        inodes: set[int] = set()
        folders: set[int] = set()
        for op in batch[start:]:
            if op.kind == "setattr" and op.inode in inodes:
                continue
            elif op.kind in CREATE_KINDS and op.inode not in inodes and len(creates) < REPLAY_RUN \
                    and (op.parent_inode in folders or self._node_id(op.parent_inode) is not None):
                creates.append(op)
                inodes.add(op.inode)
                if op.kind == "mkdir":
                    folders.add(op.inode)
            else:
                break
        return creates

    async def _replay_creates(self, creates: list[Op]) -> None:
        """Replay a run of creates in waves: each wave is every create whose folder has its server id by
        then, so the folders one wave makes let the creates inside them go in the next (a tar of nested
        folders takes a few waves per run, not a run per folder). The setattrs of the nodes made are
        settled as the creates succeed, even when another create of the run fails.

        Each create is idempotent on retry (saved upload session, adoption of a lost answer), so one
        failing or being cancelled leaves its op queued and harmless. The first failure is raised once
        the others of its wave finished, as a plain exception the loop in run() knows how to retry.
        """
        created: dict[int, Any] = {}
        try:
            waiting = creates
            while waiting:
                wave = [op for op in waiting if self._node_id(op.parent_inode) is not None]
                if not wave:
                    break
                waiting = [op for op in waiting if self._node_id(op.parent_inode) is None]
                created.update(await self._replay_wave(wave))
            for op in waiting:  # their folder did not get made as such (say it became a conflicted copy)
                created[op.inode] = await self._replay(op)
        finally:
            for inode, node in created.items():
                self._settle_setattrs(inode, node)

    def _settle_setattrs(self, inode: int, node: Any) -> None:
        """Drop the queued setattrs of a node just created if the create already sent what they end at.

        A create sends the mode and mtime the node has when it goes up, so the setattrs queued before
        (or while) it went up usually add nothing, however many there are and wherever they sit in the
        queue. Taken one by one they could undo it: chmod 644 then 600 before the create, which sent
        600, must not send 644. So all of them are dropped, or none (they then go up in queue order).
        """
        ops = self.tree.ops_of(inode, "setattr")
        final: dict[str, Any] = {}
        for op in ops:
            final.update((k, v) for k, v in op.args.items() if v is not None)
        if ops and _carries(node, final):
            self.tree.op_done(*(op.seq for op in ops))
            self.vfs.collect(inode)

    async def _replay_wave(self, creates: list[Op]) -> dict[int, Any]:
        """Replay creates that do not depend on each other: the small closed files together, inline,
        the others concurrently (the server is latency-bound); the nodes made, by inode."""
        created = await self._create_small_files(creates)
        failures: list[Exception] = []
        limiter = trio.CapacityLimiter(REPLAY_PARALLEL)

        async def one(op: Op) -> None:
            async with limiter:
                try:
                    created[op.inode] = await self._replay(op)
                except Exception as e:  # noqa: BLE001 - kept, and raised once the others are done
                    failures.append(e)

        async with trio.open_nursery() as nursery:
            for op in creates:
                if op.inode not in created:
                    nursery.start_soon(one, op)
        if failures:
            raise failures[0]
        return created

    async def _create_small_files(self, creates: list[Op]) -> dict[int, Any]:
        """Create the small closed files among `creates` on the server in one request per SMALL_FILES,
        bytes included, and return the nodes made by inode. A file the server refuses is left to the
        one-by-one path (which knows what to do about a name taken, a folder gone …); a lost answer
        raises with every op still queued, and the retry meets Exists for the files it made, which
        _adopt_own_create takes back."""
        created: dict[int, Any] = {}
        for group in _requests(self._small_create(op) for op in creates):
            created.update(await self._send_small_files(group))
        return created

    def _small_create(self, op: Op) -> tuple[Op, SmallFile, int] | None:
        """A file create op with its file read whole and the content generation read (None: not a small,
        closed file with its local copy, so it goes up the usual way)."""
        e = self.tree.get(op.inode)
        parent_id = self._node_id(op.parent_inode)
        if op.kind != "create" or e is None or e.kind != "file" or e.node_id is not None or not e.local_data \
                or e.parent_inode is None or parent_id is None or op.name is None \
                or self.vfs.is_being_written(e.inode):
            return None
        read = self._read_small(e)
        if read is None:
            return None
        data, mtime_ns, gen = read
        return op, SmallFile(data, parent_id, op.name, mode=e.mode, mtime_ns=mtime_ns), gen

    def _read_small(self, e: Entry) -> tuple[bytes, int, int] | None:
        """A file's local copy read whole, its mtime and the content generation read, if it is at most
        SMALL_FILE_BYTES long (None otherwise, or when it has no local copy)."""
        gen = self.vfs.live_gen(e.inode)  # before the read: a write after it leaves the file dirty
        if e.inode in self.tree.holes:
            return None  # a sparse copy (big when made) goes up the usual way, which fills what it reads
        try:
            with open(self.tree.data_path(e.inode), "rb") as f:
                st = os.fstat(f.fileno())
                if st.st_size > SMALL_FILE_BYTES:
                    return None
                data = f.read(SMALL_FILE_BYTES + 1)
        except FileNotFoundError:
            return None
        if len(data) > SMALL_FILE_BYTES:
            return None
        return data, st.st_mtime_ns, gen

    async def _send_small_files(self, pending: list[tuple[Op, SmallFile, int]]) -> dict[int, Any]:
        results = await self._commit_small([f for _, f, _ in pending])
        created: dict[int, Any] = {}
        for (op, _, gen), result in zip(pending, results, strict=True):
            if isinstance(result, rerr.ApiError):
                log.debug("%r was refused in a batch (%s); trying it alone", op.name, result)
                continue
            self._committed(op.inode, result, gen)
            self.tree.op_done(op.seq)
            self.vfs.collect(op.inode)
            created[op.inode] = result
        log.info("created %d small files in one request", len(created))
        return created

    def _node_id(self, inode: int | None) -> int | None:
        e = self.tree.get(inode) if inode is not None else None
        return e.node_id if e else None

    async def _apply(self, op: Op) -> Any:
        """Replay one op on the server; a create returns the node the server made (None if not known)."""
        e = self.tree.get(op.inode)
        if e is None:
            return None
        if op.kind in CREATE_KINDS:
            parent_id = self._node_id(op.parent_inode)
            if parent_id is None:
                raise rerr.NotFound(f"the folder of {op.name!r} does not exist on the server")
            if e.node_id is not None:
                return None  # already created (a retry after the response was lost and adopted)
            return await getattr(self, f"_create_{op.kind}")(e, op, parent_id)
        elif op.kind == "rename":
            await self._rename(e, op)
        elif op.kind in ("unlink", "rmdir"):
            if e.node_id is not None:
                try:
                    await self.remote.delete(e.node_id, require_empty=op.kind == "rmdir")
                except rerr.NotFound:
                    pass
        elif op.kind == "setattr":
            if e.node_id is not None:
                await self.remote.set_attr(e.node_id, mode=op.args.get("mode"), mtime_ns=op.args.get("mtime_ns"))
        return None

    async def _create_mkdir(self, e: Entry, op: Op, parent_id: int) -> Any:
        try:
            node = await self.remote.create_folder(parent_id, op.name, mode=e.mode, mtime_ns=e.mtime_ns)
        except rerr.Exists as exc:
            if exc.details.get("kind") != "dir":
                raise
            node = await self.remote.get_node(exc.details["node_id"])  # merge with the folder already there
        self.tree.update(e.inode, node_id=node.id, owner=node.owner, access=node.access)
        return node

    async def _create_symlink(self, e: Entry, op: Op, parent_id: int) -> Any:
        try:
            node = await self.remote.create_symlink(parent_id, op.name, e.target or "", mtime_ns=e.mtime_ns)
        except rerr.Exists as exc:
            # Our earlier attempt whose answer was lost (or the same link made elsewhere): the same link
            # is already there, so take it; refusing would leave the local link without a server id.
            if exc.details.get("kind") != "symlink":
                raise
            node = await self.remote.get_node(exc.details["node_id"])
            if node.target != (e.target or ""):
                raise
        self.tree.update(e.inode, node_id=node.id, owner=node.owner, access=node.access)
        return node

    async def _create_create(self, e: Entry, op: Op, parent_id: int) -> Any:
        assert op.name is not None
        return await self._create_file(e, parent_id, op.name)

    async def _create_file(self, e: Entry, parent_id: int, wanted: str) -> Any:
        """Create the file on the server (with its content if closed); the new node, None if adopted."""
        name = wanted
        node = None
        for n in range(1, 100):
            try:
                if self.vfs.is_being_written(e.inode):
                    node = await self.remote.commit_file([], 0, parent_id=parent_id, name=name, mode=e.mode,
                                                         mtime_ns=e.mtime_ns)
                    self.tree.update(e.inode, node_id=node.id, version=node.version, owner=node.owner,
                                     access=node.access)
                else:
                    try:
                        node = await self._commit_content(e, parent_id=parent_id, name=name)
                    except rerr.FileChanged:
                        # Reopened and written during the upload: create it empty now (the op must not be
                        # dropped as refused), the content follows as a dirty file.
                        node = await self.remote.commit_file([], 0, parent_id=parent_id, name=name, mode=e.mode,
                                                             mtime_ns=e.mtime_ns)
                        self.tree.update(e.inode, node_id=node.id, version=node.version, owner=node.owner,
                                         access=node.access)
                break
            except rerr.Exists as exc:
                if await self._adopt_own_create(e, exc):
                    break
                # Another device created the same name meanwhile: ours becomes a conflicted copy.
                name = conflict_name(wanted, self.device, date.today(), n)
                log.warning("%r already exists on the server; keeping the local file as %r", wanted, name)
                self.tree.update(e.inode, name=name)
                self.vfs.invalidate(e.inode, e.parent_inode, wanted)
        return node

    async def _adopt_own_create(self, e: Entry, exc: rerr.Exists) -> bool:
        """Whether the file in the way is this device's own earlier create whose answer was lost (a
        direct commit is not retried, so its retry meets the file it made: one version, made by this
        device, empty or with this file's bytes as sent inline). If so it becomes this inode's node and
        the content follows as a normal commit; otherwise it would be taken for another device's file
        and ours renamed to a conflicted copy."""
        node_id = exc.details.get("node_id")
        if exc.details.get("kind") != "file" or node_id is None:
            return False
        versions = await self.remote.versions(node_id)
        if len(versions) != 1 or versions[0].device != self.device:
            return False
        if versions[0].size != 0 and versions[0].content_hash != self._small_content_hash(e, versions[0].size):
            return False
        node = await self.remote.get_node(node_id)
        self.tree.update(e.inode, node_id=node.id, version=node.version, owner=node.owner, access=node.access)
        log.info("%r was created by an earlier attempt whose answer was lost; taking that node", e.name)
        return True

    def _small_content_hash(self, e: Entry, size: int) -> str | None:
        """The SHA-256 of a small file's local copy if it is `size` bytes long (None otherwise)."""
        read = self._read_small(e) if e.local_data else None
        if read is None or len(read[0]) != size:
            return None
        return hashlib.sha256(read[0]).hexdigest()

    async def _rename(self, e: Entry, op: Op) -> None:
        parent_id = self._node_id(op.parent_inode)
        if e.node_id is None or parent_id is None:
            raise rerr.NotFound(f"{e.name!r} or its new folder is not on the server")
        target = self.tree.get(op.other_inode) if op.other_inode is not None else None
        if e.kind == "file" and e.dirty and target is not None and target.node_id is not None:
            await self.upload_content(self.tree.get(e.inode) or e)  # the save-over must carry the new bytes
        try:
            node = await self.remote.move(e.node_id, parent_id, op.name, replace=True)
        except rerr.NotFound:
            saved = await self._save_over_went_through(e.inode, target, parent_id, op.name)
            if saved is None:
                raise
            node = saved
        if node.id != e.node_id:
            # Saved over an existing file: the server kept the target's id, shares and history.
            with self.tree.index.transaction():
                if target is not None:
                    self.tree.update(target.inode, node_id=None)
                self.tree.update(e.inode, node_id=node.id, version=node.version, content_hash=node.content_hash,
                                 owner=node.owner, access=node.access)

    async def _save_over_went_through(self, inode: int, target: Entry | None, parent_id: int,
                                      name: str | None) -> Any:
        """The target node, if an earlier try of this save-over was applied and its answer lost.

        The server folds the moved file into the target (which keeps its id), so the retried move finds
        the moved node gone. Without this the op would be dropped as refused while the local row keeps
        the dead id, and the next edit would 're-create' the file beside the target as a conflicted copy.
        It went through if the target is still at that name and its newest version is this device's,
        with the moved file's content.
        """
        e = self.tree.get(inode)
        if e is None or e.kind != "file" or e.content_hash is None or target is None or target.node_id is None:
            return None
        try:
            node = await self.remote.get_node(target.node_id)
            versions = await self.remote.versions(target.node_id)
        except rerr.NotFound:
            return None
        if node.deleted or node.parent_id != parent_id or node.name != name or not versions:
            return None
        newest = max(versions, key=lambda v: v.version)
        if newest.device != self.device or newest.content_hash != e.content_hash:
            return None
        log.info("the save of %r over %r went through before its answer was lost", e.name, name)
        return node

    # ---- file contents -------------------------------------------------------------------------

    async def upload_content(self, e: Entry) -> None:
        try:
            await self._upload_content(e)
        except Unfillable as exc:  # this file waits; the others go on
            self._note_error(str(exc))

    async def _upload_content(self, e: Entry) -> None:
        if e.node_id is None or not e.local_data:
            return
        try:
            await self._commit_content(e, node_id=e.node_id, base_version=e.version)
        except rerr.VersionConflict:
            await self._save_conflicted_copy(e)
        except rerr.NotFound:
            await self._recreate(e)
        except rerr.FileChanged:
            # Written again while we read it (an fsync'ing database does this): it stays dirty and goes up
            # on a later pass. Letting this escape would end the syncer and with it the whole mount.
            log.info("%r changed while it was uploaded; trying again later", e.name)

    async def _commit_small(self, files: list[SmallFile]) -> list[Any]:
        """The server's answer for each file; if it refuses the whole request (a server without
        /files/small, say), every file gets that refusal and so takes the one-by-one path."""
        try:
            return await self.remote.commit_small_files(files)
        except rerr.ApiError as e:
            log.warning("the server refused %d small files sent together (%s); sending them one by one",
                        len(files), e)
            return [e] * len(files)

    async def _update_small_files(self, force: bool) -> None:
        """Commit the changed small files in requests of up to SMALL_FILES, bytes included. One the
        server refuses stays dirty for the one-by-one path (conflicted copy, re-create …), except a
        version conflict with this very content: an earlier attempt whose answer was lost, taken as done."""
        for group in _requests(self._small_update(e, force) for e in self.tree.dirty_files()):
            await self._send_small_updates(group)

    def _small_update(self, e: Entry, force: bool) -> tuple[Entry, SmallFile, int] | None:
        """A changed file with its new version read whole and the content generation read (None: not a
        small file with its local copy, ready to commit, so it goes up the usual way)."""
        if e.parent_inode is None or e.node_id is None or not e.local_data \
                or self.vfs.is_being_written(e.inode) and not force:
            return None
        read = self._read_small(e)
        if read is None:
            return None
        data, mtime_ns, gen = read
        return e, SmallFile(data, node_id=e.node_id, base_version=e.version, mode=e.mode, mtime_ns=mtime_ns), gen

    async def _send_small_updates(self, pending: list[tuple[Entry, SmallFile, int]]) -> None:
        await self._quiet_moment()
        results = await self._commit_small([f for _, f, _ in pending])
        done = 0
        for (e, f, gen), result in zip(pending, results, strict=True):
            if isinstance(result, rerr.VersionConflict):
                result = await self._own_version(e, f, result)
            if isinstance(result, rerr.ApiError):
                log.debug("%r was refused in a batch (%s); trying it alone", e.name, result)
                continue
            self._committed(e.inode, result, gen)
            done += 1
        log.info("committed %d small files in one request", done)

    async def _own_version(self, e: Entry, f: SmallFile, conflict: rerr.VersionConflict) -> Any:
        """The server's node if the version in the way has the very bytes sent (an earlier attempt whose
        answer was lost, and the node fetched afterwards still has them), else the conflict."""
        ours = hashlib.sha256(f.content).hexdigest()
        if conflict.details.get("content_hash") != ours or e.node_id is None:
            return conflict
        try:
            node = await self.remote.get_node(e.node_id)
        except rerr.ApiError:  # gone since: the one-by-one path sees to it
            return conflict
        if node.content_hash != ours:
            return conflict
        log.info("%r: the server already has this content (an answer lost earlier)", e.name)
        return node

    async def _recreate(self, e: Entry) -> None:
        """Deleted on another device while edited here: the edit wins, as a new file in the same place."""
        parent = self.tree.get(e.parent_inode) if e.parent_inode is not None else None
        if parent is None or parent.node_id is None:
            return
        log.warning("%r was deleted elsewhere while changed here; putting this device's version back", e.name)
        cur = self.tree.update(e.inode, node_id=None, version=0)
        await self._create_file(cur, parent.node_id, e.name)

    async def _commit_content(self, e: Entry, **target: Any) -> Any:
        path = self.tree.data_path(e.inode)
        base = target.get("base_version")
        cut: list[tuple[Any, Any]] = []
        self.uploading = e.name
        try:
            while True:
                gen = self.vfs.live_gen(e.inode)
                mtime_ns = os.stat(path).st_mtime_ns
                known = self.vfs.edits.take(e.inode, base, gen) if base is not None else None
                try:
                    node = await self.transfer.upload_file(
                        path, mode=e.mode, mtime_ns=mtime_ns, index=self.tree.index, upload_key=f"inode:{e.inode}",
                        known=known, on_committed=lambda refs, file_id: cut.append((refs, file_id)),
                        holes=self.tree.holes.get(e.inode), **target)
                    break
                except Unfilled as hole:
                    # A sparse copy: fetch what the cut wanted to read (all of it for a whole cut), and cut
                    # again; the chunks already sent are not sent twice.
                    await self._fill(e, hole.start, hole.end)
        finally:
            self.uploading = None
        self._committed(e.inode, node, gen)
        if cut and self.vfs.live_gen(e.inode) == gen:  # the next commit cuts only what changes from here
            self.vfs.edits.known(e.inode, node.version, cut[0][0], cut[0][1], gen)
        else:
            self.vfs.edits.drop(e.inode)
        log.info("committed %r as version %d (%d bytes)", e.name, node.version, node.size)
        return node

    async def _fill(self, e: Entry, start: int, end: int) -> None:
        """Fill bytes [start, end) of a sparse local copy, for a reader of it by name."""
        try:
            await self.vfs.fill_copy(e.inode, start, end)
        except rerr.NotFound as exc:  # not the file being gone: the chunks it lacks are
            raise Unfillable(f"{e.name!r} cannot be uploaded: the parts of it this device never fetched "
                             f"are no longer readable on the server ({exc})") from None

    def _committed(self, inode: int, node: Any, gen: int) -> None:
        """Record a commit of the content of generation `gen`: the file is clean unless written since.

        Written since is judged by the live generation too, not only the row's: writes to a file already
        dirty leave the row alone (and a close records its generation only later, with others), so
        without it the row would read clean while the local copy holds bytes the server never got."""
        with self.tree.index.transaction():
            cur = self.tree.get(inode)
            if cur is None:
                return
            self.tree.update(inode, node_id=node.id, version=node.version, size=node.size,
                             content_hash=node.content_hash, owner=node.owner, access=node.access,
                             synced_gen=gen, content_gen=max(cur.content_gen, gen, self.vfs.live_gen(inode)))
            self.vfs.content_synced(inode)

    async def _save_conflicted_copy(self, e: Entry) -> None:
        """The server moved past our base: keep ours beside it as a conflicted copy, take theirs."""
        if self.vfs.has_handles(e.inode) or e.parent_inode is None:
            return  # retried once the file is closed
        parent = self.tree.get(e.parent_inode)
        assert parent is not None and parent.node_id is not None
        for n in range(1, 100):
            name = conflict_name(e.name, self.device, date.today(), n)
            if self.tree.child(parent.inode, name) is None:
                break
        assert e.node_id is not None
        server = await self.remote.get_node(e.node_id)
        await self._fill(e, 0, TO_END)  # the copy becomes a new file: all of it is read
        ours = self.tree.data_path(e.inode)
        copy_path: Path | None = None
        try:
            with self.tree.index.transaction():
                copy = self.tree.add(parent.inode, name, "file", e.mode, owner=e.owner, access=e.access,
                                     local_data=True, content_gen=1)
                # The bytes get a second name before the rows change and lose the first only after the
                # commit: killed anywhere in between, one committed row names them, and recovery
                # removes the other name (Mount.recover). A move here would leave them under a row
                # the rollback removed.
                copy_path = self.tree.data_path(copy.inode)
                copy_path.unlink(missing_ok=True)  # a stray a rolled-back create left under this number
                os.link(ours, copy_path)
                self.tree.enqueue("create", copy.inode, parent.inode, name)
                self.tree.update(e.inode, local_data=False, version=server.version, size=server.size,
                                 mtime_ns=server.mtime_ns, content_hash=server.content_hash,
                                 synced_gen=e.content_gen)
        except BaseException:
            if copy_path is not None:
                copy_path.unlink(missing_ok=True)
            raise
        ours.unlink(missing_ok=True)
        self.vfs.live.gen[e.inode] = e.content_gen
        self.vfs.live.gen[copy.inode] = 1
        self.vfs.content_synced(e.inode)
        log.warning("%r changed on the server too; kept this device's version as %r", e.name, name)
        self.vfs.invalidate(e.inode, parent.inode, name)
