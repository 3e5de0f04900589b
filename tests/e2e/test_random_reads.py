"""Random reads of a cold file on a real mount fetch the 64 KiB blocks under them, not whole chunks, and
return the right bytes; a block the blob store serves damaged is refused."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import threading

import pytest

from tests.e2e.helpers import _client, server_node

BLOCK = 64 * 2**10
SIZE = 12 * 2**20 + 4321  # several chunks (1 MiB on average), the last one short


def _status(m) -> dict:
    return json.loads(m.drive("status", str(m.path), "--json").stdout)[0]


def _cold(m) -> None:
    """Unmount, lose the cache, mount again: nothing of the file is local."""
    m.unmount()
    shutil.rmtree(m.cache_dir)
    m.mount()


def _manifest(m, name: str) -> list[dict]:
    node = server_node(m.server.url, m.token, name)
    with _client(m.server.url, m.token) as c:
        return c.get(f"/api/v1/nodes/{node['id']}/versions/{node['version']}").json()["manifest"]


def test_random_reads_fetch_blocks_not_chunks(mount):
    data = random.Random(5).randbytes(SIZE)
    (mount.path / "big.bin").write_bytes(data)
    mount.flush()
    _cold(mount)
    assert _status(mount)["fetched_bytes"] == 0
    rng = random.Random(6)
    offsets = sorted({rng.randrange(0, SIZE // 4096) * 4096 for _ in range(40)})
    fd = os.open(mount.path / "big.bin", os.O_RDONLY)
    try:
        for off in offsets[::-1]:  # backwards: no read follows the one before it
            assert os.pread(fd, 4096, off) == data[off:off + 4096]
        fetched = _status(mount)["fetched_bytes"]
        # Each read needs one block (two where it straddles a chunk boundary); whole chunks would be ~1 MiB each.
        assert 0 < fetched <= 2 * len(offsets) * BLOCK
        assert fetched < SIZE // 4
        # the same reads again come from the blocks held: nothing more is fetched
        for off in offsets:
            assert os.pread(fd, 4096, off) == data[off:off + 4096]
        assert _status(mount)["fetched_bytes"] == fetched
    finally:
        os.close(fd)
    # Read through from the start: sequential reads fetch whole chunks, which replace the partial copies.
    assert (mount.path / "big.bin").read_bytes() == data
    chunks = mount.cache_dir / "chunks"
    assert not list(chunks.rglob("*.blocks"))
    manifest = _manifest(mount, "big.bin")
    assert {p.name for p in chunks.rglob("*") if p.is_file()} == {c["hash"] for c in manifest}


def test_a_damaged_block_is_refused_and_the_rest_of_the_chunk_reads(mount):
    data = random.Random(7).randbytes(SIZE)
    (mount.path / "d.bin").write_bytes(data)
    mount.flush()
    manifest = _manifest(mount, "d.bin")
    big = max(manifest, key=lambda c: c["size"])
    assert big["size"] > 3 * BLOCK
    stored = bytearray(mount.server.blob_get(big["hash"]))
    assert len(stored) == big["size"]  # random bytes are stored plain
    stored[BLOCK + 7] ^= 0xFF  # damage block 1 of that chunk in the blob store
    mount.server.blob_put(big["hash"], bytes(stored))
    try:
        _cold(mount)
        fd = os.open(mount.path / "d.bin", os.O_RDONLY)
        # No kernel read-ahead around these reads: each reaches the mount as the one page asked for.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        try:
            bad = big["offset"] + BLOCK + 100
            with pytest.raises(OSError) as exc:
                os.pread(fd, 4096, bad)
            assert exc.value.errno == errno.EIO
            last = (big["size"] - 1) // BLOCK
            good = big["offset"] + last * BLOCK  # another block of the same chunk is intact
            assert os.pread(fd, 4096, good) == data[good:good + 4096]
        finally:
            os.close(fd)
    finally:
        mount.server.blob_put(big["hash"], bytes(data[big["offset"]:big["offset"] + big["size"]]))


def test_readers_of_one_block_share_its_fetch(mount):
    data = random.Random(8).randbytes(SIZE)
    (mount.path / "s.bin").write_bytes(data)
    mount.flush()
    big = max(_manifest(mount, "s.bin"), key=lambda c: c["size"])
    _cold(mount)
    # eight pages of block 2 of that chunk, all inside the block, read at the same moment
    first_page = -(-(big["offset"] + 2 * BLOCK) // 4096) * 4096
    pages = [first_page + i * 4096 for i in range(8)]
    assert pages[-1] + 4096 <= big["offset"] + 3 * BLOCK
    barrier = threading.Barrier(len(pages))
    got: dict[int, bytes] = {}

    def read(off: int) -> None:
        fd = os.open(mount.path / "s.bin", os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            barrier.wait()
            got[off] = os.pread(fd, 4096, off)
        finally:
            os.close(fd)

    threads = [threading.Thread(target=read, args=(off,)) for off in pages]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[off] == data[off:off + 4096] for off in pages)
    assert _status(mount)["fetched_bytes"] == BLOCK  # one fetch of the block, whoever asked first
