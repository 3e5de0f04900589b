"""The scaled-out blob store: chunk objects in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, ...).

Clients move chunk bytes straight to and from the store through presigned URLs (SigV4, short-lived, bound
to one key, one method and, for PUT, the exact stored length); the API server never relays an upload.

The store cannot check that an object matches its name, so an upload is not trusted until the server
has: a presigned PUT writes a *staging* object, private to the uploading user, and the client then asks
the server to confirm it (POST /api/v1/chunks/confirm; its SignedUrl says `confirm: true`). The server
reads the staging object back (bounded to the announced size), decodes and hashes it, and only then writes
those very bytes under the chunk's own key and records the chunk for the user. So:

- nobody can overwrite a chunk others already use: clients never get a URL for a chunk key;
- a wrong or altered upload is never recorded nor downloadable under that hash;
- a race that rewrites the staging object after the check changes nothing, because the server stores the
  bytes it verified, not whatever the staging key holds by then.

Layout under the bucket (and the optional prefix):

    PREFIX chunks/<sha256>[.zst]           verified chunks, named by the SHA-256 of their plain bytes
    PREFIX staging/<user id>/<sha256>[.zst] unverified uploads, deleted once confirmed or refused

Staging objects of uploads that are never confirmed are left behind; on a bucket it creates, the server
adds a lifecycle rule expiring them after a day (set one yourself on a bucket you provide).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from .. import models
from ..errors import BadRequest
from ..store.metadata import ChunkInfo

log = logging.getLogger("drivefs.server")

_SUFFIX = {"none": "", "zstd": ".zst"}
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound", "NoSuchBucket"})


@dataclass(frozen=True)
class S3Location:
    """Where the chunks live: `s3://BUCKET[/PREFIX]?endpoint=URL&region=R&public_endpoint=URL&addressing=path`.

    endpoint: the S3 API the server talks to (default: AWS); public_endpoint: the one put in the URLs
    clients get, when they reach the store by another address; addressing: path (default with an
    endpoint) or virtual (bucket in the host name; default on AWS).
    """

    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    public_endpoint: str | None = None
    region: str | None = None
    addressing: str = "auto"

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError("an S3 blob URL looks like s3://BUCKET[/PREFIX]?endpoint=http://host:port&region=R")
        bucket = parts.netloc
        if not 3 <= len(bucket) <= 63:
            raise ValueError(f"bucket name {bucket!r} must be 3 to 63 characters")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        known = {"endpoint", "public_endpoint", "region", "addressing", "prefix"}
        if set(query) - known:
            raise ValueError(f"unknown S3 blob URL option(s) {', '.join(sorted(set(query) - known))} "
                             f"(known: {', '.join(sorted(known))})")
        prefix = query.get("prefix", parts.path).strip("/")
        addressing = query.get("addressing") or ("path" if query.get("endpoint") else "auto")
        if addressing not in ("path", "virtual", "auto"):
            raise ValueError("addressing must be path, virtual or auto")
        return cls(bucket=bucket, prefix=prefix + "/" if prefix else "", endpoint=query.get("endpoint"),
                   public_endpoint=query.get("public_endpoint"), region=query.get("region"), addressing=addressing)


def _missing(error: Exception) -> bool:
    code = str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))
    return code in _NOT_FOUND


class S3BlobStore:
    """Chunks as objects in one bucket; presigned URLs for clients, verification by confirm."""

    confirms = True

    def __init__(self, location: S3Location, access_key: str | None, secret_key: str | None,
                 url_ttl_s: float) -> None:
        import boto3
        from botocore.config import Config

        self.location = location
        self.url_ttl_s = url_ttl_s
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": location.addressing},
            retries={"max_attempts": 4, "mode": "standard"},
            max_pool_connections=64,
            connect_timeout=5,
            read_timeout=30,
            # Checksums only where the API requires them: not every S3-compatible store knows the new ones.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session()
        common = {"region_name": location.region, "aws_access_key_id": access_key,
                  "aws_secret_access_key": secret_key, "config": config}
        self._s3 = session.client("s3", endpoint_url=location.endpoint, **common)
        if location.public_endpoint:
            self._signer = session.client("s3", endpoint_url=location.public_endpoint, **common)
        else:
            self._signer = self._s3

    def __repr__(self) -> str:
        return f"S3BlobStore(bucket={self.location.bucket!r}, endpoint={self.location.endpoint!r})"

    # ---- keys ----

    def key(self, hash_: str, encoding: str) -> str:
        return f"{self.location.prefix}chunks/{hash_}{_SUFFIX[encoding]}"

    def staging_key(self, user_id: int, hash_: str, encoding: str) -> str:
        return f"{self.location.prefix}staging/{user_id}/{hash_}{_SUFFIX[encoding]}"

    # ---- setup ----

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist yet (with a rule expiring forgotten staging objects)."""
        from botocore.exceptions import ClientError

        bucket = self.location.bucket
        try:
            self._s3.head_bucket(Bucket=bucket)
            return
        except ClientError as e:
            if not _missing(e):
                raise
        args: dict = {"Bucket": bucket}
        if self.location.region and self.location.region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": self.location.region}
        try:
            self._s3.create_bucket(**args)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return  # another server process made it first
            raise
        log.info("created bucket %s", bucket)
        try:
            self._s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [{
                "ID": "drivefs-expire-staging", "Status": "Enabled",
                "Filter": {"Prefix": f"{self.location.prefix}staging/"}, "Expiration": {"Days": 1},
            }]})
        except ClientError as e:
            log.warning("could not set a lifecycle rule on %s to expire unconfirmed uploads: %s", bucket, e)

    # ---- URLs ----

    def _presign(self, op: str, key: str, **params: object) -> tuple[str, float]:
        ttl = max(1, int(self.url_ttl_s))
        expires = time.time() + ttl
        url = self._signer.generate_presigned_url(op, Params={"Bucket": self.location.bucket, "Key": key, **params},
                                                  ExpiresIn=ttl)
        return url, expires

    def upload_url(self, chunk: models.UploadChunk, user_id: int) -> models.SignedUrl:
        key = self.staging_key(user_id, chunk.hash, chunk.encoding)
        # The length is signed (content-length is a signed header): the store refuses any other body size.
        url, expires = self._presign("put_object", key, ContentLength=chunk.stored_size)
        return models.SignedUrl(hash=chunk.hash, url=url, method="PUT", encoding=chunk.encoding, size=chunk.size,
                                stored_size=chunk.stored_size, expires_at=expires, confirm=True)

    def download_url(self, info: ChunkInfo, user_id: int) -> models.SignedUrl:
        url, expires = self._presign("get_object", self.key(info.hash, info.encoding))
        return models.SignedUrl(hash=info.hash, url=url, method="GET", encoding=info.encoding, size=info.size,
                                stored_size=info.stored_size, expires_at=expires)

    # ---- objects ----

    def read_staged(self, user_id: int, chunk: models.UploadChunk) -> bytes | None:
        """The bytes a user uploaded for `chunk` (None if nothing is there); BadRequest if not the announced size.
        Reads at most one byte more than announced, whatever the object's real size."""
        from botocore.exceptions import ClientError

        key = self.staging_key(user_id, chunk.hash, chunk.encoding)
        try:
            resp = self._s3.get_object(Bucket=self.location.bucket, Key=key, Range=f"bytes=0-{chunk.stored_size}")
        except ClientError as e:
            if _missing(e):
                return None
            if str(e.response.get("Error", {}).get("Code")) == "InvalidRange":  # an empty object
                self.discard_staged(user_id, chunk)
                raise BadRequest(f"expected {chunk.stored_size} bytes, got 0") from None
            raise
        with resp["Body"] as body:
            data = body.read(chunk.stored_size + 1)
        if len(data) != chunk.stored_size:
            self.discard_staged(user_id, chunk)
            raise BadRequest(f"expected {chunk.stored_size} bytes, got {'more' if len(data) > chunk.stored_size else len(data)}")
        return data

    def discard_staged(self, user_id: int, chunk: models.UploadChunk) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self.staging_key(user_id, chunk.hash, chunk.encoding)
        try:
            self._s3.delete_object(Bucket=self.location.bucket, Key=key)
        except (BotoCoreError, ClientError) as e:
            log.warning("could not delete the staging object of chunk %s: %s", chunk.hash, e)

    def write(self, hash_: str, encoding: str, data: bytes | bytearray) -> None:
        """Store verified bytes under the chunk's key (Content-MD5 guards them on the way)."""
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        self._s3.put_object(Bucket=self.location.bucket, Key=self.key(hash_, encoding), Body=data,
                            ContentLength=len(data), ContentMD5=md5, ContentType="application/octet-stream")

    def exists(self, hash_: str, encoding: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.location.bucket, Key=self.key(hash_, encoding))
        except ClientError as e:
            if _missing(e):
                return False
            raise
        return True
