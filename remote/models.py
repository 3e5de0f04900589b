"""What the client reads from the server, as frozen dataclasses built from the JSON answers.

Field names are exactly those of the server's wire format (its OpenAPI components of the same name;
tests/remote/test_models_match.py checks them against a running server). Keys the client does not
know are ignored, so a newer server does not break an older client.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Change",
    "Changes",
    "Listing",
    "ManifestEntry",
    "Me",
    "Node",
    "SignedUrl",
    "Share",
    "SharedItem",
    "SmallFile",
    "UploadChunk",
    "UploadSession",
    "Version",
    "VersionDetail",
]

Kind = Literal["dir", "file", "symlink"]
Access = Literal["owner", "write", "read"]
Permission = Literal["read", "write"]
Encoding = Literal["none", "zstd"]


@dataclass(frozen=True)
class Node:
    """A folder, file or symlink as the caller sees it; `access` is what the caller may do with it."""

    id: int
    parent_id: int | None
    owner: str
    name: str
    kind: Kind
    mode: int
    mtime_ns: int
    ctime_ns: int
    size: int
    version: int
    content_hash: str | None = None
    target: str | None = None
    deleted: bool = False
    access: Access = "owner"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Node:
        return cls(
            id=d["id"], parent_id=d["parent_id"], owner=d["owner"], name=d["name"], kind=d["kind"],
            mode=d["mode"], mtime_ns=d["mtime_ns"], ctime_ns=d["ctime_ns"], size=d["size"],
            version=d["version"], content_hash=d.get("content_hash"), target=d.get("target"),
            deleted=d.get("deleted", False), access=d.get("access", "owner"),
        )


@dataclass(frozen=True)
class Me:
    """The caller: their user id, name and the id of their root folder."""

    id: int
    name: str
    root_id: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Me:
        return cls(id=d["id"], name=d["name"], root_id=d["root_id"])


@dataclass(frozen=True)
class Listing:
    """One page of a folder's children (or of the trash); `next_cursor` is None on the last page."""

    entries: tuple[Node, ...]
    next_cursor: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Listing:
        return cls(entries=tuple(Node.from_json(n) for n in d["entries"]), next_cursor=d.get("next_cursor"))


@dataclass(frozen=True)
class ManifestEntry:
    """One chunk of a file version: its hash, plain size and offset in the file."""

    hash: str
    size: int
    offset: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ManifestEntry:
        return cls(hash=d["hash"], size=d["size"], offset=d["offset"])


@dataclass(frozen=True)
class Version:
    """One version of a file, without its manifest."""

    version: int
    size: int
    content_hash: str | None
    mode: int
    mtime_ns: int
    created_ns: int
    created_by: str
    device: str | None

    @classmethod
    def _fields_from(cls, d: dict[str, Any]) -> dict[str, Any]:
        return dict(version=d["version"], size=d["size"], content_hash=d.get("content_hash"), mode=d["mode"],
                    mtime_ns=d["mtime_ns"], created_ns=d["created_ns"], created_by=d["created_by"],
                    device=d.get("device"))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Version:
        return cls(**cls._fields_from(d))


@dataclass(frozen=True)
class VersionDetail(Version):
    """A version with its manifest: the ordered chunks that make up its bytes."""

    manifest: tuple[ManifestEntry, ...] = ()

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> VersionDetail:
        return cls(**cls._fields_from(d), manifest=tuple(ManifestEntry.from_json(m) for m in d["manifest"]))


@dataclass(frozen=True)
class SignedUrl:
    """A short-lived URL to PUT or GET one chunk in its stored form; `url` may be relative to the server."""

    hash: str
    url: str
    method: Literal["PUT", "GET"]
    size: int
    stored_size: int
    expires_at: float
    headers: dict[str, str] = field(default_factory=dict, hash=False)
    encoding: Encoding = "none"
    confirm: bool = False
    """After a successful PUT, the server must be asked to confirm the chunk (ApiClient.put_blob does)."""
    block_size: int | None = None
    block_hashes: tuple[str, ...] | None = field(default=None, hash=False)
    """Only when asked for and the chunk is stored plain: SHA-256 (hex) of each `block_size` block of its
    bytes, so that byte ranges of `url` can be fetched and verified alone (ApiClient.get_blob_range)."""

    def __repr__(self) -> str:
        # The query string is a credential: keep it out of reprs, logs and tracebacks.
        return (f"SignedUrl(hash={self.hash!r}, method={self.method!r}, url={self.url.split('?', 1)[0]!r}, "
                f"encoding={self.encoding!r}, size={self.size}, stored_size={self.stored_size})")

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SignedUrl:
        return cls(hash=d["hash"], url=d["url"], method=d["method"], size=d["size"], stored_size=d["stored_size"],
                   expires_at=d["expires_at"], headers=dict(d.get("headers") or {}),
                   encoding=d.get("encoding", "none"), confirm=bool(d.get("confirm", False)),
                   block_size=d.get("block_size"),
                   block_hashes=tuple(d["block_hashes"]) if d.get("block_hashes") is not None else None)


@dataclass(frozen=True)
class UploadChunk:
    """A chunk the client wants to upload (a request, not an answer): plain size, stored size and encoding."""

    hash: str
    size: int
    stored_size: int
    encoding: Encoding = "none"

    def to_json(self) -> dict[str, Any]:
        return {"hash": self.hash, "size": self.size, "stored_size": self.stored_size, "encoding": self.encoding}


@dataclass(frozen=True)
class SmallFile:
    """A whole file small enough to be sent inline (ApiClient.commit_small_files): a new one (parent_id +
    name) or a new version (node_id + base_version); `content` is its bytes, base64 on the wire."""

    content: bytes
    parent_id: int | None = None
    name: str | None = None
    node_id: int | None = None
    base_version: int | None = None
    mode: int = 0o644
    mtime_ns: int | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"mode": self.mode, "content": base64.b64encode(self.content).decode("ascii")}
        for key in ("parent_id", "name", "node_id", "base_version", "mtime_ns"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        return body


@dataclass(frozen=True)
class UploadSession:
    """A resumable upload: the chunks the server still lacks, and whether it was committed."""

    id: str
    missing: tuple[str, ...]
    expires_at: float
    committed: bool = False

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UploadSession:
        return cls(id=d["id"], missing=tuple(d["missing"]), expires_at=d["expires_at"],
                   committed=d.get("committed", False))


@dataclass(frozen=True)
class Share:
    """A node shared by its owner with a user, read-only or writable."""

    node_id: int
    owner: str
    user: str
    permission: Permission
    created_ns: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Share:
        return cls(node_id=d["node_id"], owner=d["owner"], user=d["user"], permission=d["permission"],
                   created_ns=d["created_ns"])


@dataclass(frozen=True)
class SharedItem:
    """Something shared with the caller: the share and the node it grants."""

    share: Share
    node: Node

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SharedItem:
        return cls(share=Share.from_json(d["share"]), node=Node.from_json(d["node"]))


@dataclass(frozen=True)
class Change:
    """One entry of the changes feed: what happened to which node, in journal order (`seq`)."""

    seq: int
    kind: Literal["create", "update", "move", "delete", "share", "unshare"]
    node: Node
    at_ns: int
    old_parent_id: int | None = None
    old_name: str | None = None
    device: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Change:
        return cls(seq=d["seq"], kind=d["kind"], node=Node.from_json(d["node"]), at_ns=d["at_ns"],
                   old_parent_id=d.get("old_parent_id"), old_name=d.get("old_name"), device=d.get("device"))


@dataclass(frozen=True)
class Changes:
    """A page of the changes feed; pass `cursor` to the next call, and call again at once if `has_more`."""

    changes: tuple[Change, ...]
    cursor: str
    has_more: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Changes:
        return cls(changes=tuple(Change.from_json(c) for c in d["changes"]), cursor=d["cursor"],
                   has_more=d["has_more"])
