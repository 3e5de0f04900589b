"""The API's request and response bodies: the one source of truth for the wire format (and the OpenAPI schema)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from . import limits

Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the chunk's plain bytes, hex")]
NodeId = Annotated[int, Field(ge=1, le=2**62)]
VersionNo = Annotated[int, Field(ge=1, le=2**62)]
Name = Annotated[str, Field(min_length=1, max_length=1024, description="checked by the naming rules")]
Mode = Annotated[int, Field(ge=0, le=limits.MODE_MASK)]
TimeNs = Annotated[int, Field(ge=0, le=2**63 - 1)]
Kind = Literal["dir", "file", "symlink"]
Access = Literal["owner", "write", "read"]
Permission = Literal["read", "write"]
Encoding = Literal["none", "zstd"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict = {}


class ErrorBody(BaseModel):
    error: ErrorDetail


class Node(BaseModel):
    id: int
    parent_id: int | None
    owner: str
    name: str
    kind: Kind
    mode: int
    mtime_ns: int
    ctime_ns: int
    size: int
    version: int = Field(description="current version of a file; 0 for folders and symlinks")
    content_hash: str | None = None
    target: str | None = Field(None, description="a symlink's target")
    deleted: bool = False
    access: Access = Field("owner", description="what the caller may do with it")


class Me(BaseModel):
    id: int
    name: str
    root_id: int


class FolderCreate(Strict):
    parent_id: NodeId
    name: Name
    mode: Mode = 0o755
    mtime_ns: TimeNs | None = None


class SymlinkCreate(Strict):
    parent_id: NodeId
    name: Name
    target: Annotated[str, Field(min_length=1, max_length=limits.MAX_SYMLINK_TARGET_BYTES)]
    mtime_ns: TimeNs | None = None


class ChunkSpec(Strict):
    hash: Hash
    size: Annotated[int, Field(ge=limits.MIN_CHUNK_BYTES, le=limits.MAX_CHUNK_BYTES)]


def _check_target(node_id: int | None, base_version: int | None, parent_id: int | None, name: str | None) -> None:
    """A file's content goes either to an existing file (node_id + base_version) or to a new one
    (parent_id + name)."""
    if (node_id is None) == (parent_id is None):
        raise ValueError("give either node_id (an existing file) or parent_id and name (a new one)")
    if parent_id is not None and name is None:
        raise ValueError("a new file needs a name")
    if node_id is not None and base_version is None:
        raise ValueError("a commit to an existing file needs base_version")


class SmallFile(Strict):
    """A whole small file sent inline, its bytes in base64 (at most MAX_SMALL_FILE_BYTES of them): a new
    file (parent_id + name) or a new version of one (node_id + base_version)."""

    node_id: NodeId | None = None
    base_version: Annotated[int, Field(ge=0, le=2**62)] | None = None
    parent_id: NodeId | None = None
    name: Name | None = None
    mode: Mode = 0o644
    mtime_ns: TimeNs | None = None
    content: Annotated[str, Field(max_length=4 * (limits.MAX_SMALL_FILE_BYTES // 3 + 1),
                                  description="the file's bytes, base64 (RFC 4648, with padding)")]

    _data: bytes = PrivateAttr(b"")  # `content` decoded, once, by the validator

    def data(self) -> bytes:
        return self._data

    @model_validator(mode="after")
    def _decodes(self) -> "SmallFile":
        _check_target(self.node_id, self.base_version, self.parent_id, self.name)
        try:
            self._data = base64.b64decode(self.content, validate=True)
        except binascii.Error:
            raise ValueError("content is not valid base64") from None
        if len(self._data) > limits.MAX_SMALL_FILE_BYTES:
            raise ValueError(f"an inline file is at most {limits.MAX_SMALL_FILE_BYTES} bytes; upload larger "
                             "ones through /uploads")
        return self


class SmallFiles(Strict):
    """Several small files, each committed on its own (one failing does not stop the others)."""

    files: Annotated[list[SmallFile], Field(min_length=1, max_length=limits.MAX_SMALL_FILES)]

    @model_validator(mode="after")
    def _total(self) -> "SmallFiles":
        if sum(len(f.content) for f in self.files) > 4 * (limits.MAX_SMALL_FILES_BYTES // 3 + 1):
            raise ValueError(f"inline files carry at most {limits.MAX_SMALL_FILES_BYTES} bytes per request")
        return self


class SmallFileResult(BaseModel):
    """The node made for one file, or why it was refused (status and error as a whole request's would be)."""

    node: Node | None = None
    status: int | None = None
    error: ErrorDetail | None = None


class SmallFilesAnswer(BaseModel):
    results: list[SmallFileResult] = Field(description="one per file, in the order sent")


class ManifestEntry(BaseModel):
    hash: str
    size: int
    offset: int


class FileCommit(Strict):
    """A new version of a file: either of an existing file (node_id + base_version) or a new one (parent_id + name)."""

    node_id: NodeId | None = None
    base_version: Annotated[int, Field(ge=0, le=2**62)] | None = None
    parent_id: NodeId | None = None
    name: Name | None = None
    manifest: Annotated[list[ChunkSpec], Field(max_length=limits.MAX_MANIFEST_CHUNKS)]
    size: Annotated[int, Field(ge=0, le=limits.MAX_FILE_BYTES)]
    mode: Mode = 0o644
    mtime_ns: TimeNs | None = None
    content_hash: Hash | None = Field(None, description=(
        "the client's content hash, stored as given: the SHA-256 of the bytes of an empty or one-chunk "
        "file, else the SHA-256 of a prefix and each chunk's binary hash and 8-byte size (cache/chunker.py)"))
    device: Annotated[str, Field(max_length=255)] | None = None

    @model_validator(mode="after")
    def _target_and_size(self) -> "FileCommit":
        _check_target(self.node_id, self.base_version, self.parent_id, self.name)
        if sum(c.size for c in self.manifest) != self.size:
            raise ValueError("size must equal the sum of the manifest's chunk sizes")
        return self


class Move(Strict):
    parent_id: NodeId
    name: Name
    replace: bool = Field(True, description="replace an existing target as rename(2) does; false = RENAME_NOREPLACE")


class AttrUpdate(Strict):
    mode: Mode | None = None
    mtime_ns: TimeNs | None = None


class Restore(Strict):
    name: Name | None = Field(None, description="restore under this name instead of the original")


class Listing(BaseModel):
    entries: list[Node]
    next_cursor: str | None


class Version(BaseModel):
    version: int
    size: int
    content_hash: str | None
    mode: int
    mtime_ns: int
    created_ns: int
    created_by: str
    device: str | None


class VersionDetail(Version):
    manifest: list[ManifestEntry]


class VersionList(BaseModel):
    versions: list[Version]


class MissingQuery(Strict):
    hashes: Annotated[list[Hash], Field(max_length=limits.MAX_BATCH)]


class MissingAnswer(BaseModel):
    missing: list[str]


class UploadChunk(Strict):
    hash: Hash
    size: Annotated[int, Field(ge=limits.MIN_CHUNK_BYTES, le=limits.MAX_CHUNK_BYTES)]
    stored_size: Annotated[int, Field(ge=1, le=limits.MAX_STORED_CHUNK_BYTES)]
    encoding: Encoding = "none"

    @model_validator(mode="after")
    def _plain_size(self) -> "UploadChunk":
        if self.encoding == "none" and self.stored_size != self.size:
            raise ValueError("an uncompressed chunk's stored_size must equal its size")
        return self


class UploadUrlQuery(Strict):
    chunks: Annotated[list[UploadChunk], Field(max_length=limits.MAX_BATCH)]


class SignedUrl(BaseModel):
    hash: str
    url: str
    method: Literal["PUT", "GET"]
    headers: dict[str, str] = {}
    encoding: Encoding = "none"
    size: int
    stored_size: int
    expires_at: float
    confirm: bool = Field(False, description="after a successful PUT, POST this chunk to /chunks/confirm: "
                                             "the store cannot check uploads itself, so the server does")
    block_size: int | None = Field(None, description="with block_hashes: the size of each block but the last")
    block_hashes: list[str] | None = Field(
        None, description="only when asked for (DownloadUrlQuery.blocks) and the chunk is stored plain: SHA-256 "
                          "(hex) of each block_size block of its bytes, so byte ranges of the URL "
                          "(Range: bytes=a-b) can be fetched and verified alone")


class SignedUrls(BaseModel):
    urls: list[SignedUrl]


class ConfirmQuery(Strict):
    """Chunks just PUT through URLs that asked for confirmation, as they were announced for those URLs."""

    chunks: Annotated[list[UploadChunk], Field(max_length=limits.MAX_CONFIRM)]


class DownloadUrlQuery(Strict):
    node_id: NodeId
    version: VersionNo
    hashes: Annotated[list[Hash], Field(max_length=limits.MAX_BATCH)]
    blocks: bool = Field(False, description="also answer each chunk's block hashes where it can be fetched in ranges")


class UploadSession(BaseModel):
    id: str
    missing: list[str]
    expires_at: float
    committed: bool = False


class ShareCreate(Strict):
    user: Annotated[str, Field(min_length=1, max_length=255)]
    permission: Permission = "read"


class Share(BaseModel):
    node_id: int
    owner: str
    user: str
    permission: Permission
    created_ns: int


class ShareList(BaseModel):
    shares: list[Share]


class SharedItem(BaseModel):
    share: Share
    node: Node


class SharedItems(BaseModel):
    items: list[SharedItem]


ChangeKind = Literal["create", "update", "move", "delete", "share", "unshare"]


class Change(BaseModel):
    seq: int
    kind: ChangeKind
    node: Node
    old_parent_id: int | None = None
    old_name: str | None = None
    device: str | None = None
    at_ns: int


class Changes(BaseModel):
    changes: list[Change]
    cursor: str
    has_more: bool


class Cursor(BaseModel):
    cursor: str


class Health(BaseModel):
    status: Literal["ok"]
    version: str
