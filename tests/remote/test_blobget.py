"""Blob GETs read by remote.blobget (not httpx) behave like httpx's: bodies in every framing, kept
connections reused, a kept connection the server dropped replaced without a retry, error answers and
timeouts mapped to the same remote.errors. A small canned HTTP server on loopback plays the store."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from remote import errors
from remote.client import ApiClient, RetryPolicy

CLOSE = b"<close>"  # answer: read the request, then close the connection without a word
STALL = b"<stall>"  # answer: headers and a little of the body, then nothing for 2 s


@dataclass
class Canned:
    """Answers each request with the next of `answers` (raw HTTP bytes, CLOSE or STALL)."""

    answers: list[bytes]
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while self.answers:
                while b"\r\n\r\n" not in buf:
                    more = conn.recv(65536)
                    if not more:
                        return
                    buf += more
                head, buf = buf.split(b"\r\n\r\n", 1)
                self.requests.append(head)
                answer = self.answers.pop(0)
                if answer == CLOSE:
                    return
                if answer == STALL:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                    time.sleep(2)
                    return
                conn.sendall(answer)
                if b"Connection: close" in answer:
                    return

    def close(self) -> None:
        self._sock.close()


def ok(body: bytes, *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


@pytest.fixture
def canned() -> Iterator[Canned]:
    store = Canned([])
    yield store
    store.close()


def client(store: Canned, **kw) -> ApiClient:
    kw.setdefault("retry", RetryPolicy.never())
    return ApiClient(store.url, "secret-token", **kw)


async def test_bodies_are_read_whole_over_one_kept_connection(canned):
    big = os.urandom(3 * 2**20 + 17)
    canned.answers += [ok(big, "X-Drive-Encoding: none"), ok(b"small")]
    async with client(canned) as api:
        assert await api.get_blob("/blobs/a?sig=1") == ("none", big)
        assert await api.get_blob("/blobs/b?sig=2") == ("none", b"small")
    assert canned.connections == 1
    first = canned.requests[0].decode()
    assert first.startswith("GET /blobs/a?sig=1 HTTP/1.1\r\n")
    assert "Accept-Encoding: identity" in first
    assert "secret-token" not in first  # the token never goes to a blob URL


async def test_chunked_and_close_delimited_bodies(canned):
    canned.answers += [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nT: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end",
        ok(b"again"),
    ]
    async with client(canned) as api:
        assert (await api.get_blob("/blobs/a"))[1] == b"hello world"
        assert (await api.get_blob("/blobs/b"))[1] == b"until the end"
        assert (await api.get_blob("/blobs/c"))[1] == b"again"
    assert canned.connections == 2  # the close-delimited answer ended its connection


async def test_a_kept_connection_dropped_by_the_server_is_replaced_without_a_retry(canned):
    canned.answers += [ok(b"one"), CLOSE, ok(b"two")]
    async with client(canned) as api:
        assert (await api.get_blob("/blobs/a"))[1] == b"one"
        assert (await api.get_blob("/blobs/b"))[1] == b"two"
        assert api.statistics().retries == 0
    assert canned.connections == 2 and len(canned.requests) == 3


async def test_a_fresh_connection_closed_unanswered_is_a_transport_failure(canned):
    canned.answers += [CLOSE]
    async with client(canned) as api:
        with pytest.raises(errors.TransportFailure):
            await api.get_blob("/blobs/a")


async def test_error_answers_map_as_for_any_request(canned):
    expired = json.dumps({"error": {"code": "expired", "message": "the signed URL has expired"}}).encode()
    canned.answers += [
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        ok(b"after a retry"),
        f"HTTP/1.1 410 Gone\r\nContent-Type: application/json\r\nContent-Length: {len(expired)}\r\n\r\n".encode()
        + expired,
    ]
    async with client(canned, retry=RetryPolicy(max_attempts=2, base_delay_s=0.01)) as api:
        assert (await api.get_blob("/blobs/a"))[1] == b"after a retry"
        assert api.statistics().retries == 1
        with pytest.raises(errors.Expired):
            await api.get_blob("/blobs/b")


async def test_a_stalled_body_times_out(canned):
    canned.answers += [STALL]
    async with client(canned, timeout=0.3) as api:
        with pytest.raises(errors.TransportFailure):
            await api.get_blob("/blobs/a")


async def test_with_an_http_proxy_in_the_environment_blob_gets_go_through_httpx(canned, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", canned.url)  # the canned server plays the proxy: it sees the full URL
    canned.answers += [ok(b"via the proxy")]
    async with client(canned) as api:
        assert (await api.get_blob("http://store.invalid/blobs/a?sig=1"))[1] == b"via the proxy"
    assert canned.requests[0].startswith(b"GET http://store.invalid/blobs/a?sig=1 HTTP/1.1")
