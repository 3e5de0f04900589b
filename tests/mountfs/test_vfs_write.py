"""Vfs.write on a real index: the per-write work stays off SQLite, and dirty marking survives commits."""

from __future__ import annotations

import os
from pathlib import Path

import trio

from cache.index import Index
from cache.spares import SpareFiles
from cache.tree import ROOT_INODE, Tree
from mountfs.vfs import Vfs


def _vfs(tmp_path: Path, spares: int = 0) -> Vfs:
    index = Index(tmp_path / "index.db")
    tree = Tree(index, tmp_path / "files")
    tree.ensure_roots(None)
    pool = None
    if spares:
        pool = SpareFiles(tree.files_dir, keep=spares)
        pool.fill()
    return Vfs(tree, reader=None, remote=None, wake_syncer=lambda: None, user="u", spares=pool)


def _count_statements(vfs: Vfs) -> list[str]:
    seen: list[str] = []

    def trace(_cursor, sql: str, _bindings) -> bool:
        seen.append(sql)
        return True

    vfs.tree.conn.exec_trace = trace
    return seen


def test_writes_to_a_dirty_file_run_no_sql(tmp_path: Path) -> None:
    vfs = _vfs(tmp_path)

    async def main() -> int:
        h, e = await vfs.create(ROOT_INODE, b"f.bin", 0o644, os.O_WRONLY)
        await vfs.write(h.fh, 0, b"x" * 4096)
        statements = _count_statements(vfs)
        for i in range(1, 51):
            assert await vfs.write(h.fh, i * 4096, b"y" * 4096) == 4096
        assert statements == []
        await vfs.release(h.fh)
        return e.inode

    inode = trio.run(main)
    assert os.path.getsize(vfs.tree.data_path(inode)) == 51 * 4096
    assert vfs.tree.get(inode).dirty


def test_first_write_after_a_commit_marks_the_file_dirty_again(tmp_path: Path) -> None:
    vfs = _vfs(tmp_path)

    async def main() -> None:
        h, e = await vfs.create(ROOT_INODE, b"f.bin", 0o644, os.O_RDWR)
        await vfs.write(h.fh, 0, b"first")
        cur = vfs.tree.get(e.inode)
        assert cur is not None and cur.dirty
        # What the syncer does once the server has this generation: the row is clean.
        vfs.tree.update(e.inode, synced_gen=vfs.live_gen(e.inode), content_gen=vfs.live_gen(e.inode))
        vfs.content_synced(e.inode)
        assert not vfs.tree.get(e.inode).dirty

        await vfs.write(h.fh, 5, b" second")
        after = vfs.tree.get(e.inode)
        assert after is not None and after.dirty, "a write after the commit must be recorded in the index"
        assert after.content_gen == vfs.live_gen(e.inode)
        await vfs.release(h.fh)

    trio.run(main)


def test_a_create_takes_a_spare_data_file_and_makes_its_own_once_none_is_left(tmp_path: Path) -> None:
    vfs = _vfs(tmp_path, spares=1)

    async def create(name: bytes, data: bytes) -> int:
        h, e = await vfs.create(ROOT_INODE, name, 0o644, os.O_WRONLY)
        await vfs.write(h.fh, 0, data)
        await vfs.release(h.fh)
        return e.inode

    first = trio.run(create, b"a.txt", b"from a spare")
    assert vfs.spares is not None and len(vfs.spares) == 0
    second = trio.run(create, b"b.txt", b"made on the spot")
    assert vfs.tree.data_path(first).read_bytes() == b"from a spare"
    assert vfs.tree.data_path(second).read_bytes() == b"made on the spot"
    assert sorted(os.listdir(vfs.tree.files_dir)) == sorted([str(first), str(second)])


def test_closing_a_writer_runs_no_sql_and_its_size_reaches_the_index_in_groups(tmp_path: Path) -> None:
    vfs = _vfs(tmp_path)

    async def main() -> list[int]:
        inodes = []
        for i in range(3):
            h, e = await vfs.create(ROOT_INODE, b"f%d" % i, 0o644, os.O_WRONLY)
            await vfs.write(h.fh, 0, b"x" * (100 + i))
            statements = _count_statements(vfs)
            await vfs.release(h.fh)
            assert statements == []
            vfs.tree.conn.exec_trace = None
            inodes.append(e.inode)
        return inodes

    inodes = trio.run(main)
    on_disk = [os.stat(vfs.tree.data_path(i)) for i in inodes]
    assert [(vfs.getattr(i).size, vfs.getattr(i).mtime_ns) for i in inodes] == \
        [(st.st_size, st.st_mtime_ns) for st in on_disk] and on_disk[0].st_size == 100

    def rows() -> list[tuple[int, int]]:
        return [tuple(r) for r in vfs.tree.conn.execute(
            "SELECT size, mtime_ns FROM inodes WHERE inode IN (?, ?, ?) ORDER BY inode", inodes)]

    assert [size for size, _ in rows()] == [0, 0, 0]
    assert vfs.persist_pending(limit=2) is True  # one more waits
    assert vfs.persist_pending() is False
    assert rows() == [(st.st_size, st.st_mtime_ns) for st in on_disk]
    assert all(vfs.tree.get(i).dirty for i in inodes)


def test_a_write_during_a_commit_leaves_the_index_row_dirty_when_the_commit_lands(tmp_path: Path) -> None:
    """The commit covers the generation it read; a write (and close) that came while it was on its way
    must still be dirty in the index afterwards, so a crash then does not leave those bytes unsynced."""
    from types import SimpleNamespace

    from mountfs.syncer import Syncer

    vfs = _vfs(tmp_path)
    syncer = Syncer(vfs, vfs.tree, remote=None, transfer=None, device="d")

    async def main() -> int:
        h, e = await vfs.create(ROOT_INODE, b"f.bin", 0o644, os.O_WRONLY)
        await vfs.write(h.fh, 0, b"first")
        await vfs.release(h.fh)
        read_gen = vfs.live_gen(e.inode)  # the upload reads the file at this generation ...
        h = await vfs.open(e.inode, os.O_WRONLY)
        await vfs.write(h.fh, 0, b"second")  # ... and this write comes while it is on its way
        await vfs.release(h.fh)
        node = SimpleNamespace(id=7, version=1, size=5, content_hash="x", owner="u", access="owner")
        syncer._committed(e.inode, node, read_gen)
        return e.inode

    inode = trio.run(main)
    row = vfs.tree.conn.execute("SELECT content_gen > synced_gen FROM inodes WHERE inode = ?", (inode,)).fetchone()
    assert row == (1,)  # read from the index itself, as recovery after a crash would
