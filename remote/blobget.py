"""Plain-HTTP GETs of blob bodies without httpx's per-piece machinery.

A chunk GET moves up to 4 MiB. httpx hands a body up in 64 KiB pieces, each through h11's parser,
several async generator layers and a timeout scope, and then joins them: on a 2-core machine that cost
more CPU than hashing the same bytes, and a cold sequential read through the mount is CPU-bound. The
BlobGetter sends such a GET itself and reads the body with recv_into straight into one buffer.

The client (remote.client) uses it for GETs of signed blob URLs over plain http only; API calls, PUTs
and https URLs go through httpx. Its answer is an ordinary httpx.Response, so the client's retries,
error mapping and Expired handling see no difference. Idle connections are kept per host and port for
reuse; one found closed by the server is dropped before use, and a GET that fails on a reused
connection before any answer arrived is sent once more on a fresh one (as httpcore does).
"""

from __future__ import annotations

import contextlib
import math
import select
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
import trio

__all__ = ["BODY_EXTENSION", "BlobGetter", "body_of"]

# Response extension under which a BlobGetter answer carries its body as read (a bytearray).
BODY_EXTENSION = "drivefs.body"

# Bytes asked for per recv while reading a status line, headers or chunk sizes.
_HEAD_READ = 64 * 2**10
# Most bytes of status line plus headers accepted (a blob answer has a few short headers).
_MAX_HEAD = 64 * 2**10


class _Closed(Exception):
    """The peer closed the connection (or reset it) before the answer was complete."""


@dataclass
class _Conn:
    """One HTTP/1.1 connection: its socket stream plus bytes received past what was parsed so far."""

    stream: trio.SocketStream
    buffered: bytearray = field(default_factory=bytearray)
    # Set once any byte of an answer arrived: failures after that are not resent on a fresh connection.
    answered: bool = False
    # While a body is read: the scope whose deadline each arriving piece moves `read_timeout` further.
    scope: trio.CancelScope | None = None
    read_timeout: float | None = None

    def is_idle_and_open(self) -> bool:
        """A kept connection the server has not closed meanwhile (readable while idle = EOF or junk)."""
        poller = select.poll()
        try:
            poller.register(self.stream.socket.fileno(), select.POLLIN)
            return not poller.poll(0) and not self.buffered
        except (OSError, ValueError):
            return False

    async def recv_some(self) -> None:
        try:
            data = await self.stream.socket.recv(_HEAD_READ)
        except OSError as e:
            raise _Closed(str(e)) from None
        if not data:
            raise _Closed("the server closed the connection")
        self._progress()
        self.buffered += data

    async def read_line(self) -> bytes:
        """One CRLF-terminated line, without the CRLF."""
        while True:
            end = self.buffered.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffered[:end])
                del self.buffered[:end + 2]
                return line
            if len(self.buffered) > _MAX_HEAD:
                raise httpx.RemoteProtocolError("an HTTP header line is too long")
            await self.recv_some()

    async def read_into(self, view: memoryview) -> None:
        """Fill `view` exactly: buffered bytes first, then recv_into the rest (no intermediate copies)."""
        n = min(len(self.buffered), len(view))
        view[:n] = self.buffered[:n]
        del self.buffered[:n]
        sock = self.stream.socket
        while n < len(view):
            try:
                got = await sock.recv_into(view[n:])
            except OSError as e:
                raise _Closed(str(e)) from None
            if not got:
                raise _Closed("the server closed the connection in the middle of a body")
            n += got
            self._progress()

    def _progress(self) -> None:
        self.answered = True
        if self.scope is not None and self.read_timeout is not None:
            # The read timeout bounds each wait for bytes, not the whole answer.
            self.scope.deadline = trio.current_time() + self.read_timeout

    async def read_to_eof(self) -> bytes:
        parts = [bytes(self.buffered)]
        self.buffered.clear()
        while True:
            try:
                data = await self.stream.socket.recv(_HEAD_READ)
            except OSError as e:
                raise _Closed(str(e)) from None
            if not data:
                return b"".join(parts)
            self._progress()
            parts.append(data)


@dataclass
class _Head:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool  # cleared when the body turns out to end with the connection

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class BlobGetter:
    """GETs of signed blob URLs over plain HTTP, each body read straight into one buffer.

    `get` answers an httpx.Response (body already read) or raises httpx's transport errors, so the
    client's retry loop treats it like any other request. Idle connections are kept per host and port.
    """

    def __init__(self, max_idle_per_host: int = 32) -> None:
        self._max_idle = max_idle_per_host
        self._idle: dict[tuple[str, int], list[_Conn]] = {}

    @staticmethod
    def handles(url: str) -> bool:
        """Whether `get` can fetch this URL (plain http; https goes through httpx)."""
        return url.startswith("http://")

    async def get(self, url: str, headers: Mapping[str, str], timeout: httpx.Timeout) -> httpx.Response:
        request = httpx.Request("GET", url, headers=headers)
        key = (request.url.host, request.url.port or 80)
        data = _request_head(request.url, headers)
        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._exchange(conn, key, request, data, timeout)
            except (httpx.RemoteProtocolError, httpx.WriteError):
                if conn.answered:
                    raise
                # The server closed the kept connection as we reused it: nothing was answered, so the
                # GET goes once more on a fresh connection.
        conn = await self._connect(key, request, timeout.connect)
        return await self._exchange(conn, key, request, data, timeout)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await trio.aclose_forcefully(conn.stream)

    def _take_idle(self, key: tuple[str, int]) -> _Conn | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.is_idle_and_open():
                return conn
            conn.stream.socket.close()
        return None

    def _keep(self, key: tuple[str, int], conn: _Conn) -> None:
        conns = self._idle.setdefault(key, [])
        if len(conns) < self._max_idle:
            conn.answered = False
            conns.append(conn)
        else:
            conn.stream.socket.close()

    async def _connect(self, key: tuple[str, int], request: httpx.Request, timeout: float | None) -> _Conn:
        try:
            with _fail_after(timeout):
                return _Conn(await trio.open_tcp_stream(*key))
        except trio.TooSlowError:
            raise httpx.ConnectTimeout(f"connecting to {key[0]}:{key[1]} timed out", request=request) from None
        except OSError as e:
            raise httpx.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {e}", request=request) from None

    async def _exchange(self, conn: _Conn, key: tuple[str, int], request: httpx.Request, data: bytes,
                        timeout: httpx.Timeout) -> httpx.Response:
        """Send the GET on `conn` and read the whole answer; the connection is kept if reusable."""
        done = False
        try:
            try:
                with _fail_after(timeout.write):
                    await conn.stream.send_all(data)
            except trio.TooSlowError:
                raise httpx.WriteTimeout("sending a blob GET timed out", request=request) from None
            except (OSError, trio.BrokenResourceError) as e:
                raise httpx.WriteError(f"sending a blob GET failed: {e}", request=request) from None
            try:
                with _fail_after(timeout.read) as conn.scope:
                    conn.read_timeout = timeout.read
                    head = await _read_head(conn)
                    body = await _read_body(conn, head)
            except trio.TooSlowError:
                raise httpx.ReadTimeout("reading a blob answer timed out", request=request) from None
            except (_Closed, httpx.RemoteProtocolError) as e:
                raise httpx.RemoteProtocolError(str(e), request=request) from None
            done = True
        finally:
            conn.scope = None
            if not done:
                conn.stream.socket.close()
        if head.keep_alive:
            self._keep(key, conn)
        else:
            conn.stream.socket.close()
        extensions: dict[str, object] = {"http_version": b"HTTP/1.1", "reason_phrase": head.reason}
        if isinstance(body, bytearray) and 200 <= head.status < 300 and head.header(b"content-encoding") is None:
            # httpx would want the body as bytes, which is one more copy of it: it is handed over as read.
            extensions[BODY_EXTENSION] = body
            body = b""
        response = httpx.Response(head.status, headers=head.headers, stream=httpx.ByteStream(bytes(body)),
                                  request=request, extensions=extensions)
        await response.aread()  # a Content-Encoding (never asked for) is decoded here
        return response


def body_of(response: httpx.Response) -> bytes | bytearray:
    """The body of a response, from the BlobGetter (as it was read, without a copy) or from httpx."""
    body = response.extensions.get(BODY_EXTENSION)
    return body if isinstance(body, bytearray) else response.content


def _request_head(url: httpx.URL, headers: Mapping[str, str]) -> bytes:
    # identity: chunks are compressed (or not) by us when stored; nothing on top in transit.
    lines = [b"GET " + url.raw_path + b" HTTP/1.1", b"Host: " + url.netloc, b"Accept-Encoding: identity"]
    lines += [f"{k}: {v}".encode("latin-1") for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _fail_after(timeout: float | None) -> contextlib.AbstractContextManager[trio.CancelScope]:
    """trio.fail_after(timeout), or no limit for None (httpx's "no timeout")."""
    return trio.fail_after(math.inf if timeout is None else timeout)


async def _read_head(conn: _Conn) -> _Head:
    while True:
        status_line = await conn.read_line()
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        headers = []
        while line := await conn.read_line():
            name, sep, value = line.partition(b":")
            if not sep:
                raise httpx.RemoteProtocolError(f"malformed header line {line[:80]!r}")
            headers.append((name.strip(), value.strip()))
        status = int(parts[1])
        if status >= 200:  # 1xx answers (100 Continue) are informational: the real one follows
            break
    tokens = [v.lower() for k, v in headers if k.lower() == b"connection"]
    keep = b"close" not in b",".join(tokens) if parts[0] == b"HTTP/1.1" else b"keep-alive" in b",".join(tokens)
    return _Head(status, parts[2] if len(parts) > 2 else b"", headers, keep)


async def _read_body(conn: _Conn, head: _Head) -> bytes | bytearray:
    """The body as sent (Content-Length, chunked, or up to EOF, which ends the connection)."""
    if head.status in (204, 304):
        return b""
    if (head.header(b"transfer-encoding") or b"").lower().endswith(b"chunked"):
        return await _read_chunked(conn)
    length = head.header(b"content-length")
    if length is None:
        head.keep_alive = False
        return await conn.read_to_eof()
    if not length.isdigit():
        raise httpx.RemoteProtocolError(f"bad Content-Length {length[:40]!r}")
    buf = bytearray(int(length))
    with memoryview(buf) as view:
        await conn.read_into(view)
    return buf


async def _read_chunked(conn: _Conn) -> bytes:
    parts = []
    while True:
        size_line = (await conn.read_line()).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise httpx.RemoteProtocolError(f"bad chunk size {size_line[:40]!r}") from None
        if size == 0:
            while await conn.read_line():  # trailers, up to the empty line
                pass
            return b"".join(parts)
        piece = bytearray(size)
        await conn.read_into(memoryview(piece))
        parts.append(bytes(piece))
        if await conn.read_line():
            raise httpx.RemoteProtocolError("a chunk is longer than its size says")
