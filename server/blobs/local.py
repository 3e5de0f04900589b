"""The embedded blob store: chunk files in a local directory, served by the server itself through signed URLs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .. import models
from ..store.metadata import ChunkInfo
from .signing import UrlSigner

_SUFFIX = {"none": "", "zstd": ".zst"}


class LocalBlobStore:
    """Chunks under `root/ab/<hash>[.zst]`, written atomically and durably.

    The server itself receives each PUT (the /blobs routes), verifies it and records it, so there is
    nothing to confirm afterwards and nothing is ever staged.
    """

    confirms = False

    def __init__(self, root: Path, signer: UrlSigner, url_ttl_s: float) -> None:
        self.root = root
        self.signer = signer
        self.url_ttl_s = url_ttl_s
        root.mkdir(parents=True, exist_ok=True)

    def path(self, hash_: str, encoding: str) -> Path:
        return self.root / hash_[:2] / (hash_ + _SUFFIX[encoding])

    def _url(self, method: str, hash_: str, encoding: str, size: int, stored: int, user_id: int) -> models.SignedUrl:
        query, expires = self.signer.grant(method, hash_, encoding, size, stored, user_id, self.url_ttl_s)
        return models.SignedUrl(hash=hash_, url=f"/blobs/{hash_}?{query}", method=method, encoding=encoding,
                                size=size, stored_size=stored, expires_at=expires)

    def upload_url(self, chunk: models.UploadChunk, user_id: int) -> models.SignedUrl:
        return self._url("PUT", chunk.hash, chunk.encoding, chunk.size, chunk.stored_size, user_id)

    def download_url(self, info: ChunkInfo, user_id: int) -> models.SignedUrl:
        return self._url("GET", info.hash, info.encoding, info.size, info.stored_size, user_id)

    def write(self, hash_: str, encoding: str, data: bytes | bytearray) -> None:
        """Store verified bytes: temp file, fsync, rename, fsync the folder, so a crash leaves all or nothing."""
        final = self.path(hash_, encoding)
        final.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def exists(self, hash_: str, encoding: str) -> bool:
        return self.path(hash_, encoding).is_file()

    def read_staged(self, user_id: int, chunk: models.UploadChunk) -> bytes | None:
        return None  # uploads are verified as they arrive: nothing waits for a confirmation

    def discard_staged(self, user_id: int, chunk: models.UploadChunk) -> None:
        return None
