"""HoleStore: a sparse copy's holes are found by range, leave only once filled, and survive a restart
exactly as long as the copy they describe."""

import pytest

from cache.holes import Hole
from cache.index import Index
from cache.tree import ROOT_INODE, Tree


def _holes(*spans: tuple[int, int]) -> list[Hole]:
    return [Hole(offset, size, f"h{offset}", node_id=7, version=3) for offset, size in spans]


@pytest.fixture
def paths(tmp_path):
    return tmp_path / "index.sqlite", tmp_path / "files"


def _tree(paths) -> Tree:
    t = Tree(Index(paths[0]), paths[1])
    t.ensure_roots(None)
    return t


@pytest.fixture
def tree(paths):
    t = _tree(paths)
    yield t
    t.index.close()


def _sparse(tree: Tree, holes: list[Hole], name: str = "big") -> int:
    e = tree.add(ROOT_INODE, name, "file", 0o644, node_id=None, version=3)
    with tree.index.transaction():
        tree.update(e.inode, local_data=True)
        tree.holes.make(e.inode, holes)
    return e.inode


def test_within_finds_every_hole_a_range_overlaps_and_no_other(tree):
    inode = _sparse(tree, _holes((0, 10), (10, 5), (30, 10), (50, 1)))
    f = tree.holes.get(inode)
    assert [h.offset for h in f.within(0, 1)] == [0]
    assert [h.offset for h in f.within(9, 11)] == [0, 10]
    assert f.within(15, 30) == []  # [15, 30) lies between holes; the end is exclusive
    assert [h.offset for h in f.within(15, 31)] == [30]
    assert [h.offset for h in f.within(39, 1000)] == [30, 50]
    assert f.within(51, 1000) == [] and f.within(5, 5) == []
    assert f.first_within(12, 60).offset == 10


def test_filled_holes_leave_memory_and_index_and_the_rest_survive_a_restart(paths):
    tree = _tree(paths)
    inode = _sparse(tree, _holes((0, 10), (10, 5), (30, 10)))
    f = tree.holes.get(inode)
    tree.holes.filled(f, f.within(0, 12))
    assert [h.offset for h in f.holes()] == [30]
    tree.index.close()

    tree = _tree(paths)
    again = tree.holes.get(inode)
    assert again is not f and again.holes() == _holes((30, 10))
    tree.holes.filled(again, again.holes())
    assert tree.holes.get(inode) is None and inode not in tree.holes
    tree.index.close()
    tree = _tree(paths)
    assert tree.holes.get(inode) is None
    tree.index.close()


def test_dropping_the_local_copy_drops_its_holes_but_not_an_open_handles_view(paths):
    tree = _tree(paths)
    inode = _sparse(tree, _holes((0, 10), (10, 10)))
    held = tree.holes.get(inode)  # what an open handle keeps
    tree.update(inode, local_data=False)  # e.g. another device changed the file; the copy goes
    assert tree.holes.get(inode) is None
    assert not held.current and len(held) == 2
    tree.holes.filled(held, held.within(0, 5))  # the handle fills the file it has open
    assert len(held) == 1 and tree.holes.get(inode) is None
    tree.index.close()
    tree = _tree(paths)
    assert tree.holes.get(inode) is None
    tree.index.close()


def test_a_new_copy_never_inherits_the_old_ones_holes(tree):
    inode = _sparse(tree, _holes((0, 10)))
    tree.update(inode, local_data=True)  # made whole anew (e.g. truncated to 0 and written)
    assert tree.holes.get(inode) is None
    inode2 = _sparse(tree, _holes((0, 10)), name="big2")
    tree.remove(inode2)
    assert tree.holes.get(inode2) is None
    assert tree.conn.execute("SELECT count(*) FROM holes").get == 0


def test_rows_of_a_copy_that_is_gone_are_dropped_at_start(paths):
    tree = _tree(paths)
    inode = _sparse(tree, _holes((0, 10)))
    tree.conn.execute("UPDATE inodes SET local_data = 0 WHERE inode = ?", (inode,))  # behind Tree's back
    tree.index.close()
    tree = _tree(paths)
    assert tree.holes.get(inode) is None
    assert tree.conn.execute("SELECT count(*) FROM holes").get == 0
    tree.index.close()


def test_a_rolled_back_copy_leaves_no_holes_in_the_index(tree):
    e = tree.add(ROOT_INODE, "big", "file", 0o644, version=3)
    with pytest.raises(RuntimeError):
        with tree.index.transaction():
            tree.update(e.inode, local_data=True)
            tree.holes.make(e.inode, _holes((0, 10)))
            raise RuntimeError("killed")
    assert tree.conn.execute("SELECT count(*) FROM holes").get == 0
    assert not tree.get(e.inode).local_data


def test_cut_drops_the_holes_past_the_new_end_and_refuses_one_it_falls_inside(tree):
    inode = _sparse(tree, _holes((0, 10), (10, 10), (20, 10)))
    with pytest.raises(ValueError):
        tree.holes.cut(inode, 15)
    tree.holes.cut(inode, 20)
    assert [h.offset for h in tree.holes.get(inode).holes()] == [0, 10]
    tree.holes.cut(inode, 10)
    assert [h.offset for h in tree.holes.get(inode).holes()] == [0]
    tree.holes.cut(inode, 0)
    assert tree.holes.get(inode) is None
