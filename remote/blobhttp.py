"""Blob GETs and PUTs sent with the standard library's http.client in worker threads, without httpx's
per-piece machinery.

A chunk moves up to 4 MiB. httpx hands a body up in 64 KiB pieces, each through h11's parser, several
async generator layers and a timeout scope, and then joins them: on a 2-core machine that cost more CPU
than hashing the same bytes, and a cold sequential read through the mount is CPU-bound. Sending costs
it less, but still about 0.9 ms of Python per 1 MiB PUT: a third of the client's CPU for an upload. Here
a request runs with http.client in a trio worker thread (a blocking send or recv releases the GIL, so
the trio thread keeps serving FUSE): a PUT body goes out in a few large sends, a Content-Length answer is
read with readinto straight into one buffer. Every answer is bounded by the size the caller expects
(the chunk's stored size for a GET), so a server claiming a huge length cannot make us allocate it.

The client (remote.client) uses it for requests to signed blob URLs only; API calls go through httpx,
and so does everything when an HTTP proxy is set or a test transport is given. Its answer is an
ordinary httpx.Response and its failures httpx's transport errors, so the client's retries, error
mapping and Expired handling see no difference. Idle connections are kept per (scheme, host, port) for
reuse; one found closed by the server is dropped before use, and a request that fails on a reused
connection before any answer arrived is sent once more on a fresh one (as httpcore does): both blob
requests are idempotent (a PUT stores the same bytes under the same name).
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
import trio

__all__ = ["BODY_EXTENSION", "MAX_BLOB_BYTES", "BlobHttp", "body_of"]

# Response extension under which a BlobHttp answer carries its body as read (a bytearray).
BODY_EXTENSION = "drivefs.body"

# Largest body accepted when the caller gives no bound: the largest stored chunk (server/limits.py
# MAX_STORED_CHUNK_BYTES; the client does not import the server's package).
MAX_BLOB_BYTES = 4 * 2**20 + 64 * 2**10

# Bytes asked for per read of a body whose length is not announced (chunked or up to EOF).
_PIECE = 1 * 2**20
# Bytes handed to the socket per send of a PUT body. The write timeout bounds each send (sendall's timeout
# bounds the whole call), so a slow link still moves a 4 MiB chunk if it moves this much per timeout.
_SEND_PIECE = 256 * 2**10

_Key = tuple[str, str, int]  # (scheme, host, port)


@dataclass
class _Conn:
    """One kept-alive http.client connection, used by one request at a time.

    The worker thread owns it while a request runs; if the trio task is cancelled meanwhile it is abandoned:
    its socket is shut down (which wakes a blocked send or recv) and whichever side finishes last closes it."""

    http: http.client.HTTPConnection
    # Set once any byte of an answer arrived: failures after that are not resent on a fresh connection.
    answered: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _busy: bool = False
    _abandoned: bool = False

    def is_idle_and_open(self) -> bool:
        """A kept connection the server has not closed meanwhile (readable while idle = EOF or junk)."""
        sock = self.http.sock
        if sock is None:
            return False
        poller = select.poll()
        try:
            poller.register(sock.fileno(), select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def start(self) -> bool:
        """Called by the worker before its request: False if the task gave up on it meanwhile."""
        with self._lock:
            self._busy = not self._abandoned
            return self._busy

    def finish(self) -> bool:
        """Called by the worker when its request ends: False if it was abandoned (then it is closed)."""
        with self._lock:
            self._busy = False
            if self._abandoned:
                self.http.close()
                return False
        return True

    def abandon(self) -> None:
        """From the trio thread on cancellation: never reuse it, and stop the worker's blocking I/O."""
        with self._lock:
            self._abandoned = True
            if not self._busy:
                self.http.close()
                return
            sock = self.http.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the worker's recv returns; it closes the connection
            except OSError:
                pass


@dataclass
class _Answer:
    status: int
    reason: str
    version: int  # 10 or 11, as http.client says
    headers: list[tuple[str, str]]
    body: bytes | bytearray
    keep: bool  # the connection can carry another request


class BlobHttp:
    """GETs and PUTs of signed blob URLs (http and https), each run in a worker thread.

    `get` and `put` answer an httpx.Response (body already read) or raise httpx's transport errors, so the
    client's retry loop treats them like any other request. Idle connections are kept per scheme, host and
    port; at most `max_idle_per_host` requests run at once (each holds a worker thread).
    """

    def __init__(self, max_idle_per_host: int = 32) -> None:
        self._max_idle = max_idle_per_host
        self._idle: dict[_Key, list[_Conn]] = {}
        self._limiter = trio.CapacityLimiter(max_idle_per_host)
        self._ssl: ssl.SSLContext | None = None  # made on the first https request (loading CAs costs)

    @staticmethod
    def handles(url: str) -> bool:
        """Whether `get` and `put` can send to this URL."""
        return url.startswith(("http://", "https://"))

    async def get(self, url: str, headers: Mapping[str, str], timeout: httpx.Timeout,
                  max_bytes: int | None = None) -> httpx.Response:
        """GET `url`. A 2xx body longer than `max_bytes` (default MAX_BLOB_BYTES) is refused with
        RemoteProtocolError before it is read or allocated; so is any other answer's beyond MAX_BLOB_BYTES."""
        bound = MAX_BLOB_BYTES if max_bytes is None else max_bytes
        return await self._request(httpx.Request("GET", url, headers=headers), timeout, bound, None)

    async def put(self, url: str, headers: Mapping[str, str], body: bytes, timeout: httpx.Timeout) -> httpx.Response:
        """PUT `body` to `url` (with its Content-Length; any given is replaced)."""
        return await self._request(httpx.Request("PUT", url, headers=headers), timeout, MAX_BLOB_BYTES, body)

    async def _request(self, request: httpx.Request, timeout: httpx.Timeout, bound: int,
                       body: bytes | None) -> httpx.Response:
        scheme = request.url.scheme
        key = (scheme, request.url.host, request.url.port or (443 if scheme == "https" else 80))
        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._exchange(conn, key, request, timeout, bound, body)
            except (httpx.RemoteProtocolError, httpx.WriteError):
                if conn.answered:
                    raise
                # The server closed the kept connection as we reused it: nothing was answered, so the
                # request goes once more on a fresh connection.
        return await self._exchange(self._new_conn(key, timeout), key, request, timeout, bound, body)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.http.close()

    def _take_idle(self, key: _Key) -> _Conn | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.is_idle_and_open():
                return conn
            conn.http.close()
        return None

    def _keep(self, key: _Key, conn: _Conn) -> None:
        conns = self._idle.setdefault(key, [])
        if len(conns) < self._max_idle:
            conn.answered = False
            conns.append(conn)
        else:
            conn.http.close()

    def _new_conn(self, key: _Key, timeout: httpx.Timeout) -> _Conn:
        scheme, host, port = key
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()  # the same trust as httpx's (certifi, SSL_CERT_FILE)
            return _Conn(http.client.HTTPSConnection(host, port, timeout=timeout.connect, context=self._ssl))
        return _Conn(http.client.HTTPConnection(host, port, timeout=timeout.connect))

    async def _exchange(self, conn: _Conn, key: _Key, request: httpx.Request, timeout: httpx.Timeout,
                        bound: int, body: bytes | None) -> httpx.Response:
        """Run the request on `conn` in a worker thread; the connection is kept if reusable."""
        try:
            answer = await trio.to_thread.run_sync(_exchange_sync, conn, request, timeout, bound, body,
                                                   abandon_on_cancel=True, limiter=self._limiter)
        except trio.Cancelled:
            # The worker may still be blocked in send or recv: shut its socket so it ends, never reuse it.
            conn.abandon()
            raise
        if answer.keep:
            self._keep(key, conn)
        else:
            conn.http.close()
        return _response(answer, request)


def body_of(response: httpx.Response) -> bytes | bytearray:
    """The body of a response, from BlobHttp (as it was read, without a copy) or from httpx."""
    body = response.extensions.get(BODY_EXTENSION)
    return body if isinstance(body, bytearray) else response.content


def _response(answer: _Answer, request: httpx.Request) -> httpx.Response:
    extensions: dict[str, object] = {"http_version": b"HTTP/1.1" if answer.version == 11 else b"HTTP/1.0",
                                     "reason_phrase": answer.reason.encode("latin-1", "replace")}
    body = answer.body
    encoded = any(k.lower() == "content-encoding" for k, _ in answer.headers)
    if isinstance(body, bytearray) and 200 <= answer.status < 300 and not encoded:
        # httpx would want the body as bytes, which is one more copy of it: it is handed over as read.
        extensions[BODY_EXTENSION] = body
        body = b""
    response = httpx.Response(answer.status, headers=answer.headers, stream=httpx.ByteStream(bytes(body)),
                              request=request, extensions=extensions)
    response.read()  # a Content-Encoding (never asked for) is decoded here
    return response


# ---- in the worker thread ---------------------------------------------------------------------------


def _exchange_sync(conn: _Conn, request: httpx.Request, timeout: httpx.Timeout, bound: int,
                   body: bytes | None) -> _Answer:
    """Send the request and read the whole answer, mapping failures to httpx's transport errors. The
    connection is closed on any failure (and when abandoned); the caller keeps it if `keep`."""
    if not conn.start():
        raise httpx.ConnectError(f"the {request.method} was given up before it started", request=request)
    ok = False
    try:
        _connect(conn, request, timeout.connect)
        if conn.abandoned:  # cancelled while connecting: there was no socket to shut down then
            raise httpx.ConnectError(f"the {request.method} was given up while connecting", request=request)
        try:
            _send(conn, request, timeout.write, body)
        except httpx.WriteError as e:
            # A store may answer a PUT before reading its body (an expired URL, a body too large) and
            # close: that answer, if it came, says more than the broken pipe it left (httpcore does so).
            answer = _early_answer(conn, request, bound, e)
        else:
            answer = _receive(conn, request, timeout.read, bound)
        ok = True
    finally:
        if not conn.finish() or not ok:
            conn.http.close()
    return answer


def _early_answer(conn: _Conn, request: httpx.Request, bound: int, failure: httpx.WriteError) -> _Answer:
    """The answer the server sent before the request was sent whole, if it is there at once; else the
    write's own failure. The connection is not kept either way."""
    try:
        answer = _receive(conn, request, 0.5, bound)
    except httpx.TransportError:
        conn.answered = False  # no answer to go by: the request may be sent again on a fresh connection
        raise failure from None
    answer.keep = False
    return answer


def _connect(conn: _Conn, request: httpx.Request, timeout: float | None) -> None:
    if conn.http.sock is not None:
        return
    where = f"{conn.http.host}:{conn.http.port}"
    try:
        conn.http.connect()
    except TimeoutError:
        raise httpx.ConnectTimeout(f"connecting to {where} timed out", request=request) from None
    except OSError as e:  # ssl.SSLError (a refused certificate) is an OSError too
        raise httpx.ConnectError(f"cannot connect to {where}: {e}", request=request) from None


def _send(conn: _Conn, request: httpx.Request, timeout: float | None, body: bytes | None) -> None:
    h = conn.http
    try:
        h.sock.settimeout(timeout)
        h.putrequest(request.method, request.url.raw_path.decode("ascii"), skip_accept_encoding=True)
        # identity: chunks are compressed (or not) by us when stored; nothing on top in transit.
        h.putheader("Accept-Encoding", "identity")
        for name, value in request.headers.raw:  # as the caller spelled them
            if name.lower() not in (b"host", b"accept-encoding", b"content-length"):
                h.putheader(name.decode("latin-1"), value)
        if body is not None:
            h.putheader("Content-Length", str(len(body)))
        h.endheaders()
        if body:
            with memoryview(body) as view:
                for at in range(0, len(view), _SEND_PIECE):
                    h.sock.sendall(view[at:at + _SEND_PIECE])
    except TimeoutError:
        raise httpx.WriteTimeout(f"sending a blob {request.method} timed out", request=request) from None
    except (OSError, http.client.HTTPException) as e:
        raise httpx.WriteError(f"sending a blob {request.method} failed: {e}", request=request) from None


def _receive(conn: _Conn, request: httpx.Request, timeout: float | None, bound: int) -> _Answer:
    h = conn.http
    h.sock.settimeout(timeout)  # bounds each wait for bytes, not the whole answer
    try:
        try:
            resp = h.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
            # Closed before any answer: the caller may send the request again on a fresh connection.
            raise httpx.RemoteProtocolError(f"the server closed the connection: {e}", request=request) from None
        conn.answered = True
        limit = bound if 200 <= resp.status < 300 else MAX_BLOB_BYTES
        body = _read_body(resp, limit, request)
        keep = not resp.will_close
        resp.close()
    except TimeoutError:
        conn.answered = True
        raise httpx.ReadTimeout("reading a blob answer timed out", request=request) from None
    except (OSError, http.client.HTTPException) as e:
        conn.answered = True
        raise httpx.RemoteProtocolError(f"reading a blob answer failed: {e!r}", request=request) from None
    return _Answer(resp.status, resp.reason, resp.version, resp.getheaders(), body, keep)


def _read_body(resp: http.client.HTTPResponse, limit: int, request: httpx.Request) -> bytes | bytearray:
    """The body as sent, refused (before reading it) when it would exceed `limit` bytes."""
    if resp.length is None:  # chunked, or up to EOF
        return _read_unsized(resp, limit, request)
    if resp.length > limit:
        raise httpx.RemoteProtocolError(f"a blob answer of {resp.length} bytes exceeds the {limit} expected",
                                        request=request)
    buf = bytearray(resp.length)
    with memoryview(buf) as view:
        n = 0
        while n < len(buf):
            got = resp.readinto(view[n:])
            if not got:
                raise http.client.IncompleteRead(b"", len(buf) - n)
            n += got
    return buf


def _read_unsized(resp: http.client.HTTPResponse, limit: int, request: httpx.Request) -> bytearray:
    body = bytearray()
    while piece := resp.read(min(_PIECE, limit + 1 - len(body))):
        body += piece
        if len(body) > limit:
            raise httpx.RemoteProtocolError(f"a blob answer exceeds the {limit} bytes expected", request=request)
    return body
