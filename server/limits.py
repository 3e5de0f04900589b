"""Server-wide limits and naming rules, in one place so the API, the store and the docs agree."""

from __future__ import annotations

from .errors import InvalidName

MAX_NAME_BYTES = 255
MAX_SYMLINK_TARGET_BYTES = 4096
MIN_CHUNK_BYTES = 1
MAX_CHUNK_BYTES = 4 * 2**20
# zstd can expand incompressible data slightly; clients only send zstd when it shrinks, but allow slack.
MAX_STORED_CHUNK_BYTES = MAX_CHUNK_BYTES + 64 * 2**10
MAX_FILE_BYTES = 1 * 2**40
# Plain chunks are verifiable (and so fetchable) in blocks of this size: see blobs/base.py block_hashes.
BLOCK_BYTES = 64 * 2**10
MAX_MANIFEST_CHUNKS = 1_000_000
MAX_BATCH = 10_000
# Chunks confirmed per request: the server reads each back from the blob store, so keep requests short.
MAX_CONFIRM = 64
MAX_JSON_BODY_BYTES = 96 * 2**20
# Whole small files sent inline in one request (POST /files/small): one round trip instead of a
# session, a PUT and a commit each. At most this many files, each at most this large, this much in all.
MAX_SMALL_FILES = 256
MAX_SMALL_FILE_BYTES = 256 * 2**10
MAX_SMALL_FILES_BYTES = 8 * 2**20
MAX_PAGE = 5_000
DEFAULT_PAGE = 1_000
MAX_LONGPOLL_SECONDS = 60.0
SHARED_FOLDER_NAME = "Shared with me"
MODE_MASK = 0o7777


def check_name(name: str, *, at_root: bool = False) -> str:
    """Return `name` if it is a valid node name, else raise InvalidName saying why."""
    if not name:
        raise InvalidName("a name cannot be empty")
    if "/" in name:
        raise InvalidName("a name cannot contain '/'", name=name)
    if "\x00" in name:
        raise InvalidName("a name cannot contain NUL")
    if name in (".", ".."):
        raise InvalidName(f"'{name}' is not a valid name")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName("a name must be valid UTF-8") from None
    if len(encoded) > MAX_NAME_BYTES:
        raise InvalidName(f"a name is at most {MAX_NAME_BYTES} UTF-8 bytes", length=len(encoded))
    if at_root and name == SHARED_FOLDER_NAME:
        raise InvalidName(f"'{SHARED_FOLDER_NAME}' is reserved at the top of a drive")
    return name
