"""The filesystem's domain error: an errno plus the cause, raised by the core and mapped at the FUSE edge."""

from __future__ import annotations


class FsError(Exception):
    """A filesystem operation failed with `errno`; `message` says why, for the log."""

    def __init__(self, errno: int, message: str = "") -> None:
        super().__init__(message or str(errno))
        self.errno = errno
        self.message = message
