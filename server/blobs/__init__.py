"""Blob stores: where chunk bytes live, and the signed URLs that let clients move them directly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import ServerConfig
    from .base import BlobStore
    from .signing import UrlSigner


def open_blob_store(config: ServerConfig, signer: UrlSigner) -> BlobStore:
    """The blob store config.blob_url names: '' (DATA/blobs), a folder or 'file:///path' (served by this
    server through signed URLs), or 's3://bucket...' (see s3.S3Location), whose bucket is created if missing."""
    url = config.blob_url
    if url.startswith("s3://"):
        from .s3 import S3BlobStore, S3Location

        store = S3BlobStore(S3Location.parse(url), config.s3_access_key, config.s3_secret_key, config.url_ttl_s)
        store.ensure_bucket()
        return store
    from .local import LocalBlobStore

    if not url:
        root = config.blob_dir
    elif url.startswith("file://"):
        root = Path(url[len("file://"):])
    elif "://" in url:
        raise ValueError(f"unsupported blob URL scheme {url.split('://', 1)[0]!r} (s3 or file)")
    else:
        root = Path(url).expanduser()
    return LocalBlobStore(root, signer, config.url_ttl_s)
