"""Blob GETs and PUTs sent by remote.blobhttp (not httpx) behave like httpx's: bodies in every framing,
kept connections reused, a kept connection the server dropped replaced without a retry, error answers
(also one sent before a PUT's body was read) and timeouts mapped to the same remote.errors. A small
canned HTTP server on loopback plays the store."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from remote import errors
from remote.client import ApiClient, RetryPolicy
from remote.models import SignedUrl

CLOSE = b"<close>"  # answer: read the request, then close the connection without a word
STALL = b"<stall>"  # answer: headers and a little of the body, then nothing for 2 s
HANG = b"<hang>"  # answer: headers and a little of the body, then nothing until the client closes
SLOW = b"<slow>"  # the first 3/4 of the request's body are read 64 KiB per 10 ms, then the next answer
EARLY = b"<early>"  # the next answer goes out before the request's body is read, then the connection closes


@dataclass
class Canned:
    """Answers each request with the next of `answers` (raw HTTP bytes, CLOSE or STALL)."""

    answers: list[bytes]
    tls: ssl.SSLContext | None = None
    requests: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)  # of requests with a Content-Length
    connections: int = 0
    closed_by_client: int = 0  # connections the client closed while a HANG answer waited

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
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError):  # the client refused the certificate
                conn.close()
                return
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
                if answer == EARLY:
                    conn.sendall(self.answers.pop(0))
                    return
                slow = answer == SLOW
                if slow:
                    answer = self.answers.pop(0)
                length = _content_length(head)
                while len(buf) < length:
                    dawdle = slow and len(buf) < length * 3 // 4
                    if dawdle:
                        time.sleep(0.01)
                    more = conn.recv(65536 if dawdle else 1 << 20)
                    if not more:
                        return
                    buf += more
                if length:
                    self.bodies.append(buf[:length])
                    buf = buf[length:]
                if answer == CLOSE:
                    return
                if answer == STALL:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                    time.sleep(2)
                    return
                if answer == HANG:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                    while conn.recv(65536):
                        pass
                    self.closed_by_client += 1
                    return
                conn.sendall(answer)
                if b"Connection: close" in answer:
                    return

    def close(self) -> None:
        self._sock.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


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


CREATED = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def test_puts_send_their_bodies_whole_over_one_kept_connection(canned):
    big = os.urandom(3 * 2**20 + 17)
    canned.answers += [CREATED, CREATED, ok(b"read back")]
    async with client(canned) as api:
        await api.put_blob("/blobs/a?sig=1", big)
        await api.put_blob("/blobs/b?sig=2", b"small")
        assert (await api.get_blob("/blobs/a?sig=3"))[1] == b"read back"
    assert canned.connections == 1 and canned.bodies == [big, b"small"]
    first = canned.requests[0].decode()
    assert first.startswith("PUT /blobs/a?sig=1 HTTP/1.1\r\n")
    assert {f"Content-Length: {len(big)}", "Content-Type: application/octet-stream"} <= set(first.split("\r\n"))
    assert "secret-token" not in first


async def test_a_put_on_a_kept_connection_the_server_dropped_goes_again_on_a_fresh_one(canned):
    canned.answers += [CREATED, CLOSE, CREATED]
    async with client(canned) as api:
        await api.put_blob("/blobs/a", b"one")
        await api.put_blob("/blobs/b", b"two" * 100_000)
        assert api.statistics().retries == 0
    # The dropped connection took the second PUT unanswered; it went whole again on the fresh one.
    assert canned.connections == 2 and canned.bodies == [b"one", b"two" * 100_000, b"two" * 100_000]


async def test_a_put_to_a_slow_reader_times_out_per_send_not_per_body(canned):
    # 12 MiB read at ~6 MB/s take ~2 s, far beyond the 0.5 s timeout, yet every piece is taken within
    # it: the timeout bounds each wait to send, as httpx's does, so a slow link still moves a big chunk.
    body = os.urandom(16 * 2**20)
    canned.answers += [SLOW, CREATED]
    async with client(canned, timeout=0.5) as api:
        await api.put_blob("/blobs/a?sig=1", body)
    assert canned.bodies == [body]


async def test_an_answer_sent_before_a_put_body_was_read_is_the_answer(canned):
    # A store refuses an expired URL without reading the body, then closes: the client must report the
    # refusal (so the URL gets renewed), not the broken pipe its unsent bytes met.
    expired = json.dumps({"error": {"code": "expired", "message": "the signed URL has expired"}}).encode()
    canned.answers += [EARLY, f"HTTP/1.1 410 Gone\r\nContent-Type: application/json\r\nContent-Length: "
                              f"{len(expired)}\r\nConnection: close\r\n\r\n".encode() + expired]
    async with client(canned) as api:
        with pytest.raises(errors.Expired):
            await api.put_blob("/blobs/a?sig=1", os.urandom(32 * 2**20))


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


def signed(url: str, stored_size: int) -> SignedUrl:
    return SignedUrl(hash="0" * 64, url=url, method="GET", size=stored_size, stored_size=stored_size,
                     expires_at=time.time() + 600)


async def test_a_claimed_length_beyond_the_bound_is_refused_without_allocating_it(canned):
    huge = 256 * 2**20  # what a hostile or broken store claims; the mount would allocate it per GET
    canned.answers += [f"HTTP/1.1 200 OK\r\nContent-Length: {huge}\r\n\r\n".encode() + b"x" * 1000,
                       ok(b"eleven byte"), ok(b"ten bytes!")]
    async with client(canned) as api:
        tracemalloc.start()
        try:
            with pytest.raises(errors.TransportFailure, match="exceeds"):
                await api.get_blob("/blobs/a")  # no bound given: the largest stored chunk
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 2**20
        with pytest.raises(errors.TransportFailure, match="exceeds"):  # the chunk's stored size bounds it
            await api.get_blob(signed("/blobs/b", 10))
        assert (await api.get_blob(signed("/blobs/c", 10)))[1] == b"ten bytes!"


async def test_unsized_bodies_are_bounded_too(canned):
    canned.answers += [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nsix by\r\n5\r\nfive!\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"y" * 11,
    ]
    async with client(canned) as api:
        for path in ("/blobs/a", "/blobs/b"):
            with pytest.raises(errors.TransportFailure, match="exceeds"):
                await api.get_blob(signed(path, 10))
    assert canned.connections == 2  # the refused chunked answer's connection was not reused


@pytest.fixture
def self_signed(tmp_path) -> tuple[Path, Path]:
    """A certificate (and its key) for 127.0.0.1 that no CA vouches for."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_https_blob_urls_are_read_by_the_getter_and_verified(canned, self_signed, monkeypatch):
    cert, key = self_signed
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    store = Canned([ok(b"over tls"), ok(b"again"), ok(b"never sent")], tls=tls)
    url = store.url.replace("http://", "https://")
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted as httpx would trust it
        async with client(canned) as api:
            body = (await api.get_blob(url + "/blobs/a"))[1]
            assert body == b"over tls" and isinstance(body, bytearray)  # read by BlobHttp, not httpx
            assert (await api.get_blob(url + "/blobs/b"))[1] == b"again"
        assert store.connections == 1
        monkeypatch.delenv("SSL_CERT_FILE")  # a certificate nobody vouches for is refused, not read
        async with client(canned) as api:
            with pytest.raises(errors.TransportFailure, match="CERTIFICATE_VERIFY_FAILED"):
                await api.get_blob(url + "/blobs/c")
        assert len(store.requests) == 2
    finally:
        store.close()


async def test_a_cancelled_get_closes_its_connection(canned):
    canned.answers += [HANG, ok(b"fresh")]
    async with client(canned, timeout=60) as api:
        with trio.move_on_after(0.3) as scope:
            await api.get_blob("/blobs/a")
        assert scope.cancelled_caught
        # The worker thread blocked in recv is woken and closes the connection (else it waits a minute).
        with trio.fail_after(20):
            while not canned.closed_by_client:
                await trio.sleep(0.01)
        assert (await api.get_blob("/blobs/b"))[1] == b"fresh"
    assert canned.connections == 2
