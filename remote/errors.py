"""What can go wrong talking to the server, as one exception tree with an errno on every class.

    RemoteError                      (errno EIO)
     ├── TransportFailure            the server could not be reached (network error or timeout, retries spent)
     ├── ServerError                 the server kept failing (5xx, or 429 past the retry budget)
     ├── CorruptChunk                a downloaded chunk does not match its hash (never returned as data)
     ├── FileChanged                 the local file changed while it was being uploaded      (EAGAIN)
     └── ApiError                    the server refused the request (4xx): status, code, message, details
          ├── BadRequest             400 bad_request                                         (EINVAL)
          │    ├── InvalidName       400 invalid_name                         (EINVAL, ENAMETOOLONG)
          │    └── CrossOwner        400 cross_owner   move between two owners' trees         (EXDEV)
          ├── Unauthorized           401 unauthorized  no valid token                          (EACCES)
          ├── Forbidden              403 forbidden     visible but not writable                (EACCES)
          ├── NotFound               404 not_found                                            (ENOENT)
          ├── Conflict               409 conflict                                                (EIO)
          │    ├── Exists            409 exists                                               (EEXIST)
          │    ├── NotEmpty          409 not_empty                                         (ENOTEMPTY)
          │    ├── NotADirectory     409 not_dir                                             (ENOTDIR)
          │    ├── IsADirectory      409 is_dir                                               (EISDIR)
          │    ├── VersionConflict   409 version_conflict  the file moved past the commit's base (EIO)
          │    └── MissingChunks     409 missing_chunks    `missing` lists them                  (EIO)
          ├── Expired                410 expired       upload session or signed URL too old      (EIO)
          ├── TooLarge               413 too_large                                             (EFBIG)
          └── Invalid                422 invalid       well-formed but breaks a rule          (EINVAL)

The mount maps any of these to a FUSE errno in one place: `FUSEError(exc.errno)`.
Messages never contain the token or a signed URL's query string.
"""

from __future__ import annotations

import errno as _errno
from typing import Any

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "CorruptChunk",
    "CrossOwner",
    "Exists",
    "Expired",
    "FileChanged",
    "Forbidden",
    "Invalid",
    "InvalidName",
    "IsADirectory",
    "MissingChunks",
    "NotADirectory",
    "NotEmpty",
    "NotFound",
    "RemoteError",
    "ServerError",
    "TooLarge",
    "TransportFailure",
    "Unauthorized",
    "VersionConflict",
    "error_from_response",
]


class RemoteError(Exception):
    """Base of every error of the remote part."""

    errno = _errno.EIO


class TransportFailure(RemoteError):
    """The server could not be reached: network errors or timeouts until the retry budget ran out.

    `maybe_applied` is True when a request unsafe to repeat was sent and its answer lost.
    """

    def __init__(self, message: str, *, attempts: int = 1, elapsed_s: float = 0.0,
                 maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.maybe_applied = maybe_applied


class ServerError(RemoteError):
    """The server answered with 5xx (or 429) until the retry budget ran out, or on a request unsafe to retry.

    `maybe_applied` is False only for answers that say the server did not act (429, 503).
    """

    def __init__(self, message: str, status: int, code: str = "internal", *, maybe_applied: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.maybe_applied = maybe_applied


class CorruptChunk(RemoteError):
    """A chunk fetched from the blob store does not decode to the bytes its hash names."""

    def __init__(self, message: str, hash: str) -> None:
        super().__init__(message)
        self.hash = hash


class FileChanged(RemoteError):
    """The local file being uploaded changed under the upload; upload it again."""

    errno = _errno.EAGAIN


class ApiError(RemoteError):
    """The server refused a request with a 4xx status and a JSON error body."""

    status = 400
    code = "error"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.details: dict[str, Any] = dict(details or {})

    def __str__(self) -> str:
        return f"{self.message} ({self.status} {self.code})"


class BadRequest(ApiError):
    """The request is malformed or asks for something impossible."""

    status, code, errno = 400, "bad_request", _errno.EINVAL


class InvalidName(BadRequest):
    """A name breaks the naming rules (ENAMETOOLONG when it is only too long)."""

    code = "invalid_name"

    @property
    def errno(self) -> int:  # type: ignore[override]
        return _errno.ENAMETOOLONG if "length" in self.details else _errno.EINVAL


class CrossOwner(BadRequest):
    """A move between two owners' trees: copy instead, as for EXDEV."""

    code, errno = "cross_owner", _errno.EXDEV


class Unauthorized(ApiError):
    """No valid bearer token (or a bad blob URL signature)."""

    status, code, errno = 401, "unauthorized", _errno.EACCES


class Forbidden(ApiError):
    """The caller can see the node but may not change it (e.g. a read-only share)."""

    status, code, errno = 403, "forbidden", _errno.EACCES


class NotFound(ApiError):
    """No such node, version, session or chunk, or one the caller may not see."""

    status, code, errno = 404, "not_found", _errno.ENOENT


class Conflict(ApiError):
    """The request conflicts with the current state on the server."""

    status, code = 409, "conflict"


class Exists(Conflict):
    """A node with that name already exists in the folder."""

    code, errno = "exists", _errno.EEXIST


class NotEmpty(Conflict):
    """A folder that must be empty is not."""

    code, errno = "not_empty", _errno.ENOTEMPTY


class NotADirectory(Conflict):
    """A folder was expected."""

    code, errno = "not_dir", _errno.ENOTDIR


class IsADirectory(Conflict):
    """A file or symlink was expected."""

    code, errno = "is_dir", _errno.EISDIR


class VersionConflict(Conflict):
    """The commit's base version is not the file's current version; `current_version` says which is."""

    code = "version_conflict"

    @property
    def current_version(self) -> int | None:
        return self.details.get("current_version")


class MissingChunks(Conflict):
    """A commit names chunks the server does not hold for this user; `missing` lists them."""

    code = "missing_chunks"

    @property
    def missing(self) -> list[str]:
        return list(self.details.get("missing", []))


class Expired(ApiError):
    """An upload session or a signed URL is past its expiry; ask for a new one."""

    status, code = 410, "expired"


class TooLarge(ApiError):
    """A body, chunk, file or list above the server's limits."""

    status, code, errno = 413, "too_large", _errno.EFBIG


class Invalid(ApiError):
    """Well-formed but breaks a rule (e.g. sizes that do not add up)."""

    status, code, errno = 422, "invalid", _errno.EINVAL


_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (BadRequest, InvalidName, CrossOwner, Unauthorized, Forbidden, NotFound, Conflict, Exists,
                NotEmpty, NotADirectory, IsADirectory, VersionConflict, MissingChunks, Expired, TooLarge, Invalid)
}
_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest, 401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Expired,
    413: TooLarge, 422: Invalid,
}


def error_from_response(status: int, body: Any, what: str) -> ApiError:
    """The ApiError for a 4xx answer: by the body's error code, else by status. `what` names the request."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and isinstance(err.get("code"), str):
        code = err["code"]
        message = str(err.get("message") or code)
        details = err.get("details") if isinstance(err.get("details"), dict) else {}
    else:
        code, message, details = f"http_{status}", f"{what}: HTTP {status}", {}
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, ApiError)
    return cls(message, status=status, code=code, details=details)
