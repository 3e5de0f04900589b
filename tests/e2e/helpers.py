"""Looking at the server directly (not through a mount) to check what really reached it."""

from __future__ import annotations

import hashlib

import httpx
import zstandard


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def server_node(url: str, token: str, path: str) -> dict:
    with _client(url, token) as c:
        r = c.get("/api/v1/resolve", params={"path": path})
        r.raise_for_status()
        return r.json()


def server_listing(url: str, token: str, path: str) -> list[str]:
    node = server_node(url, token, path)
    with _client(url, token) as c:
        r = c.get(f"/api/v1/nodes/{node['id']}/children", params={"limit": 5000})
        r.raise_for_status()
        return sorted(e["name"] for e in r.json()["entries"])


def download(url: str, token: str, path: str) -> bytes:
    """The bytes of a file's current version, verified chunk by chunk."""
    node = server_node(url, token, path)
    with _client(url, token) as c:
        detail = c.get(f"/api/v1/nodes/{node['id']}/versions/{node['version']}").json()
        hashes = [m["hash"] for m in detail["manifest"]]
        out = bytearray()
        if not hashes:
            return b""
        urls = c.post("/api/v1/chunks/download-urls",
                      json={"node_id": node["id"], "version": node["version"], "hashes": list(dict.fromkeys(hashes))})
        urls.raise_for_status()
        by_hash = {u["hash"]: u for u in urls.json()["urls"]}
        for h in hashes:
            u = by_hash[h]
            body = httpx.get(url + u["url"] if u["url"].startswith("/") else u["url"], timeout=30).content
            if u["encoding"] == "zstd":
                body = zstandard.ZstdDecompressor().decompress(body, max_output_size=u["size"])
            assert hashlib.sha256(body).hexdigest() == h
            out += body
        return bytes(out)
