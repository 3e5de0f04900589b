"""A typed async client for the server's HTTP API (under /api/v1) and its signed blob URLs, with retries.

One method per endpoint; each returns the models of remote.models or raises from the tree in
remote.errors. Runs under trio (httpx's async client detects it).

Retries. Network errors, timeouts, 5xx and 429 are retried with exponential backoff and full jitter,
honouring Retry-After, until the RetryPolicy's attempts or total time run out; then TransportFailure
(nothing answered) or ServerError (the server kept failing). 4xx answers are never retried. For
GAVE_UP_S after a request gave up on an unreachable server, requests are tried once only.
Whether a request may be sent twice decides how far it is retried:

- idempotent requests (GET, PATCH, blob PUT/GET, the read-only POSTs under /chunks, session create,
  commit and drop, share) are retried on any of the failures above. Committing an upload session
  twice returns the same node: that is why uploads go through sessions.
- the others (create_folder, create_symlink, commit_file, commit_small_files, move, delete, restore,
  restore_version, unshare) are retried only when the request cannot have been applied: the connection was never
  made, or the server answered 429/503. A lost response (a read timeout, a dropped connection, a 500)
  raises TransportFailure / ServerError with `maybe_applied = True`. A caller that retries a direct
  commit_file itself may then see VersionConflict (the first attempt went through: compare
  `details["content_hash"]`) or Exists for a new file; create_folder may see Exists.

Never logged: the token, and the query string of a signed URL (it is a credential). This module
installs a filter on the `httpx` logger that strips query strings from its request log lines.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx
import trio

from . import errors
from .blobhttp import BlobHttp, body_of
from .models import (
    Changes,
    Listing,
    Me,
    Node,
    Share,
    SharedItem,
    SignedUrl,
    SmallFile,
    UploadChunk,
    UploadSession,
    Version,
    VersionDetail,
)

__all__ = ["API_PREFIX", "ApiClient", "ClientStatistics", "RetryPolicy"]

API_PREFIX = "/api/v1"
# The server refuses larger lists in one request (its limits.MAX_BATCH, limits.MAX_CONFIRM).
MAX_BATCH = 10_000
MAX_CONFIRM = 64
# Inline small files (its limits.MAX_SMALL_FILES, MAX_SMALL_FILE_BYTES, MAX_SMALL_FILES_BYTES).
SMALL_FILES = 256
SMALL_FILE_BYTES = 256 * 2**10
SMALL_FILES_BYTES = 8 * 2**20

log = logging.getLogger("drivefs.remote")

# For this long after a request gave up on an unreachable server, requests are tried once, not retried.
GAVE_UP_S = 2.0
# Failures where the request certainly never reached the server: safe to resend anything.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Answers that say the server did not act on the request.
_REFUSED = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying: at most `max_attempts` tries within `max_total_s` seconds.

    Between tries: full jitter, a uniform delay in [0, min(max_delay_s, base_delay_s * 2**(n-1))]
    after the n-th failure, or the server's Retry-After when it asks for longer. The last wait is cut
    to end at the deadline, so a budget of 30 s means tries until about 30 s have passed.
    """

    max_attempts: int = 100
    max_total_s: float = 30.0
    base_delay_s: float = 0.1
    max_delay_s: float = 4.0
    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})

    @classmethod
    def never(cls) -> RetryPolicy:
        """One try only."""
        return cls(max_attempts=1, max_total_s=0.0)

    def backoff(self, failures: int, rng: random.Random | None = None) -> float:
        """The delay after `failures` failed tries (1 for the first), with full jitter."""
        cap = min(self.max_delay_s, self.base_delay_s * 2 ** min(failures - 1, 62))
        return (rng or random).uniform(0.0, cap)


@dataclass(frozen=True)
class ClientStatistics:
    """Counters since the client was created: HTTP attempts made, and how many were retries."""

    requests: int
    retries: int


@dataclass
class _Counters:
    requests: int = 0
    retries: int = 0


class ChunkLike(Protocol):
    hash: str
    size: int


class ApiClient:
    """The server's API for one user and device. Use as `async with ApiClient(url, token) as api:`.

    `retry` may be replaced at any time (e.g. a shorter budget for interactive calls).
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        device: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        max_connections: int = 32,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.device = device
        self._timeout = timeout
        self._auth = {"Authorization": f"Bearer {token}"}
        if device:
            self._auth["X-Drive-Device"] = device
        self._counters = _Counters()
        self._rng = random.Random()
        self._gave_up_at = float("-inf")  # trio.current_time() when a request last found no server
        # No default headers: the bearer token goes to API calls only, never to blob URLs (which may
        # point at an S3 store that must not see it).
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
        )
        # Blob GETs and PUTs skip httpx's per-request machinery (see remote.blobhttp); a given
        # transport (tests) sees every request, and with an HTTP proxy set in the environment httpx's
        # proxy support is kept for every request.
        direct = transport is None and "http" not in urllib.request.getproxies()
        self._blobs = BlobHttp(max_connections) if direct else None

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url!r}, device={self.device!r})"

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._blobs is not None:
            await self._blobs.aclose()
        await self._http.aclose()

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(requests=self._counters.requests, retries=self._counters.retries)

    # ---- the request loop -------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: str,
        *,
        idempotent: bool,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        timeout: httpx.Timeout | None = None,
        blob: bool = False,
        blob_max_bytes: int | None = None,
    ) -> httpx.Response:
        """Send with retries; return a 2xx response or raise from remote.errors. blob: a GET or PUT of a
        signed blob URL (no API credentials), sent through BlobHttp when it can, which refuses an answer
        longer than blob_max_bytes."""
        policy = self.retry
        what = f"{method} {url.split('?', 1)[0]}"
        start = trio.current_time()
        if start - self._gave_up_at < GAVE_UP_S:
            # The server was unreachable moments ago: one try, not another budget. A mount's reader would
            # otherwise wait out the budget once per page the kernel asks again after a failed read.
            policy = RetryPolicy.never()
        failures = 0
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = timeout
        direct = self._blobs if blob and self._blobs is not None and self._blobs.handles(url) else None
        while True:
            self._counters.requests += 1
            retry_after = 0.0
            try:
                if direct is not None and method == "PUT":
                    resp = await direct.put(url, headers or {}, content or b"", timeout or self._http.timeout)
                elif direct is not None and method == "GET":
                    resp = await direct.get(url, headers or {}, timeout or self._http.timeout,
                                            max_bytes=blob_max_bytes)
                else:
                    resp = await self._http.request(method, url, headers=headers, params=params, json=json,
                                                    content=content, **extra)
            except httpx.TransportError as e:
                resp = None
                failure = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                sent = not isinstance(e, _NOT_SENT)
                if sent and not idempotent:
                    raise self._transport_failure(what, failure, failures + 1, start, maybe_applied=True) from e
                cause: BaseException | None = e
            else:
                status = resp.status_code
                if status < 400:
                    _unlink(resp)
                    return resp
                retryable = status in policy.retry_statuses and (idempotent or status in _REFUSED)
                if not retryable:
                    raise self._error(resp, what, failures + 1, start)
                failure = f"HTTP {status}"
                retry_after = _retry_after(resp)
                cause = None
            failures += 1
            elapsed = trio.current_time() - start
            remaining = policy.max_total_s - elapsed
            delay = max(policy.backoff(failures, self._rng), retry_after)
            if failures >= policy.max_attempts or remaining <= 0 or retry_after > remaining:
                if resp is not None:
                    raise self._error(resp, what, failures, start)
                self._gave_up_at = trio.current_time()
                raise self._transport_failure(what, failure, failures, start, maybe_applied=False) from cause
            delay = min(delay, remaining)
            log.debug("%s failed (%s); retry %d in %.2f s", what, failure, failures, delay)
            self._counters.retries += 1
            await trio.sleep(delay)

    def _transport_failure(self, what: str, failure: str, attempts: int, start: float,
                           *, maybe_applied: bool) -> errors.TransportFailure:
        elapsed = trio.current_time() - start
        if maybe_applied:
            msg = (f"lost the connection to the server at {self.base_url} during {what} ({failure}); "
                   "not retried because the request may already have been applied")
        else:
            msg = (f"cannot reach the server at {self.base_url} ({what}): {failure}; "
                   f"gave up after {attempts} attempt{'s' * (attempts != 1)} in {elapsed:.1f} s")
        return errors.TransportFailure(msg, attempts=attempts, elapsed_s=elapsed, maybe_applied=maybe_applied)

    def _error(self, resp: httpx.Response, what: str, attempts: int, start: float) -> errors.RemoteError:
        try:
            body = resp.json()
        except ValueError:
            body = None
        status = resp.status_code
        if status >= 500 or status == 429:
            detail = body.get("error", {}) if isinstance(body, dict) else {}
            detail = detail if isinstance(detail, dict) else {}
            elapsed = trio.current_time() - start
            msg = (f"the server at {self.base_url} failed {what}: HTTP {status}"
                   f"{': ' + str(detail['message']) if detail.get('message') else ''}; "
                   f"gave up after {attempts} attempt{'s' * (attempts != 1)} in {elapsed:.1f} s")
            return errors.ServerError(msg, status=status, code=str(detail.get("code", "internal")),
                                      maybe_applied=status not in _REFUSED)
        if status == 403 and body is None and b"expired" in resp.content[:4096].lower():
            # An S3 store's "Request has expired" (403 with an XML body; the server's own URLs answer 410).
            return errors.Expired(f"{what}: the signed URL has expired", status=status, code="expired")
        return errors.error_from_response(status, body, what)

    async def _api(self, method: str, path: str, *, idempotent: bool, params: dict[str, Any] | None = None,
                   json: Any = None, timeout: httpx.Timeout | None = None) -> Any:
        resp = await self._send(method, API_PREFIX + path, idempotent=idempotent, headers=self._auth,
                                params=params, json=json, timeout=timeout)
        if resp.status_code == 204 or not resp.content:
            return None
        return resp.json()

    # ---- meta -------------------------------------------------------------------------------------

    async def me(self) -> Me:
        return Me.from_json(await self._api("GET", "/me", idempotent=True))

    # ---- tree -------------------------------------------------------------------------------------

    async def resolve(self, path: str) -> Node:
        """The node at a slash-separated path from the caller's root."""
        return Node.from_json(await self._api("GET", "/resolve", idempotent=True, params={"path": path}))

    async def get_node(self, node_id: int) -> Node:
        return Node.from_json(await self._api("GET", f"/nodes/{node_id}", idempotent=True))

    async def list_children(self, node_id: int, cursor: str | None = None, limit: int | None = None) -> Listing:
        """One page of a folder's live children, by name; pass `next_cursor` back for the next page."""
        params: dict[str, Any] = {}
        if cursor is not None:
            params["cursor"] = cursor
        if limit is not None:
            params["limit"] = limit
        return Listing.from_json(await self._api("GET", f"/nodes/{node_id}/children", idempotent=True,
                                                 params=params))

    async def iter_children(self, node_id: int, page_size: int | None = None) -> AsyncIterator[Node]:
        """Every live child of a folder, fetching page after page."""
        cursor: str | None = None
        while True:
            page = await self.list_children(node_id, cursor, page_size)
            for node in page.entries:
                yield node
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def create_folder(self, parent_id: int, name: str, mode: int = 0o755, mtime_ns: int | None = None) -> Node:
        body = {"parent_id": parent_id, "name": name, "mode": mode, "mtime_ns": mtime_ns}
        return Node.from_json(await self._api("POST", "/folders", idempotent=False, json=body))

    async def create_symlink(self, parent_id: int, name: str, target: str, mtime_ns: int | None = None) -> Node:
        body = {"parent_id": parent_id, "name": name, "target": target, "mtime_ns": mtime_ns}
        return Node.from_json(await self._api("POST", "/symlinks", idempotent=False, json=body))

    async def commit_file(
        self,
        manifest: Sequence[ChunkLike],
        size: int,
        *,
        node_id: int | None = None,
        base_version: int | None = None,
        parent_id: int | None = None,
        name: str | None = None,
        mode: int = 0o644,
        mtime_ns: int | None = None,
        content_hash: str | None = None,
    ) -> Node:
        """Commit a version directly (chunks already uploaded). Not retried after a lost response:
        see the module docstring; upload sessions (create_upload/commit_upload) are the safe path."""
        body = _file_commit(manifest, size, node_id, base_version, parent_id, name, mode, mtime_ns, content_hash)
        return Node.from_json(await self._api("POST", "/files", idempotent=False, json=body))

    async def commit_small_files(self, files: Sequence[SmallFile]) -> list[Node | errors.ApiError]:
        """Create or update these files, bytes included, in one request (at most SMALL_FILES of them and
        SMALL_FILES_BYTES in all): for each, in order, its node or the error a commit of it alone would
        have raised. Not retried after a lost response (see the module docstring): a retry may meet
        Exists for the files the first attempt made, VersionConflict for the versions it committed."""
        body = {"files": [f.to_json() for f in files]}
        answer = await self._api("POST", "/files/small", idempotent=False, json=body)
        out: list[Node | errors.ApiError] = []
        for r in answer["results"]:
            if r.get("node") is not None:
                out.append(Node.from_json(r["node"]))
            else:
                out.append(errors.error_from_response(int(r.get("status") or 400), {"error": r.get("error")},
                                                      "POST /files/small"))
        return out

    async def move(self, node_id: int, parent_id: int, name: str, replace: bool = True) -> Node:
        """Rename and/or move; replace=False refuses an existing target (RENAME_NOREPLACE)."""
        body = {"parent_id": parent_id, "name": name, "replace": replace}
        return Node.from_json(await self._api("POST", f"/nodes/{node_id}/move", idempotent=False, json=body))

    async def set_attr(self, node_id: int, *, mode: int | None = None, mtime_ns: int | None = None) -> Node:
        body = {"mode": mode, "mtime_ns": mtime_ns}
        return Node.from_json(await self._api("PATCH", f"/nodes/{node_id}", idempotent=True, json=body))

    async def delete(self, node_id: int, require_empty: bool = False) -> Node:
        """Move a node to the trash (require_empty: only an empty folder, as rmdir)."""
        params = {"require_empty": "true"} if require_empty else None
        return Node.from_json(await self._api("DELETE", f"/nodes/{node_id}", idempotent=False, params=params))

    async def restore(self, node_id: int, name: str | None = None) -> Node:
        """Bring a node back from the trash, optionally under another name."""
        return Node.from_json(await self._api("POST", f"/nodes/{node_id}/restore", idempotent=False,
                                              json={"name": name}))

    async def trash(self, limit: int | None = None) -> Listing:
        params = {"limit": limit} if limit is not None else None
        return Listing.from_json(await self._api("GET", "/trash", idempotent=True, params=params))

    # ---- versions ---------------------------------------------------------------------------------

    async def versions(self, node_id: int) -> list[Version]:
        body = await self._api("GET", f"/nodes/{node_id}/versions", idempotent=True)
        return [Version.from_json(v) for v in body["versions"]]

    async def version_detail(self, node_id: int, version: int) -> VersionDetail:
        return VersionDetail.from_json(await self._api("GET", f"/nodes/{node_id}/versions/{version}",
                                                       idempotent=True))

    async def restore_version(self, node_id: int, version: int) -> Node:
        """Make an old version the current one (as a new version)."""
        return Node.from_json(await self._api("POST", f"/nodes/{node_id}/versions/{version}/restore",
                                              idempotent=False))

    # ---- chunks -----------------------------------------------------------------------------------

    async def missing_chunks(self, hashes: Iterable[str]) -> list[str]:
        """Which of these chunks the caller must still upload (asked in batches the server accepts)."""
        out: list[str] = []
        for batch in _batches(list(hashes)):
            body = await self._api("POST", "/chunks/missing", idempotent=True, json={"hashes": batch})
            out += body["missing"]
        return out

    async def upload_urls(self, chunks: Sequence[UploadChunk]) -> list[SignedUrl]:
        """Signed PUT URLs, one per chunk, in order."""
        out: list[SignedUrl] = []
        for batch in _batches(list(chunks)):
            body = await self._api("POST", "/chunks/upload-urls", idempotent=True,
                                   json={"chunks": [c.to_json() for c in batch]})
            out += [SignedUrl.from_json(u) for u in body["urls"]]
        return out

    async def download_urls(self, node_id: int, version: int, hashes: Sequence[str], *,
                            blocks: bool = False) -> list[SignedUrl]:
        """Signed GET URLs for chunks of a version the caller can read, one per distinct hash, in order;
        with blocks=True each also carries the chunk's block hashes when it can be fetched in ranges."""
        out: list[SignedUrl] = []
        extra = {"blocks": True} if blocks else {}
        for batch in _batches(list(dict.fromkeys(hashes))):
            body = await self._api("POST", "/chunks/download-urls", idempotent=True,
                                   json={"node_id": node_id, "version": version, "hashes": batch, **extra})
            out += [SignedUrl.from_json(u) for u in body["urls"]]
        return out

    async def confirm_chunks(self, chunks: Sequence[UploadChunk]) -> list[str]:
        """Ask the server to verify and record chunks PUT through URLs marked `confirm` (an S3 store cannot
        check uploads itself); returns those it found no upload for. Safe to repeat."""
        out: list[str] = []
        for batch in _batches(list(chunks), MAX_CONFIRM):
            body = await self._api("POST", "/chunks/confirm", idempotent=True,
                                   json={"chunks": [c.to_json() for c in batch]})
            out += body["missing"]
        return out

    async def put_blob(self, url: SignedUrl | str, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Upload one chunk's stored bytes to its signed URL (relative URLs are joined to the server's).

        When the URL says `confirm` (an S3 store), the server is then asked to verify and record the chunk:
        after this returns, the chunk counts as uploaded either way."""
        hdrs = {"Content-Type": "application/octet-stream"}
        signed = url if isinstance(url, SignedUrl) else None
        if signed is not None:
            hdrs.update(signed.headers)
            url = signed.url
        hdrs.update(headers or {})
        await self._blob_request("PUT", url, signed, headers=hdrs, content=body)
        if signed is not None and signed.confirm:
            chunk = UploadChunk(signed.hash, signed.size, signed.stored_size, signed.encoding)
            if await self.confirm_chunks([chunk]):
                raise errors.RemoteError(f"the blob store does not hold chunk {signed.hash} right after it was "
                                         "uploaded; upload it again")

    async def get_blob(self, url: SignedUrl | str) -> tuple[str, bytes | bytearray]:
        """One chunk's stored bytes from its signed URL, and their encoding ("none" or "zstd")."""
        hdrs: dict[str, str] = {}
        encoding = "none"
        signed = url if isinstance(url, SignedUrl) else None
        if signed is not None:
            hdrs.update(signed.headers)
            encoding = signed.encoding
            url = signed.url
        resp = await self._blob_request("GET", url, signed, headers=hdrs)
        return resp.headers.get("X-Drive-Encoding", encoding), body_of(resp)

    async def get_blob_range(self, url: SignedUrl, start: int, end: int) -> bytes | bytearray:
        """Bytes [start, end) of a chunk stored plain, from its signed URL (`Range: bytes=start-(end-1)`).
        A store that ignores the Range and sends the whole object (200) is cut to the range here; the
        caller verifies what it gets either way."""
        if url.encoding != "none" or not 0 <= start < end:
            raise ValueError(f"no byte range [{start}, {end}) of a chunk stored as {url.encoding!r}")
        resp = await self._blob_request("GET", url.url, url, headers={**url.headers, "Range": f"bytes={start}-{end - 1}"})
        if resp.status_code == 206:
            return body_of(resp)
        return body_of(resp)[start:end]

    async def _blob_request(self, method: str, url: str, signed: SignedUrl | None, **kw: Any) -> httpx.Response:
        """A request to a signed blob URL. An S3 store answers an expired URL with 403, not 410: that is
        reported as Expired too (see _error; or when the URL's expiry has passed), so callers renew it."""
        try:
            # The stored size bounds any answer for the chunk (a range's or the whole object's).
            return await self._send(method, self._blob_url(url), idempotent=True, blob=True,
                                    blob_max_bytes=signed.stored_size if signed is not None else None, **kw)
        except errors.Forbidden as e:
            if signed is not None and time.time() >= signed.expires_at - 1:
                raise errors.Expired(f"{method} {url.split('?', 1)[0]}: the signed URL has expired",
                                     status=e.status, code="expired", details={}) from None
            raise

    def _blob_url(self, url: str) -> str:
        if url.startswith(("http://", "https://")):
            return url
        return self.base_url + (url if url.startswith("/") else "/" + url)

    # ---- resumable uploads ------------------------------------------------------------------------

    async def create_upload(
        self,
        manifest: Sequence[ChunkLike],
        size: int,
        *,
        node_id: int | None = None,
        base_version: int | None = None,
        parent_id: int | None = None,
        name: str | None = None,
        mode: int = 0o644,
        mtime_ns: int | None = None,
        content_hash: str | None = None,
    ) -> UploadSession:
        """Open an upload session for a version; its `missing` lists the chunks to upload before commit."""
        body = _file_commit(manifest, size, node_id, base_version, parent_id, name, mode, mtime_ns, content_hash)
        # Retrying after a lost answer at worst leaves an unused session, which expires: safe.
        return UploadSession.from_json(await self._api("POST", "/uploads", idempotent=True, json=body))

    async def get_upload(self, session_id: str) -> UploadSession:
        return UploadSession.from_json(await self._api("GET", f"/uploads/{session_id}", idempotent=True))

    async def commit_upload(self, session_id: str) -> Node:
        """Commit a session's version; committing twice returns the same node, so it is retried freely."""
        return Node.from_json(await self._api("POST", f"/uploads/{session_id}/commit", idempotent=True))

    async def drop_upload(self, session_id: str) -> None:
        await self._api("DELETE", f"/uploads/{session_id}", idempotent=True)

    # ---- shares -----------------------------------------------------------------------------------

    async def share(self, node_id: int, user: str, permission: str = "read") -> Share:
        """Share a node with a user (sharing again changes the permission)."""
        return Share.from_json(await self._api("POST", f"/nodes/{node_id}/shares", idempotent=True,
                                               json={"user": user, "permission": permission}))

    async def unshare(self, node_id: int, user: str) -> None:
        await self._api("DELETE", f"/nodes/{node_id}/shares/{quote(user, safe='')}",
                        idempotent=False)

    async def shares_of(self, node_id: int) -> list[Share]:
        body = await self._api("GET", f"/nodes/{node_id}/shares", idempotent=True)
        return [Share.from_json(s) for s in body["shares"]]

    async def shared_with_me(self) -> list[SharedItem]:
        body = await self._api("GET", "/shares/with-me", idempotent=True)
        return [SharedItem.from_json(i) for i in body["items"]]

    async def shared_by_me(self) -> list[Share]:
        body = await self._api("GET", "/shares/by-me", idempotent=True)
        return [Share.from_json(s) for s in body["shares"]]

    # ---- changes feed -----------------------------------------------------------------------------

    async def changes(self, cursor: str = "0", limit: int = 500, wait: float = 0.0,
                      exclude_device: str | None = None) -> Changes:
        """Changes after `cursor`; with `wait` > 0 the server holds the request until one exists (long-poll).
        With `exclude_device` the server leaves out that device's own changes (the cursor still moves on)."""
        params: dict[str, str | int | float] = {"cursor": cursor, "limit": limit, "wait": wait}
        if exclude_device is not None:
            params["exclude_device"] = exclude_device
        timeout = httpx.Timeout(self._timeout + wait, connect=min(self._timeout, 5.0))
        return Changes.from_json(await self._api("GET", "/changes", idempotent=True, params=params,
                                                 timeout=timeout))

    async def latest_cursor(self) -> str:
        """The cursor of the newest change: start a feed from here to skip history."""
        return (await self._api("GET", "/changes/latest", idempotent=True))["cursor"]


def _file_commit(manifest: Sequence[ChunkLike], size: int, node_id: int | None, base_version: int | None,
                 parent_id: int | None, name: str | None, mode: int, mtime_ns: int | None,
                 content_hash: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "manifest": [{"hash": c.hash, "size": c.size} for c in manifest],
        "size": size,
        "mode": mode,
    }
    for key, value in (("node_id", node_id), ("base_version", base_version), ("parent_id", parent_id),
                       ("name", name), ("mtime_ns", mtime_ns), ("content_hash", content_hash)):
        if value is not None:
            body[key] = value
    return body


def _batches(items: list[Any], n: int = MAX_BATCH) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _unlink(resp: httpx.Response) -> None:
    """Let a read response be freed as soon as it is dropped.

    httpx's response and its (read and closed) stream refer to each other, so the response, its body
    and its request's body live until the cycle collector happens to run: with chunk transfers in
    parallel that kept tens of MB of chunks alive. The stream is spent; an empty one replaces it.
    """
    resp.stream = httpx.ByteStream(b"")


def _retry_after(resp: httpx.Response) -> float:
    """Seconds the server asked us to wait (Retry-After as seconds or an HTTP date), else 0."""
    value = resp.headers.get("Retry-After")
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(0.0, when.timestamp() - time.time())


class _NoQueryStrings(logging.Filter):
    """Strip query strings (signed URL credentials) from URLs in httpx's request log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(a.copy_with(query=None) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


_httpx_log = logging.getLogger("httpx")
if not any(isinstance(f, _NoQueryStrings) for f in _httpx_log.filters):
    _httpx_log.addFilter(_NoQueryStrings())
