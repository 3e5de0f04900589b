"""The mount process: opens the cache, connects to the server, mounts, and runs the background tasks.

Started by `drive mount` as `python -m mountfs.daemon CONFIG_JSON`; reports readiness on the file
descriptor named by DRIVE_READY_FD (`ok` or `error: ...`), then serves FUSE, the write-back syncer,
cache eviction and the control socket until unmounted.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sys
from collections import namedtuple
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pyfuse3
import trio

from cache.chunkcache import ChunkCache
from cache.index import Index
from cache.spares import SpareFiles
from cache.tree import ROOT_INODE, Tree
from remote import errors as rerr
from remote.client import ApiClient, RetryPolicy
from remote.transfer import Transfer

from .config import MountConfig
from .control import ControlServer
from .evictor import Evictor
from .fs import DriveOperations
from .listener import FeedListener
from .pinner import Pinner
from .reader import Reader
from .sparse import Filler
from .syncer import Syncer
from .vfs import Vfs

log = logging.getLogger("drivefs.daemon")

_Chunk = namedtuple("_Chunk", "hash size")
# Interactive calls (a read, a listing) give up quickly when the server is away; the syncer retries forever.
INTERACTIVE_RETRY = RetryPolicy(max_total_s=8.0)
EVICT_EVERY_S = 30.0
SPARES_RETRY_S = 30.0
# A batch of creates and setattrs (cache/index.py: Index.batched) is committed at most this long after
# it opened, unless another write to the index commits it sooner.
BATCH_COMMIT_S = 0.2


class StartupError(Exception):
    """The mount cannot start; the message is the one line `drive mount` prints."""


class Mount:
    """One mounted drive: owns the index, caches, clients and background tasks, and answers the control socket."""

    def __init__(self, cfg: MountConfig) -> None:
        self.cfg = cfg
        cache_dir = Path(cfg.cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.index = Index(cache_dir / "index.db")
        self.chunks = ChunkCache(cache_dir, self.index, limit=cfg.cache_limit)
        self.tree = Tree(self.index, cache_dir / "files")
        creds = cfg.load_credentials()
        self.client = ApiClient(cfg.server, creds.token, device=cfg.device, retry=INTERACTIVE_RETRY)
        self.transfer = Transfer(self.client)
        self.reader = Reader(self.tree, self.chunks, self.client, self._fetch, fetch_ranges=self._fetch_ranges)
        self._spares_low = trio.Event()
        self.spares = SpareFiles(self.tree.files_dir, on_low=self._want_spares)
        self.filler = Filler(self.tree.holes, self._fetch)
        self.vfs = Vfs(self.tree, self.reader, self.client, self._wake, cfg.user, spares=self.spares,
                       filler=self.filler)
        self.syncer = Syncer(self.vfs, self.tree, self.client, self.transfer, cfg.device)
        # The feed has its own client: a long-poll must not wait behind the interactive retry budget.
        self.feed_client = ApiClient(cfg.server, creds.token, device=cfg.device,
                                     retry=RetryPolicy(max_total_s=5.0), timeout=45.0, max_connections=2)
        self.listener = FeedListener(self.vfs, self.tree, self.feed_client, cfg.device)
        self.ops = DriveOperations(self.vfs)
        self.pinner = Pinner(self.tree, self.chunks, self.vfs.ensure_listed, self._chunk_list, self._fetch)
        self.evictor = Evictor(self.tree, self.chunks, cfg.cache_limit, self.vfs.has_handles,
                               pinned=self.pinner.covers)
        self.vfs.invalidator = self._invalidate
        self._nursery: trio.Nursery | None = None
        self._mounted = False

    def _invalidate(self, inode: int | None, parent_inode: int | None, name: str | None) -> None:
        """Make the kernel forget what it cached of a changed inode and name (no-op before mounting); a
        pinned one is also brought up to date on this device."""
        if inode is not None:
            self.pinner.changed(inode)
        if not self._mounted:
            return
        if parent_inode is not None and name is not None:
            pyfuse3.invalidate_entry_async(parent_inode, name.encode("utf-8", "surrogateescape"),
                                           ignore_enoent=True)
        if inode is not None and self._nursery is not None:
            self._nursery.start_soon(trio.to_thread.run_sync, _invalidate_inode, inode)

    def _wake(self) -> None:
        self.syncer.wake()

    def _want_spares(self) -> None:
        self._spares_low.set()

    async def _fetch(self, node_id: int, version: int, chunks: Sequence[tuple[str, int]],
                     on_chunk: Callable[[str, bytes | bytearray], Awaitable[None] | None] | None = None,
                     nearby: Sequence[str] = (), store: bool = True) -> None:
        # keep=False: the reader is handed each chunk by on_chunk, so none are collected here.
        await self.transfer.download_chunks(node_id, version, [_Chunk(h, n) for h, n in chunks],
                                            chunk_cache=self.chunks, on_chunk=on_chunk, keep=False, nearby=nearby,
                                            store=store)

    async def _chunk_list(self, e) -> list[tuple[str, int]]:
        layout = await self.reader.layout(e)
        return list(zip(layout.hashes, layout.sizes))

    async def _fetch_ranges(self, node_id: int, version: int, h: str, size: int,
                            ranges: Sequence[tuple[int, int]], nearby: Sequence[str]) -> None:
        await self.transfer.download_ranges(node_id, version, h, size, ranges, chunk_cache=self.chunks,
                                            nearby=nearby)

    async def connect(self) -> None:
        """Learn the drive's root; with the server away, start from the cached tree if there is one."""
        root = self.tree.get(ROOT_INODE)
        try:
            me = await self.client.me()
        except rerr.Unauthorized:
            raise StartupError(f"the server refused the saved token for {self.cfg.user}: run drive login") from None
        except rerr.TransportFailure:
            if root is None or root.node_id is None:
                raise StartupError(f"cannot reach {self.cfg.server} and there is no cached copy of this drive "
                                   "to work from") from None
            log.warning("cannot reach %s; starting offline from the cached tree", self.cfg.server)
            self.syncer.online = False
            return
        if root is not None and root.node_id not in (None, me.root_id):
            raise StartupError(f"the cache in {self.cfg.cache_dir} belongs to another drive; use another --cache-dir")
        self.tree.ensure_roots(me.root_id)

    def recover(self) -> None:
        """After a crash: trust the local data files for sizes, forget half-written temp files."""
        self.chunks.reconcile()
        self._drop_stray_data_files()
        self.spares.adopt()
        for e in self.tree.dirty_files():
            path = self.tree.data_path(e.inode)
            if e.local_data and path.exists():
                st = path.stat()
                self.tree.update(e.inode, size=st.st_size, mtime_ns=st.st_mtime_ns)
                try:
                    self.tree.holes.cut(e.inode, st.st_size)  # a truncate killed before it dropped them
                except ValueError as exc:  # cannot happen: a truncate fills the hole it ends in first
                    log.error("local copy of %r is shorter than its holes say: %s", e.name, exc)
            elif e.local_data:
                log.error("local data of %r (inode %d) is missing; it cannot be uploaded", e.name, e.inode)
        # Listed folders stay listed: the feed, resumed from the saved cursor, brings what changed
        # elsewhere meanwhile, and the cached tree stays browsable when the server is away.

    def _drop_stray_data_files(self) -> None:
        """Remove half-written `.part` copies, and local copies no committed row claims: a create rolled
        back by the kill, or the old name of a conflicted copy's bytes (they are linked under the copy's
        number before its row commits). Left alone, a later create or truncate of that number would
        write through the stray name."""
        for path in Path(self.tree.files_dir).iterdir():
            if path.suffix == ".part":
                path.unlink(missing_ok=True)
            elif path.name.isdigit():
                e = self.tree.get(int(path.name))
                if e is None or not e.local_data:
                    log.info("removing %s: no file in the index keeps its local data there", path.name)
                    path.unlink(missing_ok=True)

    async def spare_loop(self) -> None:
        """Keep empty data files ready for creates (cache/spares.py), made in a worker thread."""
        failing = False
        while True:
            try:
                await trio.to_thread.run_sync(self.spares.fill)
                failing = False
            except OSError as e:
                if not failing:  # e.g. the cache disk is full: creates make their own files meanwhile
                    log.warning("cannot make spare data files in %s: %s", self.tree.files_dir, e)
                failing = True
                await trio.sleep(SPARES_RETRY_S)
                continue
            self._spares_low = trio.Event()
            await self._spares_low.wait()

    async def batch_loop(self) -> None:
        """Commit each batch of creates within about BATCH_COMMIT_S: the redo log keeps them safe
        meanwhile, but each holds the log's records and has to be replayed after a kill."""
        failing = False
        while True:
            await trio.sleep(BATCH_COMMIT_S / 2)
            try:
                self.index.commit_batch(older_than=BATCH_COMMIT_S)
                failing = False
            except Exception:  # the redo log still holds the batch; the next try may work (disk full)
                if not failing:
                    log.exception("committing a batch of creates failed; retrying")
                failing = True

    async def evict_loop(self) -> None:
        while True:
            await trio.sleep(EVICT_EVERY_S)
            try:
                self.evictor.run_once()
            except Exception:
                log.exception("cache eviction failed")

    # ---- control socket handler ----

    async def status(self) -> dict:
        s = self.syncer.statistics()
        usage = self.chunks.usage()
        local = self.evictor.local_bytes()
        return {"mountpoint": self.cfg.mountpoint, "server": self.cfg.server, "user": self.cfg.user,
                "device": self.cfg.device, "online": s.online and self.listener.online, "pending_ops": s.pending_ops,
                "pending_files": s.pending_files, "pending_items": s.pending_items, "pending_bytes": s.pending_bytes,
                "cache_bytes": usage.bytes + local, "cache_limit": self.cfg.cache_limit,
                # Bytes received from the blob store since the mount started (whole chunks and ranges).
                "fetched_bytes": self.transfer.statistics().bytes_received,
                # Bytes read, cut and hashed to upload since the mount started (an edit's commit cuts
                # only around what changed).
                "cut_bytes": self.transfer.statistics().bytes_cut,
                # Bytes of sparse local copies filled in since the mount started: a write into a big
                # file fetches only the chunks it touches, and the rest comes when something reads it.
                "filled_bytes": self.filler.filled_bytes,
                "pinned": self._pinned_totals(await self.pinner.summaries()),
                "last_sync": s.last_sync, "last_error": s.last_error,
                "uploading": {"name": s.uploading} if s.uploading else {}}

    @staticmethod
    def _pinned_totals(pins) -> dict:
        return {"paths": len(pins), "bytes": sum(p.bytes for p in pins),
                "missing_bytes": sum(p.missing_bytes for p in pins)}

    async def flush(self, report) -> dict:
        return await self.syncer.flush(report)

    async def _entry_at(self, path: str):
        """The entry behind a path relative to the mount point."""
        e = self.tree.get(ROOT_INODE)
        assert e is not None
        for part in [p for p in path.split("/") if p and p != "."]:
            await self.vfs.ensure_listed(e)
            child = self.tree.child(e.inode, part)
            if child is None:
                raise FileNotFoundError(f"no such file or folder in the drive: {path}")
            e = child
        return e

    async def resolve(self, path: str) -> dict:
        """Find the node behind a path in this mount, committing it first if it is not on the server yet."""
        for attempt in range(2):
            e = await self._entry_at(path)
            if e.node_id is not None or attempt:
                break
            await self.flush(_ignore_progress)
        if e.node_id is None:
            raise RuntimeError(f"{path} is not on the server yet: {self.syncer.last_error or 'try drive flush'}")
        return {"node_id": e.node_id, "name": e.name, "kind": e.kind, "owner": e.owner, "access": e.access}

    async def pin(self, path: str, report) -> dict:
        return (await self.pinner.pin(await self._entry_at(path), report)).as_dict()

    async def unpin(self, path: str) -> dict:
        return (await self.pinner.unpin(await self._entry_at(path))).as_dict()

    async def pins(self) -> list[dict]:
        return [p.as_dict() for p in await self.pinner.summaries()]

    async def unmount(self, flush: bool) -> None:
        if flush:
            await self.syncer.flush(_ignore_progress)
        pyfuse3.terminate()

    # ---- running ----

    async def run(self, ready: Callable[[], None]) -> None:
        await self.connect()
        self.recover()
        options = set(pyfuse3.default_options) | {"fsname=drivefs", "subtype=drivefs"}
        if self.cfg.allow_other:
            options.add("allow_other")
        try:
            pyfuse3.init(self.ops, self.cfg.mountpoint, options)
        except RuntimeError as e:
            raise StartupError(f"cannot mount {self.cfg.mountpoint}: {e}") from None
        self._mounted = True
        try:
            async with trio.open_nursery() as nursery:
                self.reader.nursery = nursery
                self._nursery = nursery
                await nursery.start(self.syncer.run)
                await nursery.start(self.listener.run)
                await nursery.start(ControlServer(self.cfg.control_socket, self).serve)
                nursery.start_soon(self.evict_loop)
                nursery.start_soon(self.spare_loop)
                nursery.start_soon(self.batch_loop)
                nursery.start_soon(self.pinner.run)
                nursery.start_soon(self._signals)
                nursery.start_soon(trio.to_thread.run_sync, _raise_readahead, self.cfg.mountpoint)
                ready()
                log.info("mounted %s for %s at %s", self.cfg.mountpoint, self.cfg.user, self.cfg.server)
                await pyfuse3.main()
                nursery.cancel_scope.cancel()
        finally:
            self.close()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                log.info("signal received: unmounting (pending changes stay queued for the next mount)")
                pyfuse3.terminate()
                return

    def close(self) -> None:
        if self._mounted:
            self._mounted = False
            try:
                pyfuse3.close(unmount=True)
            except Exception:
                log.exception("unmounting failed")
        try:
            while self.vfs.persist_pending():
                pass
        except Exception:  # only a cache of the local copies: recovery at the next start redoes it
            log.exception("recording the sizes of closed files failed")
        try:
            self.chunks.close()
        finally:
            self.index.close()


async def _ignore_progress(_: dict) -> None:
    return None


# Kernel read-ahead for the mount: FUSE starts at 128 KiB, so a sequential read reaches the daemon as
# 128 KiB requests; 1 MiB ones cost an eighth of the per-request work (about twice the throughput
# from the chunk cache here). Only root may raise it; otherwise this is skipped.
READ_AHEAD_KB = 1024


def _raise_readahead(mountpoint: str) -> None:
    """Raise the mount's read-ahead to READ_AHEAD_KB when permitted (root); best effort, never fails.

    The device is found in /proc/self/mountinfo, not by stat()ing the mount point, which would wait for
    this very daemon."""
    # Symlinks resolved in the parent only: resolving the mount point itself would ask this daemon.
    target = os.path.abspath(mountpoint)
    target = os.path.join(os.path.realpath(os.path.dirname(target)), os.path.basename(target))
    dev = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                # Field 5 is the mount point, with spaces and the like escaped as \ooo.
                if len(fields) > 4 and re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4]) == target:
                    dev = fields[2]
        if dev is None:
            return
        path = f"/sys/class/bdi/{dev}/read_ahead_kb"
        with open(path) as f:
            if int(f.read()) >= READ_AHEAD_KB:
                return
        with open(path, "w") as f:
            f.write(f"{READ_AHEAD_KB}\n")
        log.info("kernel read-ahead of %s raised to %d KiB", mountpoint, READ_AHEAD_KB)
    except (OSError, ValueError) as e:
        log.debug("kernel read-ahead of %s left as it is: %s", mountpoint, e)


def _tune_malloc() -> None:
    """Keep the resident size near what is live (glibc only; elsewhere a no-op).

    Chunks (up to 4 MiB) come and go by the dozen during transfers. With glibc's defaults the mmap
    threshold rises after the first big free, so they are carved from the heap, whose holes then keep
    the RSS tens of MB above what is in use. Allocations above a FUSE write's 1 MiB buffer go to mmap
    and are returned when freed; the heap is trimmed only past 16 MiB free at its top, so the 1 MiB
    buffer of every write is reused instead of being faulted in afresh (which cost a fifth of the
    write throughput when the threshold was below 1 MiB). Blob GETs fill their buffers in worker
    threads, and glibc gives each allocating thread an arena whose freed memory it keeps: two arenas in
    all keep a cold read of a 4 GiB file at 78 MiB instead of 90 (100 at 10 GiB), at the same speed.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1152 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 16 << 20)  # M_TRIM_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def _invalidate_inode(inode: int) -> None:
    try:
        pyfuse3.invalidate_inode(inode, attr_only=False)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOSYS):
            log.warning("could not invalidate inode %d: %s", inode, e)


def _setup_logging(cfg: MountConfig, to_stderr: bool) -> None:
    handlers: list[logging.Handler] = [logging.FileHandler(cfg.log_path)]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def _main(cfg: MountConfig, ready: Callable[[], None]) -> None:
    mount = Mount(cfg)
    try:
        await mount.run(ready)
    except BaseException:
        mount.close()
        raise
    finally:
        await mount.client.aclose()
        await mount.feed_client.aclose()


def run(cfg: MountConfig, ready: Callable[[], None], fail: Callable[[str], None]) -> int:
    """Run a mount until it is unmounted; `ready`/`fail` report the outcome of starting."""
    try:
        trio.run(_main, cfg, ready)
    except StartupError as e:
        log.error("%s", e)
        fail(str(e))
        return 1
    except Exception as e:
        log.exception("the mount failed")
        fail(f"the mount failed: {e}")
        return 1
    return 0


def run_foreground(cfg: MountConfig) -> int:
    """`drive mount --foreground`: log to the terminal too, and run until unmounted or interrupted."""
    _tune_malloc()
    _setup_logging(cfg, to_stderr=True)
    return run(cfg, lambda: print(f"mounted {cfg.mountpoint} (log: {cfg.log_path}); Ctrl-C unmounts", flush=True),
               lambda msg: print(f"drive: {msg}", file=sys.stderr))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _tune_malloc()
    cfg = MountConfig.load(argv[0])
    _setup_logging(cfg, to_stderr=False)
    fd = int(os.environ.pop("DRIVE_READY_FD", "-1"))

    def say(line: str) -> None:
        if fd >= 0:
            try:
                os.write(fd, (line + "\n").encode())
                os.close(fd)
            except OSError as e:
                if e.errno != errno.EBADF:
                    raise

    return run(cfg, lambda: say("ok"), lambda msg: say(f"error: {msg}"))


if __name__ == "__main__":
    sys.exit(main())
