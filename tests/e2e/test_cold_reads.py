"""A cold sequential read on a real mount: every chunk fetched once and stored in the chunk cache, the
reads answered with the right bytes (just-fetched chunks come from memory), and the signed URLs of the
chunks ahead asked for in one request, not one per read-ahead batch.

The mount talks to the server through the fault-injecting proxy, which only counts requests here.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest

from cache.chunker import MIN_CHUNK
from tests.fixtures.faultproxy import mount_through_proxy

SIZE = 12 * 2**20 + 4321  # about a dozen chunks (1 MiB on average), the last one short
URLS = r"^POST /api/v1/chunks/download-urls$"


@pytest.fixture
def proxied(fresh_server, tmp_path):
    with mount_through_proxy(fresh_server, tmp_path / "a") as (proxy, mount):
        yield proxy, mount


def test_cold_sequential_read_fetches_each_chunk_once_with_one_url_request(proxied):
    proxy, m = proxied
    data = random.Random(11).randbytes(SIZE)
    (m.path / "big.bin").write_bytes(data)
    m.flush()
    m.unmount()
    shutil.rmtree(m.cache_dir)
    m.mount()
    urls = proxy.add(URLS)  # counts only

    with open(m.path / "big.bin", "rb") as f:
        got = b"".join(iter(lambda: f.read(256 * 2**10), b""))
    assert got == data

    status = json.loads(m.drive("status", str(m.path), "--json").stdout)[0]
    # No chunk twice. The kernel sends its first reads of a file concurrently, and one that arrives before
    # the read it follows looks random to the reader, which fetches a block or two of 64 KiB by range
    # (then the whole chunk): less than the smallest chunk (256 KiB) in all.
    assert SIZE <= status["fetched_bytes"] < SIZE + MIN_CHUNK
    assert urls.hits == 1  # the first read's request brought the URLs of all the chunks after it
    stored = [p for p in (m.cache_dir / "chunks").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in stored) == SIZE  # every chunk is in the cache too
    assert not [p for p in stored if ".tmp-" in p.name or p.name.endswith(".blocks")]
