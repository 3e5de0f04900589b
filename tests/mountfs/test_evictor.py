"""The evictor keeps cache use under the limit without ever dropping data the server lacks."""

from __future__ import annotations

import os

from cache.chunkcache import ChunkCache
from cache.chunker import hash_bytes
from cache.index import Index
from cache.tree import ROOT_INODE, Tree
from mountfs.evictor import Evictor

MiB = 2**20


def _setup(tmp_path, limit):
    index = Index(tmp_path / "index.db")
    tree = Tree(index, tmp_path / "files")
    tree.ensure_roots(1)
    chunks = ChunkCache(tmp_path, index, limit=limit)
    return index, tree, chunks


def _local_file(tree, name, size, *, node_id, dirty=False):
    e = tree.add(ROOT_INODE, name, "file", 0o644, node_id=node_id, local_data=True)
    tree.data_path(e.inode).write_bytes(os.urandom(size))
    return tree.update(e.inode, content_gen=2 if dirty else 1, synced_gen=1)


def test_drops_clean_closed_copies_first_and_never_dirty_or_open(tmp_path):
    index, tree, chunks = _setup(tmp_path, limit=3 * MiB)
    old = _local_file(tree, "old", 2 * MiB, node_id=10)
    os.utime(tree.data_path(old.inode), ns=(1, 1))  # least recently used
    dirty = _local_file(tree, "dirty", 2 * MiB, node_id=11, dirty=True)
    unsynced = _local_file(tree, "new", 1 * MiB, node_id=None)
    opened = _local_file(tree, "open", 1 * MiB, node_id=12)
    ev = Evictor(tree, chunks, 3 * MiB, has_handles=lambda inode: inode == opened.inode)
    report = ev.run_once()
    assert report.files_dropped == 1
    assert not tree.get(old.inode).local_data and not tree.data_path(old.inode).exists()
    for keep in (dirty, unsynced, opened):
        assert tree.get(keep.inode).local_data and tree.data_path(keep.inode).exists()
    index.close()


def test_chunks_share_the_limit_with_local_copies(tmp_path):
    index, tree, chunks = _setup(tmp_path, limit=2 * MiB)
    _local_file(tree, "dirty", 1 * MiB + 512 * 1024, node_id=5, dirty=True)
    for _ in range(4):
        data = os.urandom(256 * 1024)
        chunks.put(hash_bytes(data), data)
    ev = Evictor(tree, chunks, 2 * MiB, has_handles=lambda inode: False)
    ev.run_once()
    assert ev.local_bytes() + chunks.usage().bytes <= 2 * MiB
    assert chunks.usage().chunks < 4
    index.close()


def test_a_pinned_local_copy_is_kept(tmp_path):
    index, tree, chunks = _setup(tmp_path, limit=1 * MiB)
    kept = _local_file(tree, "pinned", 2 * MiB, node_id=20)
    loose = _local_file(tree, "loose", 2 * MiB, node_id=21)
    ev = Evictor(tree, chunks, 1 * MiB, has_handles=lambda inode: False, pinned=lambda inode: inode == kept.inode)
    assert ev.run_once().files_dropped == 1
    assert tree.get(kept.inode).local_data and tree.data_path(kept.inode).exists()
    assert not tree.get(loose.inode).local_data
    index.close()
