"""What the reliability tests share: their knobs, views of a drive through a mount and through the
server's API, and waiting for things to settle.

Knobs (environment variables; `scripts/soak` raises them):

- RELIABILITY_SEED: the seed of every random choice (default 20261121); failures print it.
- RELIABILITY_KILL_POINTS: kill -9 rounds of the crash test (default 20).
- RELIABILITY_OUTAGE_S: how long the blob store stays unavailable (default 8; the soak uses 30).
- RELIABILITY_FAULT_OPS: operations of the dropped/delayed-responses workload (default 40).
- RELIABILITY_FUZZ_EXAMPLES: Hypothesis examples per property (default 60).
- RELIABILITY_CONCURRENCY_S: how long the concurrent workers run (default 6).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import zstandard

from cache.chunker import chunk_views, content_hash
from tests.fixtures.mount import MountProcess


def knob(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


SEED = int(knob("RELIABILITY_SEED", 20261121))
KILL_POINTS = int(knob("RELIABILITY_KILL_POINTS", 20))
OUTAGE_S = knob("RELIABILITY_OUTAGE_S", 8.0)
FAULT_OPS = int(knob("RELIABILITY_FAULT_OPS", 40))
FUZZ_EXAMPLES = int(knob("RELIABILITY_FUZZ_EXAMPLES", 60))
CONCURRENCY_S = knob("RELIABILITY_CONCURRENCY_S", 6.0)

SHARED = "Shared with me"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def content_sha(data: bytes) -> str:
    """The content hash the server records for a version with these bytes."""
    return content_hash([ref for ref, _view in chunk_views(io.BytesIO(data))])


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll `check` until it returns something true (returned); AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (OSError, httpx.HTTPError, AssertionError, subprocess.SubprocessError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}" + (f" (last error: {last})" if last else ""))
        time.sleep(interval)


def status(m: MountProcess) -> dict:
    """`drive status --json` of one mount."""
    out = m.drive("status", str(m.path), "--json", check=False)
    try:
        return json.loads(out.stdout)[0]
    except (ValueError, IndexError):
        raise AssertionError(f"drive status --json printed {out.stdout!r}; stderr {out.stderr!r}") from None


def flush_until_ok(m: MountProcess, timeout: float = 60.0) -> None:
    """`drive flush` until it reports every change committed (it gives up early while the server is away)."""
    def ok() -> bool:
        return m.drive("flush", str(m.path), check=False, timeout=timeout).returncode == 0
    wait_for(ok, timeout, f"drive flush of {m.path} succeeds", interval=0.5)


# ---- a drive through a mount ----

def mount_tree(root: Path) -> dict[str, str]:
    """Every folder ('dir') and file (sha256 of its bytes) under a mount, by relative path; symlinks as
    'link:TARGET'. 'Shared with me' is left out."""
    out: dict[str, str] = {}

    def walk(d: Path, rel: str) -> None:
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            path = f"{rel}{entry.name}"
            if not rel and entry.name == SHARED:
                continue
            if entry.is_symlink():
                out[path] = "link:" + os.readlink(entry.path)
            elif entry.is_dir():
                out[path] = "dir"
                walk(Path(entry.path), path + "/")
            else:
                with open(entry.path, "rb") as f:
                    out[path] = sha(f.read())

    walk(root, "")
    return out


# ---- the same drive through the server's API ----

class ServerView:
    """Reads one user's drive straight from the server, verifying every chunk it downloads."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.blobs = httpx.Client(timeout=30)  # signed blob URLs carry no token

    def close(self) -> None:
        self.http.close()
        self.blobs.close()

    def __enter__(self) -> ServerView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, path: str, **params: Any) -> Any:
        r = self.http.get("/api/v1" + path, params=params or None)
        r.raise_for_status()
        return r.json()

    def root_id(self) -> int:
        return self._get("/me")["root_id"]

    def children(self, node_id: int) -> list[dict]:
        out, cursor = [], None
        while True:
            page = self._get(f"/nodes/{node_id}/children", limit=1000, **({"cursor": cursor} if cursor else {}))
            out += page["entries"]
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def nodes(self) -> dict[str, dict]:
        """Every live node under the root, by relative path."""
        out: dict[str, dict] = {}

        def walk(node_id: int, rel: str) -> None:
            for node in self.children(node_id):
                path = rel + node["name"]
                out[path] = node
                if node["kind"] == "dir":
                    walk(node["id"], path + "/")

        walk(self.root_id(), "")
        return out

    def content(self, node: dict, version: int | None = None) -> bytes:
        """A file version's bytes (default: the current one), each chunk checked against its hash."""
        version = version or node["version"]
        detail = self._get(f"/nodes/{node['id']}/versions/{version}")
        hashes = [m["hash"] for m in detail["manifest"]]
        if not hashes:
            return b""
        r = self.http.post("/api/v1/chunks/download-urls",
                           json={"node_id": node["id"], "version": version, "hashes": list(dict.fromkeys(hashes))})
        r.raise_for_status()
        blobs: dict[str, bytes] = {}
        for u in r.json()["urls"]:
            r = self.blobs.get(self.url + u["url"] if u["url"].startswith("/") else u["url"])
            r.raise_for_status()
            body = r.content
            if u["encoding"] == "zstd":
                body = zstandard.ZstdDecompressor().decompress(body, max_output_size=u["size"])
            assert sha(body) == u["hash"], f"chunk {u['hash']} of {node['name']!r} is damaged on the server"
            blobs[u["hash"]] = body
        data = b"".join(blobs[h] for h in hashes)
        assert len(data) == detail["size"], f"{node['name']!r} version {version}: size does not match its manifest"
        return data

    def versions(self, node: dict) -> list[dict]:
        return self._get(f"/nodes/{node['id']}/versions")["versions"]

    def tree(self) -> dict[str, str]:
        """The same shape as mount_tree, from the server."""
        out: dict[str, str] = {}
        for path, node in self.nodes().items():
            if node["kind"] == "dir":
                out[path] = "dir"
            elif node["kind"] == "symlink":
                out[path] = "link:" + (node.get("target") or "")
            else:
                out[path] = sha(self.content(node))
        return out

    def files(self) -> dict[str, bytes]:
        """Every file's current bytes, by relative path."""
        return {path: self.content(node) for path, node in self.nodes().items() if node["kind"] == "file"}


def converge(mounts: list[MountProcess], view: ServerView, timeout: float = 30.0) -> dict[str, str]:
    """Wait until every mount shows exactly the server's tree (listing and bytes); return that tree."""
    state: dict[str, Any] = {}

    def same() -> bool:
        server = view.tree()
        state["server"] = server
        agree = True
        for m in mounts:  # every mount, so that a failure reports each one's difference
            try:
                seen = mount_tree(m.path)
            except OSError as e:
                seen = {"(listing failed)": str(e)}
            state[m.device] = seen
            agree = agree and seen == server
        return agree

    try:
        wait_for(same, timeout, "mounts agree with the server", interval=0.3)
    except AssertionError:
        server = state.get("server", {})
        diffs = []
        for m in mounts:
            seen = state.get(m.device, {})
            diffs.append(f"{m.device}: only on the mount {sorted(set(seen) - set(server))}, only on the server "
                         f"{sorted(set(server) - set(seen))}, different "
                         f"{sorted(p for p in set(seen) & set(server) if seen[p] != server[p])}")
        raise AssertionError("mounts do not converge to the server's tree: " + "; ".join(diffs)) from None
    return state["server"]


@contextmanager
def two_devices(server: Any, root: Path, token_user: tuple[str, str], label: str,
                a_server: Any = None) -> Iterator[tuple[MountProcess, MountProcess, "ServerView"]]:
    """One account mounted as devices `<label>A` (through `a_server`, default `server`) and `<label>B`,
    plus a ServerView of it; all closed and unmounted afterwards."""
    name, token = token_user
    a = MountProcess(a_server or server, name, token, root / "a", device=f"{label}A")
    b = MountProcess(server, name, token, root / "b", device=f"{label}B")
    view = ServerView(server.url, token)
    try:
        a.mount()
        b.mount()
        yield a, b, view
    finally:
        view.close()
        a.cleanup()
        b.cleanup()
