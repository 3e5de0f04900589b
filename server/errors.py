"""Domain errors of the server, each with a stable code and HTTP status, turned into JSON at the edge.

    ApiError
     ├── BadRequest          400 bad_request
     │    ├── InvalidName    400 invalid_name
     │    └── CrossOwner     400 cross_owner   (move between two owners' trees: EXDEV on the client)
     ├── Unauthorized        401 unauthorized
     ├── Forbidden           403 forbidden     (the caller can see the node but may not write it)
     ├── NotFound            404 not_found     (also for ids the caller may not see: existence never leaks)
     ├── Conflict            409 conflict
     │    ├── Exists         409 exists
     │    ├── NotEmpty       409 not_empty
     │    ├── NotADirectory  409 not_dir
     │    ├── IsADirectory   409 is_dir
     │    ├── VersionConflict 409 version_conflict (commit based on a version the server moved past)
     │    └── MissingChunks  409 missing_chunks   (details.missing lists them)
     ├── Gone                410 expired       (upload session or signed URL past its expiry)
     ├── TooLarge            413 too_large
     └── Invalid             422 invalid       (a well-formed request that breaks a rule)
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base of every error the API reports; `code` is stable, `message` is for people."""

    status = 500
    code = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class BadRequest(ApiError):
    """The request is malformed or asks for something impossible."""

    status, code = 400, "bad_request"


class InvalidName(BadRequest):
    """A node name breaks the naming rules."""

    code = "invalid_name"


class CrossOwner(BadRequest):
    """A move between two owners' trees; clients copy instead (EXDEV)."""

    code = "cross_owner"


class Unauthorized(ApiError):
    """No valid bearer token, or a bad signature on a blob URL."""

    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    """The caller can see the node but may not change it."""

    status, code = 403, "forbidden"


class NotFound(ApiError):
    """No such node, or one the caller may not see."""

    status, code = 404, "not_found"


class Conflict(ApiError):
    """The request conflicts with the current state."""

    status, code = 409, "conflict"


class Exists(Conflict):
    """A node with that name already exists in the folder."""

    code = "exists"


class NotEmpty(Conflict):
    """A folder that must be empty is not."""

    code = "not_empty"


class NotADirectory(Conflict):
    """A folder was expected."""

    code = "not_dir"


class IsADirectory(Conflict):
    """A file or symlink was expected."""

    code = "is_dir"


class VersionConflict(Conflict):
    """The commit's base version is not the file's current version."""

    code = "version_conflict"


class MissingChunks(Conflict):
    """A commit names chunks the server does not hold for this user."""

    code = "missing_chunks"


class Gone(ApiError):
    """Expired upload session or signed URL."""

    status, code = 410, "expired"


class TooLarge(ApiError):
    """A body, chunk or list above the server's limits."""

    status, code = 413, "too_large"


class Invalid(ApiError):
    """Well-formed but breaks a rule (e.g. a manifest whose sizes do not add up)."""

    status, code = 422, "invalid"
