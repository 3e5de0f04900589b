"""The blob store interface: presence, signed URLs, and verification of what a client uploaded."""

from __future__ import annotations

import hashlib
from typing import Protocol

import zstandard

from .. import models
from ..errors import BadRequest, Invalid
from ..limits import BLOCK_BYTES
from ..store.metadata import ChunkInfo


class BlobStore(Protocol):
    """Holds chunk objects named by the SHA-256 of their plain bytes.

    `confirms`: whether uploads land in a staging area the server must check before the chunk counts
    (an S3 store: the client POSTs /chunks/confirm after its PUT), or are verified on arrival (the local
    store, whose PUT the server handles itself). `write` only ever receives verified bytes.
    """

    confirms: bool

    def upload_url(self, chunk: models.UploadChunk, user_id: int) -> models.SignedUrl: ...
    def download_url(self, info: ChunkInfo, user_id: int) -> models.SignedUrl: ...
    def read_staged(self, user_id: int, chunk: models.UploadChunk) -> bytes | None: ...
    def discard_staged(self, user_id: int, chunk: models.UploadChunk) -> None: ...
    def write(self, hash_: str, encoding: str, data: bytes | bytearray) -> None: ...
    def exists(self, hash_: str, encoding: str) -> bool: ...


def verify_chunk(hash_: str, encoding: str, size: int, stored: bytes | bytearray) -> bytes | bytearray:
    """Check that `stored` (in `encoding`) decodes to `size` bytes whose SHA-256 is `hash_`; return those bytes."""
    if encoding == "zstd":
        try:
            plain = zstandard.ZstdDecompressor().decompress(stored, max_output_size=size)
        except zstandard.ZstdError as e:
            raise BadRequest(f"the chunk is not valid zstd data: {e}") from None
    elif encoding == "none":
        plain = stored
    else:
        raise BadRequest(f"unknown chunk encoding {encoding!r}")
    if len(plain) != size:
        raise Invalid(f"the chunk holds {len(plain)} bytes, not the {size} announced")
    actual = hashlib.sha256(plain).hexdigest()
    if actual != hash_:
        raise Invalid("the chunk's bytes do not match its hash", expected=hash_, actual=actual)
    return plain


def block_hashes(plain: bytes | bytearray) -> str:
    """The SHA-256 (hex) of each BLOCK_BYTES block of a chunk's verified plain bytes, concatenated.

    Computed by the server, never taken from a client: every user who dedupes to this chunk verifies
    ranges of it against these, so they must describe the bytes the server checked against the name."""
    view = memoryview(plain)
    return "".join(hashlib.sha256(view[i:i + BLOCK_BYTES]).hexdigest() for i in range(0, len(plain), BLOCK_BYTES))
