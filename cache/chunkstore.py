"""Keeps chunk bytes as plain files on local disk and never hands out bytes that fail their hash."""

from __future__ import annotations

import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cache.chunker import hash_bytes, is_chunk_hash

__all__ = ["PARTIAL_SUFFIX", "TEMP_MARKER", "ChunkStore", "StoreEntry"]

# Temp files carry this in their name so that reconciliation can tell them from chunk files.
TEMP_MARKER = ".tmp-"

# A partial chunk (some blocks fetched by range) lives at <chunk path> + this until it is complete.
PARTIAL_SUFFIX = ".blocks"

# Enough to cover the chunks behind every open file's read-ahead window; each entry is ~100 bytes.
_VERIFIED_MEMO_SIZE = 4096


@dataclass(frozen=True)
class StoreEntry:
    """One file found under the chunks directory by a scan."""

    path: Path
    name: str
    size: int


@dataclass(frozen=True)
class _FileIdentity:
    # A rewritten or truncated file differs in at least one of these, so it gets hashed again.
    hash: str
    inode: int
    size: int
    mtime_ns: int


class ChunkStore:
    """Chunk files at `<cache_dir>/chunks/<hash[:2]>/<hash>`, each holding the plain bytes of one chunk."""

    def __init__(self, cache_dir: str | os.PathLike[str]) -> None:
        self.root = Path(cache_dir) / "chunks"
        self.root.mkdir(parents=True, exist_ok=True)
        # hash -> identity of the file last hashed successfully; one chunk has one file, so one entry.
        self._verified: OrderedDict[str, _FileIdentity] = OrderedDict()
        self._verified_lock = threading.Lock()

    def path(self, hash: str) -> Path:
        """Where the chunk named `hash` lives (whether or not it exists)."""
        if not is_chunk_hash(hash):
            raise ValueError(f"not a chunk hash: {hash!r}")
        return self.root / hash[:2] / hash

    def exists(self, hash: str) -> bool:
        return self.path(hash).is_file()

    def put(self, hash: str, data: bytes | bytearray, *, durable: bool = False, verified: bool = False) -> None:
        """Store `data` as chunk `hash` atomically; ValueError if the bytes do not match the name.

        By default there is no fsync: a re-fetchable chunk lost to a power cut is only a cache miss,
        and the rename never exposes a half-written file under the chunk's name. Pass durable=True
        when this file is the only copy (dirty data not yet uploaded). Pass verified=True only when the
        caller has just checked that `data` hashes to `hash` (e.g. a chunk just downloaded): it is not
        hashed again, and the new file counts as verified, so its first read is not hashed either.
        """
        if not verified and hash_bytes(data) != hash:
            raise ValueError(f"chunk data does not match its hash {hash}")
        target = self.path(hash)
        target.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=hash + TEMP_MARKER)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if durable:
                    os.fsync(f.fileno())
                identity = self._identity(hash, f.fileno())
            os.replace(tmp, target)
        except BaseException:
            _unlink_quietly(Path(tmp))
            raise
        if durable:
            _fsync_dir(target.parent)
        if verified:
            self._remember(identity)

    def get(self, hash: str) -> bytes | None:
        """The chunk's bytes, or None if absent or corrupt (a corrupt file is deleted: refetch it)."""
        try:
            with open(self.path(hash), "rb") as f:
                identity = self._identity(hash, f.fileno())
                data = f.read()
        except FileNotFoundError:
            return None
        if hash_bytes(data) != hash:
            self.delete(hash)
            return None
        self._remember(identity)
        return data

    def read_range(self, hash: str, offset: int, length: int) -> bytes | None:
        """Up to `length` bytes of the chunk from `offset`, or None if absent or corrupt (then deleted).

        The whole chunk is hashed on the first read of a given file; later reads of the same unchanged
        file trust that, so that many small reads do not rehash up to 4 MiB each.
        """
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        try:
            fd = os.open(self.path(hash), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            identity = self._identity(hash, fd)
            if not self._is_verified(identity):
                data = _read_all(fd, identity.size)
                if hash_bytes(data) != hash:
                    self.delete(hash)
                    return None
                self._remember(identity)
                return data[offset : offset + length]
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    # ---- partial chunks: a file of the chunk's full length holding only some blocks (sparse elsewhere) ----
    # Which blocks are valid is the index's business (cache/chunkcache.py); these only move bytes.

    def partial_path(self, hash: str) -> Path:
        return self.path(hash).with_name(hash + PARTIAL_SUFFIX)

    def write_partial(self, hash: str, size: int, offset: int, data: bytes | memoryview) -> None:
        """Write verified block bytes at `offset` of the chunk's partial file, creating it `size` long.

        No fsync: the index marks blocks present only after this returns, and every read of a partial
        file checks its blocks again, so bytes lost to a power cut are only a miss."""
        path = self.partial_path(hash)
        path.parent.mkdir(exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, offset)
                view, offset = view[n:], offset + n
        finally:
            os.close(fd)

    def read_partial(self, hash: str, offset: int, length: int) -> bytes | None:
        """Bytes of the partial file as they are (the caller checks them), or None if there is none."""
        try:
            fd = os.open(self.partial_path(hash), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            return _read_all(fd, length, offset)
        finally:
            os.close(fd)

    def promote_partial(self, hash: str) -> bool:
        """Make a partial file whose blocks are all present the chunk's file, if it hashes to the chunk's
        name (False, and the partial file is gone, if it does not)."""
        partial = self.partial_path(hash)
        try:
            fd = os.open(partial, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            identity = self._identity(hash, fd)
            data = _read_all(fd, identity.size)
        finally:
            os.close(fd)
        if hash_bytes(data) != hash:
            _unlink_quietly(partial)
            return False
        os.replace(partial, self.path(hash))
        self._remember(identity)
        return True

    def delete_partial(self, hash: str) -> None:
        _unlink_quietly(self.partial_path(hash))

    def partial_of(self, entry: StoreEntry) -> str | None:
        """The chunk a scanned file is the partial file of, or None."""
        name = entry.name.removesuffix(PARTIAL_SUFFIX)
        if name == entry.name or not is_chunk_hash(name) or entry.path != self.partial_path(name):
            return None
        return name

    def delete(self, hash: str) -> None:
        """Remove the chunk file if present."""
        _unlink_quietly(self.path(hash))
        with self._verified_lock:
            self._verified.pop(hash, None)

    def scan(self) -> Iterator[StoreEntry]:
        """Every regular file under the chunks directory, chunk files and stray ones alike."""
        for subdir in sorted(self.root.iterdir()):
            if not subdir.is_dir():
                yield from _entry_of(subdir)
                continue
            for file in sorted(subdir.iterdir()):
                yield from _entry_of(file)

    def is_well_placed(self, entry: StoreEntry) -> bool:
        """True if the scanned file sits where a chunk named like it belongs."""
        return is_chunk_hash(entry.name) and entry.path == self.path(entry.name)

    def _identity(self, hash: str, fd: int) -> _FileIdentity:
        st = os.fstat(fd)
        return _FileIdentity(hash=hash, inode=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)

    def _is_verified(self, identity: _FileIdentity) -> bool:
        with self._verified_lock:
            if self._verified.get(identity.hash) == identity:
                self._verified.move_to_end(identity.hash)
                return True
            return False

    def _remember(self, identity: _FileIdentity) -> None:
        with self._verified_lock:
            self._verified[identity.hash] = identity
            self._verified.move_to_end(identity.hash)
            while len(self._verified) > _VERIFIED_MEMO_SIZE:
                self._verified.popitem(last=False)


def _read_all(fd: int, size: int, start: int = 0) -> bytes:
    # pread may return short on some filesystems; the result must be the whole file or the hash check fails.
    parts = []
    offset = start
    while offset < start + size:
        part = os.pread(fd, start + size - offset, offset)
        if not part:
            break
        parts.append(part)
        offset += len(part)
    return b"".join(parts)


def _fsync_dir(path: Path) -> None:
    # The rename itself is only durable once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entry_of(path: Path) -> Iterator[StoreEntry]:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if path.is_file() and not path.is_symlink():
        yield StoreEntry(path=path, name=path.name, size=st.st_size)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
