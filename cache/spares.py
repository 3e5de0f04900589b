"""Empty local data files made ahead of need, so a create in the mount does not wait for the disk to make one."""

from __future__ import annotations

import logging
import os
import secrets
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from itertools import count
from pathlib import Path

log = logging.getLogger("drivefs.spares")

PREFIX = ".spare-"
KEEP = 256
RECYCLED_MAX = 16 * KEEP  # empty files: an inode each, no blocks


class SpareFiles:
    """A pool of empty files in the data folder, each handed out under its new name by one atomic rename.

    Making a file is the costliest step of a create in the mount: on ext4 without a journal the inode
    allocator reads past every recently deleted inode, which after a burst of deletes costs more than all
    of drivefs' own work for the create. `fill` pays that in a worker thread ahead of need; `take` runs on
    the FUSE thread. `recycle` keeps the local copy of a deleted file as a spare instead of deleting it,
    so churn (delete, then create) neither leaves recently deleted inodes nor makes new ones. Nothing
    ever writes to a spare under its spare name, so a crash leaves them empty and the next start adopts
    them. `take` and `fill` may run at the same time (the deque is the only state they share, and its
    appends and pops are atomic).
    """

    def __init__(self, folder: Path, keep: int = KEEP, on_low: Callable[[], None] | None = None) -> None:
        self.folder = folder
        self.keep = keep
        self.on_low = on_low
        self._names: deque[str] = deque()
        self._serial = count()
        self._run = secrets.token_hex(4)  # names from different runs never collide

    def __len__(self) -> int:
        return len(self._names)

    def adopt(self) -> None:
        """Take up the spares an earlier run left; one somehow not empty is removed, not reused."""
        for entry in os.scandir(self.folder):
            if entry.name.startswith(PREFIX):
                if entry.stat().st_size == 0:
                    self._names.append(entry.name)
                else:
                    log.warning("removing spare data file %s: it is not empty", entry.name)
                    os.unlink(entry.path)

    def take(self, dest: Path) -> int | None:
        """A descriptor, open for reading and writing, of a new empty file at `dest` (replacing any file
        there), with the current time as its mtime; None when no spare is ready."""
        fd = None
        while self._names and fd is None:
            src = os.path.join(self.folder, self._names.popleft())
            try:
                fd = os.open(src, os.O_RDWR)
            except FileNotFoundError:
                continue  # removed behind our back: try the next
            try:
                os.rename(src, dest)
                os.utime(fd)  # made ahead of time: it is new now
            except BaseException:
                os.close(fd)
                raise
        if self.on_low is not None and len(self._names) <= self.keep // 2:
            self.on_low()
        return fd

    def _new_name(self) -> str:
        return f"{PREFIX}{self._run}-{next(self._serial)}"

    def recycle(self, path: Path) -> bool:
        """Empty the data file at `path` and keep it as a spare; False (the file left as it is) when the
        pool is full. Renamed before it is emptied: a crash in between leaves a spare with bytes in it,
        which `adopt` removes, never a data file cut short under its own name."""
        if len(self._names) >= RECYCLED_MAX:
            return False
        name = self._new_name()
        spare = os.path.join(self.folder, name)
        try:
            os.rename(path, spare)
        except FileNotFoundError:
            return True  # nothing to delete either
        try:
            # Emptied through a descriptor that is then closed: ext4 marks a file cut to zero to have its
            # blocks written out at its next close (for programs that save by truncating), and this close
            # uses that mark up while there is nothing to write; the program's close would pay for it.
            os.close(os.open(spare, os.O_RDWR | os.O_TRUNC))
        except OSError as e:
            log.warning("cannot empty %s for reuse (%s); deleting it", name, e)
            with suppress(OSError):  # else the next start's adopt removes it: it is not empty
                os.unlink(spare)
            return True
        self._names.append(name)
        return True

    def fill(self) -> int:
        """Make spares until `keep` are ready, and return how many were made. Blocking: run it in a
        worker thread. An OSError (a full disk) is raised with the spares made so far kept."""
        made = 0
        while len(self._names) < self.keep:
            name = self._new_name()
            os.close(os.open(os.path.join(self.folder, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            self._names.append(name)
            made += 1
        return made
