"""Pinned files and folders (`drive pin`): their content is fetched ahead and kept on this device.

A pin names an inode (a file, or a folder and everything in it, now and later). For each file it
covers, the chunks of the file's current version are pinned in the chunk cache under the owner
`pin:<inode>` (eviction never deletes a pinned chunk) and fetched; a file with a whole local copy keeps
that copy instead (the evictor asks `covers`). When a covered file changes (a new version from another
device, a new file in a pinned folder) the daemon calls `changed`, and the background task fetches
what the new state needs and lets go of the old version's chunks. Unpinning releases the chunks; they
stay cached until the cache needs room.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import trio

from cache.chunkcache import ChunkCache
from cache.tree import ROOT_INODE, Entry, Tree
from remote import errors as rerr
from remote.tasks import worker_nursery

from .config import format_size
from .vfs import FsError

log = logging.getLogger("drivefs.pinner")

# Chunks asked for at a time while a pinned file is filled in (one URL request, parallel GETs).
FETCH_WINDOW = 16
# Covered files filled in at a time.
PARALLEL_FILES = 4
# After a change inside a pin, wait this long for more changes before fetching.
SETTLE_S = 1.0
# A fetch that failed (server away) is tried again after this long.
RETRY_S = 15.0
_PAGE = 1000

Report = Callable[[dict], Awaitable[None]]
Fetch = Callable[[int, int, Sequence[tuple[str, int]]], Awaitable[None]]


def owner(inode: int) -> str:
    """The chunk-pin owner tag of one covered file."""
    return f"pin:{inode}"


@dataclass(frozen=True)
class PinSummary:
    """A pinned path as `drive pin` reports it: how much it holds and how much is not on this device yet."""

    path: str
    files: int
    bytes: int
    missing_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


class Pinner:
    """Owns the pins: the `pinned` table, the chunk pins of covered files, and fetching them."""

    def __init__(self, tree: Tree, chunks: ChunkCache, ensure_listed: Callable[[Entry], Awaitable[None]],
                 layout: Callable[[Entry], Awaitable[Sequence[tuple[str, int]]]], fetch: Fetch) -> None:
        self.tree = tree
        self.chunks = chunks
        self.ensure_listed = ensure_listed
        self.layout = layout
        self.fetch = fetch
        self._roots = {inode for (inode,) in tree.conn.execute("SELECT inode FROM pinned")}
        self._pending: set[int] = set()
        self._wakeup = trio.Event()

    # ---- what is pinned -------------------------------------------------------------------------

    def roots(self) -> list[int]:
        return sorted(self._roots)

    def covers(self, inode: int) -> bool:
        """Whether the inode is pinned itself or lies inside a pinned folder."""
        return bool(self._roots) and any(a.inode in self._roots for a in self._lineage(inode))

    def path_of(self, inode: int) -> str:
        return "/".join(reversed([a.name for a in self._lineage(inode) if a.parent_inode is not None]))

    def _lineage(self, inode: int | None) -> Iterator[Entry]:
        """The entry of `inode`, then its folder, and so on up to the root."""
        e = self.tree.get(inode) if inode is not None else None
        while e is not None:
            yield e
            e = self.tree.get(e.parent_inode) if e.parent_inode is not None else None

    def _drop_root(self, inode: int) -> None:
        with self.tree.index.transaction() as conn:
            conn.execute("DELETE FROM pinned WHERE inode = ?", (inode,))
        self._roots.discard(inode)

    # ---- the commands ---------------------------------------------------------------------------

    async def pin(self, e: Entry, report: Report | None = None) -> PinSummary:
        """Pin `e` and fetch everything it covers now (progress through `report`); what cannot be fetched
        now (server away) is fetched later, and the summary counts it as missing."""
        if e.kind == "symlink":
            raise ValueError(f"{self.path_of(e.inode) or 'the drive'} is a symbolic link: pin what it points to")
        try:
            files, listed = [f async for f in self._files(e, list_missing=True)], True
        except (FsError, OSError, rerr.RemoteError):
            files, listed = [f async for f in self._files(e, list_missing=False)], False  # what is known here
        await self._check_room(e, files)
        with self.tree.index.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO pinned(inode) VALUES (?)", (e.inode,))
        self._roots.add(e.inode)
        try:
            # No cache-limit guard per file: _check_room has just counted all of it.
            await self._keep_files(files, report, guard=False)
        except (FsError, OSError, rerr.RemoteError) as exc:
            log.info("pinned %r; not all of it could be fetched yet: %s", self.path_of(e.inode), exc)
            listed = False
        if not listed:
            # Pinned all the same: the background task goes on once the server is back, and the
            # summary says how much is not here yet.
            self._pending.add(e.inode)
            self._wakeup.set()
        return await self.summary(e)

    async def _check_room(self, e: Entry, files: list[Entry]) -> None:
        """Refuse a pin that, with what is pinned already, would not fit in the cache: pinned content
        is never evicted, so the cache would outgrow its limit (and then the disk)."""
        covered = {f.inode: f.size for f in files}
        for root in self.roots():
            entry = self.tree.get(root)
            if entry is not None:
                async for f in self._files(entry, list_missing=False):
                    covered[f.inode] = f.size
        total, limit = sum(covered.values()), self.chunks.limit
        if total > limit:
            where = self.path_of(e.inode) or "the drive"
            raise ValueError(f"cannot pin {where}: with what is pinned already that is {format_size(total)}, more "
                             f"than this mount's cache limit of {format_size(limit)} (pinned files are never "
                             "evicted); mount with a larger --cache-limit, or pin less")

    async def unpin(self, e: Entry) -> PinSummary:
        """Drop the pin on `e`; the chunks it held may be evicted once nothing else pins them."""
        if e.inode not in self._roots:
            above = next((a.inode for a in self._lineage(e.parent_inode) if a.inode in self._roots), None)
            where = self.path_of(e.inode) or "the drive"
            if above is not None:
                raise ValueError(f"{where} is inside the pinned folder {self.path_of(above) or 'the drive'}: "
                                 "unpin that folder instead")
            raise ValueError(f"{where} is not pinned")
        self._drop_root(e.inode)
        async for f in self._files(e, list_missing=False):
            if not self.covers(f.inode):
                self.chunks.unpin_owner(owner(f.inode))
        return await self.summary(e)

    async def summary(self, e: Entry) -> PinSummary:
        """Sizes of what `e` covers as this device knows it (folders not listed yet count as empty)."""
        files = total = missing = 0
        async for f in self._files(e, list_missing=False):
            files += 1
            total += f.size
            missing += self._missing_bytes(f)
        return PinSummary(self.path_of(e.inode), files, total, missing)

    async def summaries(self) -> list[PinSummary]:
        out = []
        for inode in self.roots():
            e = self.tree.get(inode)
            if e is not None:
                out.append(await self.summary(e))
        return out

    # ---- keeping pinned content current ---------------------------------------------------------

    def changed(self, inode: int) -> None:
        """Something about `inode` changed (its content, or it is new): look at it again if pinned."""
        if not self._roots:
            return
        if self.tree.get(inode) is None:
            self.chunks.unpin_owner(owner(inode))  # deleted: its chunks may go
        elif self.covers(inode):
            self._pending.add(inode)
            self._wakeup.set()

    async def run(self) -> None:
        """Background task: check every pin once (the mount may have been away), then follow changes."""
        self._forget_stale()
        self._pending.update(self._roots)
        if self._pending:
            self._wakeup.set()
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            await trio.sleep(SETTLE_S)
            batch, self._pending = self._pending, set()
            failed = False
            for inode in sorted(batch):
                e = self.tree.get(inode)
                if not _in_tree(e) or not self.covers(inode):
                    self.chunks.unpin_owner(owner(inode))
                    continue
                try:
                    await self._keep(e)
                except (FsError, OSError, rerr.RemoteError) as exc:
                    log.info("pinned %r is not all on this device yet: %s", self.path_of(inode), exc)
                    self._pending.add(inode)
                    failed = True
                except Exception:  # best effort: a bug here must not take the mount down
                    log.exception("keeping pinned %r on this device failed", self.path_of(inode))
                    self._pending.add(inode)
                    failed = True
            if failed:
                await trio.sleep(RETRY_S)
                self._wakeup.set()

    def _forget_stale(self) -> None:
        """Drop pins of inodes that are gone, and chunk pins of files no pin covers any more."""
        for inode in list(self._roots):
            if not _in_tree(self.tree.get(inode)):
                self._drop_root(inode)
        for tag in self.chunks.pin_owners("pin:"):
            inode = int(tag.split(":", 1)[1])
            if not self.covers(inode):
                self.chunks.unpin_owner(tag)

    async def _keep(self, e: Entry) -> None:
        """Bring what `e` covers up to date (the background task's step)."""
        await self._keep_files([f async for f in self._files(e, list_missing=True)], None, guard=True)

    async def _keep_files(self, files: list[Entry], report: Report | None, guard: bool) -> None:
        """Fetch what these files need, PARALLEL_FILES files at a time (a folder of many small files is a
        request or two per file: one after the other, the round trips would add up)."""
        total = sum(f.size for f in files)
        done = [0, 0]  # bytes, files
        limit = trio.CapacityLimiter(PARALLEL_FILES)

        async def one(f: Entry) -> None:
            async with limit:
                await self._keep_file(f, guard)
            done[0] += f.size
            done[1] += 1
            if report is not None:
                await report({"done_bytes": done[0], "total_bytes": total, "done_files": done[1],
                              "total_files": len(files)})

        async with worker_nursery() as nursery:  # one file's failure (server away) cancels the rest
            for f in files:
                nursery.start_soon(one, f)

    async def _keep_file(self, e: Entry, guard: bool) -> None:
        """Pin and fetch the chunks of the file's current version. With `guard`, a file that would push
        the pinned chunks past the cache limit is left to on-demand reads (summing the pinned chunks
        reads the whole cache index, so the pin command, which checked the room first, skips it)."""
        if e.local_data:
            await self._keep_holes(e)  # the local copy is the content, and the evictor keeps it while pinned
            return
        if e.node_id is None or e.size == 0:
            return
        chunks = await self.layout(e)
        tag = owner(e.inode)
        self.chunks.unpin_owner(tag)  # an older version's chunks
        self.chunks.pin({h for h, _ in chunks}, tag)
        absent = list({h: size for h, size in chunks if h not in self.chunks}.items())
        if guard and absent and \
                self.chunks.usage().pinned_bytes + sum(size for _, size in absent) > self.chunks.limit:
            # Grown past the cache limit since it was pinned (files added elsewhere): what does not fit
            # is left to be read on demand rather than pushing the cache past its limit.
            log.warning("pinned files no longer fit in the cache limit; %r is not kept on this device",
                        self.path_of(e.inode))
            return
        for i in range(0, len(absent), FETCH_WINDOW):
            current = self.tree.get(e.inode)
            if current is None or current.version != e.version or current.local_data:
                return  # changed meanwhile: `changed` has queued it again
            await self.fetch(e.node_id, e.version, absent[i:i + FETCH_WINDOW])

    async def _keep_holes(self, e: Entry) -> None:
        """A sparse local copy: the chunks it has not fetched yet are pinned and fetched into the chunk
        cache, where filling its holes finds them (with the server away, too)."""
        sf = self.tree.holes.get(e.inode)
        if not sf:
            return
        tag = owner(e.inode)
        self.chunks.unpin_owner(tag)
        self.chunks.pin({h.hash for h in sf.holes()}, tag)
        sources: dict[tuple[int, int], dict[str, int]] = {}
        for h in sf.holes():
            if h.hash not in self.chunks:
                sources.setdefault((h.node_id, h.version), {})[h.hash] = h.size
        for (node_id, version), absent in sources.items():
            items = list(absent.items())
            for i in range(0, len(items), FETCH_WINDOW):
                await self.fetch(node_id, version, items[i:i + FETCH_WINDOW])

    def _missing_bytes(self, f: Entry) -> int:
        if f.local_data:
            sf = self.tree.holes.get(f.inode)
            return sum(h.size for h in sf.holes() if h.hash not in self.chunks) if sf else 0
        if f.size == 0:
            return 0
        stored = self.tree.manifest(f.inode)
        if stored is None or stored[0] != f.version:
            return f.size
        return sum(size for h, size in stored[1] if h not in self.chunks)

    async def _files(self, e: Entry, list_missing: bool) -> AsyncIterator[Entry]:
        """The files `e` covers: itself, or every file below the folder (listed from the server first
        when `list_missing`)."""
        if e.kind == "file":
            yield e
            return
        if e.kind != "dir":
            return
        folders = [e]
        while folders:
            folder = folders.pop()
            if list_missing:
                await self.ensure_listed(folder)
            after = 0
            while page := self.tree.children(folder.inode, after_inode=after, limit=_PAGE):
                for child in page:
                    if child.kind == "dir":
                        folders.append(child)
                    elif child.kind == "file":
                        yield child
                after = page[-1].inode
                # A pinned tree of 100,000 files takes a second or more to walk: let FUSE requests in.
                await trio.lowlevel.checkpoint()


def _in_tree(e: Entry | None) -> bool:
    """Not deleted (an unlinked file still open has no parent; the root never has one)."""
    return e is not None and (e.parent_inode is not None or e.inode == ROOT_INODE)

