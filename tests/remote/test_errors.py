"""Every server error code maps to its own exception class with the errno the mount will return."""

from __future__ import annotations

import errno

import pytest

from remote import errors

CASES = [
    (400, "bad_request", errors.BadRequest, errno.EINVAL),
    (400, "invalid_name", errors.InvalidName, errno.EINVAL),
    (400, "cross_owner", errors.CrossOwner, errno.EXDEV),
    (401, "unauthorized", errors.Unauthorized, errno.EACCES),
    (403, "forbidden", errors.Forbidden, errno.EACCES),
    (404, "not_found", errors.NotFound, errno.ENOENT),
    (409, "conflict", errors.Conflict, errno.EIO),
    (409, "exists", errors.Exists, errno.EEXIST),
    (409, "not_empty", errors.NotEmpty, errno.ENOTEMPTY),
    (409, "not_dir", errors.NotADirectory, errno.ENOTDIR),
    (409, "is_dir", errors.IsADirectory, errno.EISDIR),
    (409, "version_conflict", errors.VersionConflict, errno.EIO),
    (409, "missing_chunks", errors.MissingChunks, errno.EIO),
    (410, "expired", errors.Expired, errno.EIO),
    (413, "too_large", errors.TooLarge, errno.EFBIG),
    (422, "invalid", errors.Invalid, errno.EINVAL),
]


@pytest.mark.parametrize(("status", "code", "cls", "err"), CASES)
def test_code_maps_to_class_and_errno(status, code, cls, err):
    body = {"error": {"code": code, "message": "because", "details": {"x": 1}}}
    exc = errors.error_from_response(status, body, "GET /api/v1/x")
    assert type(exc) is cls
    assert isinstance(exc, errors.ApiError) and isinstance(exc, errors.RemoteError)
    assert (exc.status, exc.code, exc.message, exc.details) == (status, code, "because", {"x": 1})
    assert exc.errno == err
    assert str(exc) == f"because ({status} {code})"


def test_details_exposed():
    missing = errors.error_from_response(409, {"error": {"code": "missing_chunks", "message": "m",
                                                         "details": {"missing": ["a" * 64]}}}, "x")
    assert missing.missing == ["a" * 64]
    conflict = errors.error_from_response(409, {"error": {"code": "version_conflict", "message": "m",
                                                          "details": {"current_version": 3}}}, "x")
    assert conflict.current_version == 3
    long_name = errors.error_from_response(400, {"error": {"code": "invalid_name", "message": "m",
                                                           "details": {"length": 300}}}, "x")
    assert long_name.errno == errno.ENAMETOOLONG


def test_unknown_code_falls_back_to_status_and_non_json_body():
    exc = errors.error_from_response(404, {"error": {"code": "gone_fishing", "message": "m"}}, "x")
    assert type(exc) is errors.NotFound and exc.code == "gone_fishing"
    exc = errors.error_from_response(418, "<html>teapot</html>", "GET /api/v1/tea")
    assert type(exc) is errors.ApiError and exc.status == 418 and exc.errno == errno.EIO
    assert "GET /api/v1/tea" in exc.message


def test_local_errors_have_errnos():
    assert errors.TransportFailure("x").errno == errno.EIO
    assert errors.ServerError("x", status=500).errno == errno.EIO
    assert errors.CorruptChunk("x", "h").errno == errno.EIO
    assert errors.FileChanged("x").errno == errno.EAGAIN


def test_all_is_complete():
    public = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, Exception)
              and v.__module__ == errors.__name__}
    assert public <= set(errors.__all__)


def test_package_exports():
    import remote

    assert all(getattr(remote, name) for name in remote.__all__)
