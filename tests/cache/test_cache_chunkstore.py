"""ChunkStore: atomic puts, and corrupt or truncated chunk files are never served."""

import os
import random

import pytest

import cache.chunkstore
from cache.chunker import hash_bytes
from cache.chunkstore import TEMP_MARKER, ChunkStore


def make_chunk(size: int = 300_000, seed: int = 0) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    return hash_bytes(data), data


def flip_byte(path, position: int) -> None:
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0xFF]))


def files_under(root) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.is_file())


def test_put_get_round_trip_and_layout(tmp_path):
    store = ChunkStore(tmp_path)
    hash, data = make_chunk()
    assert store.get(hash) is None
    assert not store.exists(hash)

    store.put(hash, data)

    assert store.path(hash) == tmp_path / "chunks" / hash[:2] / hash
    assert store.path(hash).read_bytes() == data
    assert store.exists(hash)
    assert store.get(hash) == data
    assert files_under(store.root) == [hash]  # no temp file left behind


def test_put_rejects_bytes_that_do_not_match_the_hash(tmp_path):
    store = ChunkStore(tmp_path)
    hash, data = make_chunk()
    with pytest.raises(ValueError):
        store.put(hash, data + b"x")
    assert not store.exists(hash)
    assert files_under(store.root) == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "ab", "A" * 64, "g" * 64, ""])
def test_names_that_are_not_hashes_are_refused(tmp_path, name):
    store = ChunkStore(tmp_path)
    with pytest.raises(ValueError):
        store.path(name)


def test_put_is_idempotent(tmp_path):
    store = ChunkStore(tmp_path)
    hash, data = make_chunk()
    store.put(hash, data)
    store.put(hash, data)
    assert store.get(hash) == data
    assert files_under(store.root) == [hash]


@pytest.mark.parametrize(
    "damage",
    [
        lambda path: flip_byte(path, 123_456),
        lambda path: os.truncate(path, 1000),
        lambda path: os.truncate(path, 0),
        lambda path: path.write_bytes(path.read_bytes() + b"tail"),
    ],
    ids=["flipped", "truncated", "emptied", "extended"],
)
def test_damaged_chunk_is_removed_not_served(tmp_path, damage):
    store = ChunkStore(tmp_path)
    hash, data = make_chunk()
    store.put(hash, data)
    damage(store.path(hash))

    assert store.get(hash) is None
    assert not store.path(hash).exists()
    assert store.get(hash) is None


def test_delete(tmp_path):
    store = ChunkStore(tmp_path)
    hash, data = make_chunk()
    store.put(hash, data)
    store.delete(hash)
    assert not store.exists(hash)
    store.delete(hash)  # deleting what is gone is fine


def test_read_range_returns_the_requested_slice(tmp_path):
    store = ChunkStore(tmp_path)
    hash, data = make_chunk()
    store.put(hash, data)
    assert store.read_range(hash, 0, 10) == data[:10]
    assert store.read_range(hash, 1000, 4096) == data[1000:5096]
    assert store.read_range(hash, len(data) - 5, 100) == data[-5:]
    assert store.read_range(hash, len(data) + 10, 100) == b""
    with pytest.raises(ValueError):
        store.read_range(hash, -1, 10)


def test_read_range_of_missing_chunk_is_none(tmp_path):
    store = ChunkStore(tmp_path)
    hash, _data = make_chunk()
    assert store.read_range(hash, 0, 10) is None


def test_read_range_on_a_corrupt_chunk_is_none_and_removes_it(tmp_path):
    store = ChunkStore(tmp_path)
    hash, data = make_chunk()
    store.put(hash, data)
    flip_byte(store.path(hash), len(data) - 1)
    # The damaged byte is far from the requested range: the whole chunk is still checked.
    assert store.read_range(hash, 0, 10) is None
    assert not store.exists(hash)


def test_repeated_small_reads_hash_the_chunk_once(tmp_path, monkeypatch):
    store = ChunkStore(tmp_path)
    hash, data = make_chunk()
    store.put(hash, data)
    calls = []
    real_hash = cache.chunkstore.hash_bytes
    monkeypatch.setattr(cache.chunkstore, "hash_bytes", lambda b: calls.append(len(b)) or real_hash(b))

    for offset in range(0, 200_000, 4096):
        assert store.read_range(hash, offset, 4096) == data[offset : offset + 4096]
    assert calls == [len(data)]


def test_a_chunk_file_that_changed_size_is_verified_again(tmp_path):
    store = ChunkStore(tmp_path)
    hash, data = make_chunk()
    store.put(hash, data)
    assert store.read_range(hash, 0, 10) == data[:10]

    os.truncate(store.path(hash), len(data) // 2)

    assert store.read_range(hash, 0, 10) is None
    assert not store.exists(hash)


def test_a_rewritten_chunk_file_is_verified_again(tmp_path):
    store = ChunkStore(tmp_path)
    hash, data = make_chunk()
    store.put(hash, data)
    assert store.read_range(hash, 0, 10) == data[:10]

    # Same size, new inode (as any tool that rewrites a file via rename would leave it).
    damaged = bytearray(data)
    damaged[5] ^= 0xFF
    replacement = store.path(hash).with_name("replacement")
    replacement.write_bytes(damaged)
    os.replace(replacement, store.path(hash))

    assert store.read_range(hash, 0, 10) is None
    assert not store.exists(hash)


def test_scan_reports_chunks_and_strays(tmp_path):
    store = ChunkStore(tmp_path)
    hash, data = make_chunk()
    store.put(hash, data)
    stray = store.path(hash).with_name(hash + TEMP_MARKER + "abc")
    stray.write_bytes(b"partial")

    entries = {entry.name: entry for entry in store.scan()}

    assert set(entries) == {hash, stray.name}
    assert entries[hash].size == len(data)
    assert store.is_well_placed(entries[hash])
    assert not store.is_well_placed(entries[stray.name])


@pytest.mark.parametrize("durable", [False, True])
def test_only_durable_puts_fsync(tmp_path, monkeypatch, durable):
    store = ChunkStore(tmp_path)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    hash, data = make_chunk()
    store.put(hash, data, durable=durable)
    assert store.get(hash) == data
    # The file and its directory, or nothing at all.
    assert len(synced) == (2 if durable else 0)
