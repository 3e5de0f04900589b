"""Remote to local: follows the server's changes feed and brings the local tree and the kernel up to date.

The server leaves this device's own changes out of the feed (the local tree already has them; a server
that does not know to still sends them, and they are skipped here). A change never overrides local work that is not yet on the server: a dirty file or a node named
by a pending op keeps its local state, and the syncer resolves the difference when it commits
(conflicted copy, or re-creating a file that was deleted elsewhere while edited here).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import trio

from cache.tree import SHARED_INODE, Entry, Tree
from remote import errors as rerr

log = logging.getLogger("drivefs.listener")

CURSOR_KEY = "feed_cursor"
LONG_POLL_S = 25.0
POLL_FALLBACK_S = 2.0


class FeedListener:
    """Long-polls the changes feed (falling back to plain polling) and applies each change."""

    def __init__(self, vfs: Any, tree: Tree, remote: Any, device: str) -> None:
        self.vfs = vfs
        self.tree = tree
        self.remote = remote
        self.device = device
        self.online = True
        self.last_change: float | None = None
        self.applied = 0
        self._long_poll = True
        # Nodes whose change was held back because local work on them was pending; looked up again once
        # that work is on the server, so the change is not lost (the cursor has moved past it).
        self.deferred: set[int] = set()

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failures = 0
        while True:
            try:
                await self.retry_deferred()
                cursor = await self._cursor()
                # After a failure, one quick poll first: with its own changes left out of the feed, a long
                # poll could hold for LONG_POLL_S before the mount knows the server is back.
                wait = LONG_POLL_S if self._long_poll and not failures else 0.0
                if self.deferred:
                    wait = min(wait, 1.0)
                page = await self.remote.changes(cursor, limit=500, wait=wait, exclude_device=self.device)
                failures = 0
                self.online = True
            except (rerr.TransportFailure, rerr.ServerError) as e:
                # Unreachable, or answering 5xx (restarting, behind a proxy, its database away): wait and
                # retry. Letting a ServerError escape would end the nursery and with it the whole mount.
                failures += 1
                self.online = False
                log.warning("changes feed unreachable (%s); retrying", e)
                await trio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))
                continue
            except rerr.ApiError as e:
                if self._long_poll:
                    log.warning("long-poll refused (%s); falling back to polling", e)
                    self._long_poll = False
                    continue
                raise
            self.apply_page(page)
            if not self._long_poll and not page.changes:
                await trio.sleep(POLL_FALLBACK_S)

    async def retry_deferred(self) -> None:
        """Apply the server's current state of held-back nodes that are no longer busy here."""
        for node_id in list(self.deferred):
            local = self.tree.by_node(node_id)
            if local is not None and self._busy(local):
                continue
            self.deferred.discard(node_id)
            try:
                node = await self.remote.get_node(node_id)
            except rerr.NotFound:
                if local is not None:
                    self._remove(local)
                continue
            except rerr.RemoteError:
                self.deferred.add(node_id)
                raise
            with self.tree.index.transaction():
                self._place(node, self.tree.by_node(node_id))

    async def _cursor(self) -> str:
        cursor = self.tree.index.get_kv(CURSOR_KEY)
        if cursor is None:
            # A new cache starts at the present: folders are listed from the server when first used.
            cursor = await self.remote.latest_cursor()
            self.tree.index.set_kv(CURSOR_KEY, cursor)
        return cursor

    def apply_page(self, page: Any) -> None:
        with self.tree.index.transaction():
            for change in page.changes:
                if change.device != self.device or change.device is None:
                    try:
                        self.apply(change)
                    except Exception:
                        log.exception("could not apply change %d (%s of %r)", change.seq, change.kind,
                                      change.node.name)
            self.tree.index.set_kv(CURSOR_KEY, page.cursor)
        if page.changes:
            self.last_change = time.time()
            self.applied += len(page.changes)

    # ---- one change ----------------------------------------------------------------------------

    def apply(self, change: Any) -> None:
        node = change.node
        local = self.tree.by_node(node.id)
        if change.kind in ("share", "unshare"):
            self._shares_changed(change, local)
        elif change.kind == "delete":
            if local is not None:
                self._remove(local)
        else:
            self._place(node, local)

    def _busy(self, e: Entry) -> bool:
        """Local work the server has not seen yet, or a handle open for writing (its next write goes to the
        local copy it opened, which must not be swapped under it): it wins until the syncer settles it."""
        return e.dirty or self.vfs.live.writers[e.inode] > 0 or self.tree.named_by_ops(e.inode)

    def _remove(self, e: Entry) -> None:
        if self._busy(e):
            log.info("%r was deleted on another device but changed here; keeping it", e.name)
            if e.node_id is not None:
                self.deferred.add(e.node_id)
            return
        parent, name = e.parent_inode, e.name
        self.vfs.forget_local(e)
        if parent is not None:
            self.vfs.invalidate(None, parent, name)

    def _shares_changed(self, change: Any, local: Entry | None) -> None:
        self.tree.update(SHARED_INODE, listed=False)
        if change.kind == "unshare" and local is not None and local.parent_inode == SHARED_INODE:
            self._remove(local)
        self.vfs.invalidate(SHARED_INODE)

    def _place(self, node: Any, local: Entry | None) -> None:
        """A node was created, changed or moved: put it where the server says, if we track that folder."""
        parent = self.tree.by_node(node.parent_id) if node.parent_id is not None else None
        if local is not None and local.parent_inode == SHARED_INODE:
            parent = self.tree.get(SHARED_INODE)  # a shared root stays where the recipient sees it
        if parent is None or not parent.listed:
            if local is not None:
                self._remove(local)  # moved to a folder this device does not follow (yet)
            return
        if local is not None and self._busy(local):
            self.deferred.add(node.id)
            return
        name = local.name if parent.inode == SHARED_INODE and local is not None else node.name
        clash = self.tree.child(parent.inode, name)
        if clash is not None and (local is None or clash.inode != local.inode):
            if self._busy(clash):
                log.info("%r exists here and on the server; the local one will become a conflicted copy", name)
                self.deferred.add(node.id)
                return
            self._remove(clash)
        old = (local.parent_inode, local.name) if local is not None else None
        content_changed = local is not None and (local.version != node.version or local.size != node.size)
        if local is not None and (local.parent_inode, local.name) != (parent.inode, name):
            self.tree.update(local.inode, parent_inode=parent.inode, name=name)
        entry = self.vfs.merge_remote(parent.inode, node, name=name)
        if entry is None:
            return
        if content_changed and entry.local_data and not entry.dirty:
            self.tree.update(entry.inode, local_data=False)
            self.tree.data_path(entry.inode).unlink(missing_ok=True)  # open handles keep their fd
        if old is not None and old != (parent.inode, name) and old[0] is not None:
            self.vfs.invalidate(None, old[0], old[1])
        self.vfs.invalidate(entry.inode, parent.inode, name)
