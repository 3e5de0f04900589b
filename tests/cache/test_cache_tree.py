"""Tree: the entries it keeps in memory always agree with the committed rows of the index."""

import pytest

from cache.index import Index
from cache.tree import ROOT_INODE, Tree


@pytest.fixture
def tree(tmp_path):
    index = Index(tmp_path / "index.sqlite")
    t = Tree(index, tmp_path / "files")
    t.ensure_roots(None)
    yield t
    index.close()


def _row_name(tree: Tree, inode: int) -> str | None:
    row = tree.conn.execute("SELECT name FROM inodes WHERE inode = ?", (inode,)).fetchone()
    return row[0] if row else None


def test_an_update_is_seen_by_the_next_read(tree):
    e = tree.add(ROOT_INODE, "a.txt", "file", 0o644)
    assert tree.get(e.inode).size == 0 and tree.child(ROOT_INODE, "a.txt") == e
    tree.update(e.inode, size=5, mode=0o600)
    got = tree.get(e.inode)
    assert (got.size, got.mode) == (5, 0o600)
    assert tree.child(ROOT_INODE, "a.txt") == got


def test_a_rename_moves_the_name(tree):
    folder = tree.add(ROOT_INODE, "d", "dir", 0o755)
    e = tree.add(ROOT_INODE, "old", "file", 0o644)
    assert tree.child(ROOT_INODE, "old") == e
    tree.update(e.inode, parent_inode=folder.inode, name="new")
    assert tree.child(ROOT_INODE, "old") is None
    assert tree.child(folder.inode, "new").inode == e.inode
    # The old name taken by another node names that node, not the cached one.
    other = tree.add(ROOT_INODE, "old", "file", 0o644)
    assert tree.child(ROOT_INODE, "old").inode == other.inode != e.inode


def test_a_removed_entry_is_gone(tree):
    e = tree.add(ROOT_INODE, "gone", "file", 0o644)
    assert tree.child(ROOT_INODE, "gone") == e
    tree.remove(e.inode)
    assert tree.get(e.inode) is None and tree.child(ROOT_INODE, "gone") is None


def test_nothing_uncommitted_is_kept_after_a_rollback(tree):
    e = tree.add(ROOT_INODE, "keep", "file", 0o644)
    assert tree.get(e.inode).size == 0
    with pytest.raises(RuntimeError):
        with tree.index.transaction():
            tree.update(e.inode, size=99, name="renamed")
            assert tree.get(e.inode).size == 99  # read inside the transaction: its own write
            added = tree.add(ROOT_INODE, "ghost", "file", 0o644)
            assert tree.child(ROOT_INODE, "ghost") == added
            raise RuntimeError("roll it back")
    assert _row_name(tree, e.inode) == "keep"
    assert tree.get(e.inode).size == 0 and tree.get(e.inode).name == "keep"
    assert tree.child(ROOT_INODE, "keep").inode == e.inode
    assert tree.child(ROOT_INODE, "renamed") is None
    assert tree.child(ROOT_INODE, "ghost") is None and tree.get(added.inode) is None


def test_reads_are_answered_from_memory(tree):
    e = tree.add(ROOT_INODE, "hot", "file", 0o644)
    tree.get(e.inode)
    # Written behind the tree's back (nothing in the daemon does this): a cached read does not see it,
    # which is how this test knows the read ran no SQL.
    tree.conn.execute("UPDATE inodes SET size = 7 WHERE inode = ?", (e.inode,))
    assert tree.get(e.inode).size == 0
    assert tree.child(ROOT_INODE, "hot").size == 0
    tree.update(e.inode, mode=0o600)  # any write through the tree reads the row afresh
    assert tree.get(e.inode).size == 7


def test_pending_items_counts_each_changed_file_or_folder_once(tree):
    folder = tree.add(ROOT_INODE, "d", "dir", 0o755)
    tree.enqueue("mkdir", folder.inode, ROOT_INODE, "d")
    new = tree.add(folder.inode, "new.txt", "file", 0o644, local_data=True, content_gen=1)
    tree.enqueue("create", new.inode, folder.inode, "new.txt")
    tree.enqueue("setattr", new.inode, None, None, mode=0o600)
    edited = tree.add(ROOT_INODE, "edited.txt", "file", 0o644, node_id=7, version=1)
    tree.update(edited.inode, content_gen=3, synced_gen=2)
    clean = tree.add(ROOT_INODE, "clean.txt", "file", 0o644, node_id=8, version=1)
    assert (tree.pending_ops(), tree.pending_items()) == (3, 3)
    tree.enqueue("rename", clean.inode, folder.inode, "moved.txt")
    assert tree.pending_items() == 4
    # A deleted file's row has no parent: its delete op is the one pending change.
    tree.update(edited.inode, parent_inode=None)
    tree.enqueue("delete", edited.inode)
    assert tree.pending_items() == 4
