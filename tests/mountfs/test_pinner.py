"""The pinner's walks of a pinned tree (drive status, pin, unpin) let other work run as they go."""

from __future__ import annotations

import trio

from cache.chunkcache import ChunkCache
from cache.index import Index
from cache.tree import ROOT_INODE, Tree
from mountfs.pinner import Pinner


async def _never(*_args, **_kwargs):
    raise AssertionError("a summary fetches nothing")


def test_a_summary_of_a_large_pinned_folder_lets_fuse_requests_in(tmp_path):
    index = Index(tmp_path / "index.db")
    tree = Tree(index, tmp_path / "files")
    tree.ensure_roots(1)
    chunks = ChunkCache(tmp_path, index)
    folder = tree.add(ROOT_INODE, "big", "dir", 0o755, node_id=2, listed=True)
    with index.transaction():
        for i in range(2500):  # three pages of children
            tree.add(folder.inode, f"f{i}", "file", 0o644, node_id=10 + i, size=10, version=1)
    pinner = Pinner(tree, chunks, _never, _never, _never)

    async def main() -> tuple[int, int]:
        done = trio.Event()
        turns = 0

        async def other_requests() -> None:  # what the FUSE loop would be doing meanwhile
            nonlocal turns
            while not done.is_set():
                turns += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_requests)
            await trio.lowlevel.checkpoint()
            summary = await pinner.summary(folder)
            done.set()
        return summary.files, turns

    files, turns = trio.run(main)
    assert files == 2500
    assert turns >= 3, turns  # at least once per page, not only once the walk is over
