"""The pyfuse3 Operations: a thin edge that maps syscalls to Vfs calls and failures to errno."""

from __future__ import annotations

import errno
import functools
import logging
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import apsw
import pyfuse3
import trio

from remote import errors as rerr

from .errors import FsError
from .vfs import Attr, Vfs

log = logging.getLogger("drivefs.fs")

T = TypeVar("T")
# Short timeouts: other devices change the tree too; the changes feed invalidates explicitly.
ENTRY_TIMEOUT = 1.0
ATTR_TIMEOUT = 1.0
# Folders are renamed rarely and every remote change to one is invalidated by the feed, so the kernel may
# keep a folder's name for longer: a stat of a/b/c then re-validates only the file, not each folder.
FOLDER_ENTRY_TIMEOUT = 10.0
BLOCK_SIZE = 1 << 20
_KIND_BITS = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "symlink": stat.S_IFLNK}


def _errno_edge(func: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn domain errors into FUSEError, logging the cause once (unexpected ones as EIO)."""

    @functools.wraps(func)
    async def wrapper(self: DriveOperations, *args: Any, **kwargs: Any) -> T:
        self.vfs.last_request = trio.current_time()
        try:
            return await func(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as e:
            if e.message and e.errno not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY):
                log.info("%s: %s", func.__name__, e.message)
            raise pyfuse3.FUSEError(e.errno) from None
        except rerr.RemoteError as e:
            log.warning("%s: %s", func.__name__, e)
            raise pyfuse3.FUSEError(e.errno) from None
        except OSError as e:
            log.warning("%s: local I/O failed: %s", func.__name__, e)
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except apsw.FullError:
            # The cache's disk is full and the index cannot grow (its transaction was rolled back):
            # that is ENOSPC to the program, as on any full disk, not an I/O error.
            log.warning("%s: the cache disk is full", func.__name__)
            raise pyfuse3.FUSEError(errno.ENOSPC) from None
        except Exception:
            log.exception("%s failed unexpectedly", func.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


class DriveOperations(pyfuse3.Operations):
    """Every handler: unpack the request, call the Vfs, pack the reply."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: Vfs) -> None:
        super().__init__()
        self.vfs = vfs

    def attributes(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = a.entry
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = e.inode
        mode = e.mode & 0o7777
        if not e.writable:
            mode &= ~0o222
        attr.st_mode = _KIND_BITS[e.kind] | mode
        attr.st_nlink = 2 if e.kind == "dir" else 1
        attr.st_uid = self.vfs.uid
        attr.st_gid = self.vfs.gid
        attr.st_size = a.size
        attr.st_blksize = BLOCK_SIZE
        attr.st_blocks = (a.size + 511) // 512
        attr.st_atime_ns = a.mtime_ns
        attr.st_mtime_ns = a.mtime_ns
        attr.st_ctime_ns = max(e.ctime_ns, a.mtime_ns)
        attr.generation = 0
        attr.entry_timeout = FOLDER_ENTRY_TIMEOUT if e.kind == "dir" else ENTRY_TIMEOUT
        attr.attr_timeout = ATTR_TIMEOUT
        return attr

    def _entry_attrs(self, entry) -> pyfuse3.EntryAttributes:
        return self.attributes(self.vfs.attr(entry))

    @_errno_edge
    async def lookup(self, parent_inode, name, ctx=None):
        return self._entry_attrs(await self.vfs.lookup(parent_inode, name))

    async def forget(self, inode_list):
        for inode, n in inode_list:
            try:
                self.vfs.forget(inode, n)
            except Exception:  # forget must not fail
                log.exception("forget(%d) failed", inode)

    @_errno_edge
    async def getattr(self, inode, ctx=None):
        return self.attributes(self.vfs.getattr(inode))

    @_errno_edge
    async def setattr(self, inode, attr, fields, fh, ctx):
        mtime = None
        if fields.update_mtime:
            mtime = attr.st_mtime_ns
        a = await self.vfs.setattr(inode, mode=attr.st_mode if fields.update_mode else None,
                                   size=attr.st_size if fields.update_size else None, mtime_ns=mtime, fh=fh)
        return self.attributes(a)

    @_errno_edge
    async def readlink(self, inode, ctx):
        return self.vfs.readlink(inode)

    @_errno_edge
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise FsError(errno.EPERM, "device files, fifos and sockets cannot be stored in the drive")

    @_errno_edge
    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise FsError(errno.EPERM, "hard links are not supported")

    @_errno_edge
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._entry_attrs(await self.vfs.mkdir(parent_inode, name, mode))

    @_errno_edge
    async def unlink(self, parent_inode, name, ctx):
        await self.vfs.unlink(parent_inode, name)

    @_errno_edge
    async def rmdir(self, parent_inode, name, ctx):
        await self.vfs.rmdir(parent_inode, name)

    @_errno_edge
    async def symlink(self, parent_inode, name, target, ctx):
        return self._entry_attrs(await self.vfs.symlink(parent_inode, name, target))

    @_errno_edge
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self.vfs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_errno_edge
    async def open(self, inode, flags, ctx):
        h = await self.vfs.open(inode, flags)
        return pyfuse3.FileInfo(fh=h.fh, keep_cache=self.vfs.keep_cache(inode))

    @_errno_edge
    async def create(self, parent_inode, name, mode, flags, ctx):
        h, entry = await self.vfs.create(parent_inode, name, mode, flags)
        return pyfuse3.FileInfo(fh=h.fh), self._entry_attrs(entry)

    @_errno_edge
    async def read(self, fh, off, size):
        return await self.vfs.read(fh, off, size)

    @_errno_edge
    async def write(self, fh, off, buf):
        return await self.vfs.write(fh, off, buf)

    async def flush(self, fh):
        # ENOSYS once and the kernel stops sending FLUSH on every close(): nothing needs it. Each WRITE
        # has put its bytes in the local copy before it returns, the first one marked the file dirty in
        # the index, and the size and mtime are taken from the local copy (at RELEASE, or at recovery
        # after a crash). So a close() that returns has nothing more to wait for.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_errno_edge
    async def fsync(self, fh, datasync):
        await self.vfs.fsync(fh, datasync)

    @_errno_edge
    async def release(self, fh):
        await self.vfs.release(fh)

    @_errno_edge
    async def opendir(self, inode, ctx):
        self.vfs._dir(inode)
        return inode

    @_errno_edge
    async def readdir(self, fh, start_id, token):
        for e in await self.vfs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, e.name.encode("utf-8", "surrogateescape"),
                                         self._entry_attrs(e), e.inode):
                return
            self.vfs.live.lookups[e.inode] += 1

    async def releasedir(self, fh):
        return None

    @_errno_edge
    async def fsyncdir(self, fh, datasync):
        self.vfs.tree.index.sync()

    @_errno_edge
    async def statfs(self, ctx):
        st = self.vfs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = st.f_bsize
        out.f_frsize = st.f_frsize
        out.f_blocks = st.f_blocks
        out.f_bfree = st.f_bfree
        out.f_bavail = st.f_bavail
        out.f_files = 1 << 40
        out.f_ffree = 1 << 40
        out.f_favail = 1 << 40
        out.f_namemax = 255
        return out
