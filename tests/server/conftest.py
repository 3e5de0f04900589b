"""Helpers for the API tests: users speaking HTTP to a real server process, and servers with custom options.

Nothing here imports the server: every test talks to it over HTTP on 127.0.0.1, as a client would.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import httpx
import pytest
import zstandard

import tests.fixtures.server as server_fixture
from tests.fixtures.server import ServerProcess

API = "/api/v1"

# Every operation the API serves, as the OpenAPI document lists them (path -> methods).
OPERATIONS: dict[str, set[str]] = {
    f"{API}/me": {"get"}, f"{API}/resolve": {"get"}, f"{API}/nodes/{{node_id}}": {"get", "patch", "delete"},
    f"{API}/nodes/{{node_id}}/children": {"get"}, f"{API}/folders": {"post"}, f"{API}/symlinks": {"post"},
    f"{API}/files": {"post"}, f"{API}/files/small": {"post"}, f"{API}/nodes/{{node_id}}/move": {"post"}, f"{API}/nodes/{{node_id}}/restore": {"post"},
    f"{API}/trash": {"get"}, f"{API}/nodes/{{node_id}}/versions": {"get"},
    f"{API}/nodes/{{node_id}}/versions/{{version}}": {"get"},
    f"{API}/nodes/{{node_id}}/versions/{{version}}/restore": {"post"},
    f"{API}/chunks/missing": {"post"}, f"{API}/chunks/upload-urls": {"post"}, f"{API}/chunks/download-urls": {"post"},
    f"{API}/chunks/confirm": {"post"},
    "/blobs/{chunk_hash}": {"get", "put"}, f"{API}/uploads": {"post"}, f"{API}/uploads/{{sid}}": {"get", "delete"},
    f"{API}/uploads/{{sid}}/commit": {"post"}, f"{API}/nodes/{{node_id}}/shares": {"get", "post"},
    f"{API}/nodes/{{node_id}}/shares/{{name}}": {"delete"}, f"{API}/shares/with-me": {"get"},
    f"{API}/shares/by-me": {"get"}, f"{API}/changes": {"get"}, f"{API}/changes/latest": {"get"}, "/health": {"get"},
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unique(prefix: str = "n") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def error_of(r: httpx.Response, status: int, code: str | None = None) -> dict:
    """Assert `r` is an API error with this status (and code), in the documented JSON shape; return its body."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["code"], str) and isinstance(err["message"], str) and isinstance(err["details"], dict), err
    if code is not None:
        assert err["code"] == code, err
    return err


def ok(r: httpx.Response, status: int = 200) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:500]}"
    return r.json() if r.content else {}


@dataclass
class Drive:
    """One user of a server, doing what a client does, over HTTP only."""

    server: ServerProcess
    name: str
    token: str
    c: httpx.Client = field(init=False)
    blob: httpx.Client = field(init=False)
    id: int = field(init=False)
    root: int = field(init=False)

    def __post_init__(self) -> None:
        self.c = self.server.client(self.token)
        self.blob = self.server.client(None)  # blob URLs carry their own signature, no bearer token
        me = ok(self.c.get(f"{API}/me"))
        self.id, self.root = me["id"], me["root_id"]

    def close(self) -> None:
        self.c.close()
        self.blob.close()

    # ---- plain requests under /api/v1 ----
    def get(self, path: str, **kw) -> httpx.Response:
        return self.c.get(API + path, **kw)

    def post(self, path: str, json=None, **kw) -> httpx.Response:
        return self.c.post(API + path, json=json, **kw)

    def patch(self, path: str, json=None, **kw) -> httpx.Response:
        return self.c.patch(API + path, json=json, **kw)

    def delete(self, path: str, **kw) -> httpx.Response:
        return self.c.delete(API + path, **kw)

    # ---- tree ----
    def node(self, node_id: int) -> dict:
        return ok(self.get(f"/nodes/{node_id}"))

    def mkdir(self, parent: int, name: str | None = None, **extra) -> dict:
        return ok(self.post("/folders", {"parent_id": parent, "name": name or unique("d"), **extra}), 201)

    def symlink(self, parent: int, name: str, target: str) -> dict:
        return ok(self.post("/symlinks", {"parent_id": parent, "name": name, "target": target}), 201)

    def names(self, folder: int) -> list[str]:
        return [e["name"] for e in self.children(folder)]

    def children(self, folder: int, limit: int = 5000) -> list[dict]:
        out, cursor = [], None
        while True:
            params = {"limit": limit, **({"cursor": cursor} if cursor is not None else {})}
            page = ok(self.get(f"/nodes/{folder}/children", params=params))
            out += page["entries"]
            cursor = page["next_cursor"]
            if cursor is None:
                return out

    def move(self, node_id: int, parent: int, name: str, headers: dict | None = None, **extra) -> httpx.Response:
        return self.post(f"/nodes/{node_id}/move", {"parent_id": parent, "name": name, **extra}, headers=headers)

    # ---- chunks and files ----
    def upload_urls(self, chunks: list[bytes], encoding: str = "none") -> list[dict]:
        specs = []
        for data in chunks:
            stored = zstandard.ZstdCompressor().compress(data) if encoding == "zstd" else data
            specs.append({"hash": sha(data), "size": len(data), "stored_size": len(stored), "encoding": encoding})
        return ok(self.post("/chunks/upload-urls", {"chunks": specs}))["urls"]

    def put(self, url: dict | str, body: bytes, method: str = "PUT") -> httpx.Response:
        return self.blob.request(method, url["url"] if isinstance(url, dict) else url, content=body)

    def confirm(self, url: dict) -> list[str]:
        """After a PUT to a URL marked `confirm` (an S3 store): have the server verify and record the chunk."""
        spec = {k: url[k] for k in ("hash", "size", "stored_size", "encoding")}
        return ok(self.post("/chunks/confirm", {"chunks": [spec]}))["missing"]

    def missing(self, hashes: list[str]) -> list[str]:
        return ok(self.post("/chunks/missing", {"hashes": hashes}))["missing"]

    def upload(self, chunks: list[bytes], encoding: str = "none") -> list[str]:
        """Upload whichever of these chunks the server says this user lacks, as a client does."""
        hashes = [sha(c) for c in chunks]
        lacking = set(self.missing(hashes))
        todo = list({sha(c): c for c in chunks if sha(c) in lacking}.values())
        if todo:
            for url, data in zip(self.upload_urls(todo, encoding), todo):
                stored = zstandard.ZstdCompressor().compress(data) if encoding == "zstd" else data
                r = self.put(url, stored)
                assert r.status_code == (200 if url.get("confirm") else 201), r.text
                if url.get("confirm"):
                    assert self.confirm(url) == []
        assert self.missing(hashes) == []
        return hashes

    def commit(self, parent: int, name: str, chunks: list[bytes] | bytes = b"", headers: dict | None = None,
               **extra) -> dict:
        """Upload and commit a new file whose content is `chunks` (or one chunk of bytes)."""
        chunks = _as_chunks(chunks)
        self.upload(chunks)
        body = {"parent_id": parent, "name": name, **_manifest(chunks), **extra}
        return ok(self.post("/files", body, headers=headers))

    def update(self, node: dict | int, chunks: list[bytes] | bytes, base: int | None = None, **extra) -> httpx.Response:
        """Upload and commit a new version of a file, based on `base` (default: its current version)."""
        node = self.node(node) if isinstance(node, int) else node
        chunks = _as_chunks(chunks)
        self.upload(chunks)
        base = node["version"] if base is None else base
        return self.post("/files", {"node_id": node["id"], "base_version": base, **_manifest(chunks), **extra})

    def read(self, node_id: int, version: int | None = None) -> bytes:
        """A version's bytes fetched the client's way: manifest, signed GET URLs, verified chunks."""
        version = version or self.node(node_id)["version"]
        detail = ok(self.get(f"/nodes/{node_id}/versions/{version}"))
        hashes = [c["hash"] for c in detail["manifest"]]
        if not hashes:
            return b""
        urls = ok(self.post("/chunks/download-urls", {"node_id": node_id, "version": version, "hashes": hashes}))
        by_hash = {u["hash"]: u for u in urls["urls"]}
        out = bytearray()
        for h in hashes:
            r = self.blob.get(by_hash[h]["url"])
            assert r.status_code == 200, r.text
            data = r.content
            if r.headers.get("x-drive-encoding", by_hash[h]["encoding"]) == "zstd":
                data = zstandard.ZstdDecompressor().decompress(data)
            assert sha(data) == h
            out += data
        return bytes(out)


def _as_chunks(chunks: list[bytes] | bytes) -> list[bytes]:
    if isinstance(chunks, bytes):
        return [chunks] if chunks else []
    return chunks


def _manifest(chunks: list[bytes]) -> dict:
    return {"manifest": [{"hash": sha(c), "size": len(c)} for c in chunks], "size": sum(map(len, chunks))}


@pytest.fixture
def make_drive(server: ServerProcess) -> Iterator[Callable[[], Drive]]:
    """A factory of new users on the session server, each with its own empty drive."""
    made: list[Drive] = []

    def make() -> Drive:
        d = Drive(server, *server.add_user())
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def alice(make_drive) -> Drive:
    return make_drive()


@pytest.fixture
def bob(make_drive) -> Drive:
    return make_drive()


@pytest.fixture(scope="module")
def mod_drive(server: ServerProcess) -> Iterator[Drive]:
    """One user shared by a module's tests, each of which works in its own folder (see `home`)."""
    d = Drive(server, *server.add_user())
    yield d
    d.close()


@pytest.fixture
def home(mod_drive: Drive) -> int:
    """A new empty folder of `mod_drive`, so tests sharing that user do not see each other."""
    return mod_drive.mkdir(mod_drive.root, unique("t"))["id"]


@dataclass
class ConfiguredServer(ServerProcess):
    """A server process started with extra `drive server` options (e.g. --url-ttl)."""

    args: tuple[str, ...] = ()

    def start(self, timeout: float = 20.0) -> None:
        real = server_fixture.drive_cmd

        def with_args(*a: str) -> list[str]:
            return real(*a, *self.args) if a and a[0] == "server" else real(*a)

        with mock.patch.object(server_fixture, "drive_cmd", with_args):
            super().start(timeout)


@pytest.fixture
def server_with(tmp_path: Path) -> Iterator[Callable[..., ConfiguredServer]]:
    """Start a server of the test's own with extra command-line options."""
    started: list[ConfiguredServer] = []

    def start(*args: str) -> ConfiguredServer:
        srv = ConfiguredServer(tmp_path / f"data{len(started)}", args=args)
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


def drive_on(server: ServerProcess, name: str | None = None) -> Drive:
    """A new user on a server of the test's own."""
    return Drive(server, *server.add_user(name))


def random_chunks(n: int, size: int = 1000) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]
