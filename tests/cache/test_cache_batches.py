"""Batched creates: held in an open transaction, kept safe by the redo log, put back after a kill."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import apsw

from cache.index import Index
from cache.tree import ROOT_INODE, Tree

ROOT = Path(__file__).resolve().parents[2]


def _create(tree: Tree, name: str) -> int:
    with tree.index.batched() as batch:
        e = tree.add(ROOT_INODE, name, "file", 0o640, owner="u", local_data=True, content_gen=1)
        batch.log(tree.created_record(e, tree.enqueue("create", e.inode, ROOT_INODE, name)))
    return e.inode


def _fresh_tree(tmp_path: Path) -> tuple[Path, Tree]:
    db = tmp_path / "index.db"
    tree = Tree(Index(db), tmp_path / "files")
    tree.ensure_roots(None)
    return db, tree


def _committed_names(path: Path) -> list[str]:
    """What another connection sees: only committed rows."""
    conn = apsw.Connection(str(path))
    try:
        return [n for (n,) in conn.execute("SELECT name FROM inodes WHERE kind = 'file' ORDER BY inode")]
    finally:
        conn.close()


def _run_then_kill(tmp_path: Path, body: str) -> Path:
    """Run `body` in a new process with `tree` on tmp_path/index.db, then SIGKILL it; the index path."""
    db = tmp_path / "index.db"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from cache.index import Index
        from cache.tree import ROOT_INODE, Tree
        tree = Tree(Index({str(db)!r}), Path({str(tmp_path / "files")!r}))
        tree.ensure_roots(None)
    """) + textwrap.dedent(body) + "\nos.kill(os.getpid(), signal.SIGKILL)\n"
    subprocess.run([sys.executable, "-c", script], check=False)
    return db


def test_batched_creates_killed_before_their_commit_come_back_from_the_redo_log(tmp_path: Path) -> None:
    db = _run_then_kill(tmp_path, """
        for i in range(5):
            with tree.index.batched() as batch:
                e = tree.add(ROOT_INODE, f"f{i} été ✓", "file", 0o640, owner="u", local_data=True, content_gen=1)
                batch.log(tree.created_record(e, tree.enqueue("create", e.inode, ROOT_INODE, e.name)))
    """)
    assert _committed_names(db) == []  # nothing committed: only the redo log has them
    assert os.path.getsize(str(db) + "-redo") > 0

    tree = Tree(Index(db), tmp_path / "files")
    names = [f"f{i} été ✓" for i in range(5)]
    kids = tree.children(ROOT_INODE)
    assert [e.name for e in kids if e.kind == "file"] == names
    assert all(e.dirty and e.local_data and e.mode == 0o640 and e.owner == "u" for e in kids if e.kind == "file")
    assert [(op.kind, op.name) for op in tree.ops()] == [("create", n) for n in names]
    assert os.path.getsize(str(db) + "-redo") == 0
    assert _committed_names(db) == names
    tree.index.close()


def test_any_other_write_commits_the_open_batch_first_and_empties_the_redo_log(tmp_path: Path) -> None:
    db, tree = _fresh_tree(tmp_path)
    _create(tree, "a")
    _create(tree, "b")
    assert _committed_names(db) == [] and os.path.getsize(str(db) + "-redo") > 0
    assert tree.child(ROOT_INODE, "b") is not None  # this connection sees its open batch
    tree.index.set_kv("k", "v")
    assert _committed_names(db) == ["a", "b"]
    assert os.path.getsize(str(db) + "-redo") == 0
    tree.index.close()


def test_the_batch_is_committed_when_old_enough_at_sync_and_at_close(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    index = Index(db)
    tree = Tree(index, tmp_path / "files")
    tree.ensure_roots(None)
    _create(tree, "a")
    index.commit_batch(older_than=3600)
    assert _committed_names(db) == []
    index.commit_batch(older_than=0)
    assert _committed_names(db) == ["a"]
    _create(tree, "b")
    index.sync()
    assert _committed_names(db) == ["a", "b"]
    _create(tree, "c")
    index.close()
    assert _committed_names(db) == ["a", "b", "c"]


def test_a_record_already_committed_is_not_put_back_twice(tmp_path: Path) -> None:
    db, tree = _fresh_tree(tmp_path)
    inode = _create(tree, "a")
    record = tree.created_record(tree.get(inode), next(iter(tree.ops())).seq)
    tree.index.close()  # committed; then a kill before the log was emptied would leave this:
    with open(str(db) + "-redo", "a") as f:
        f.write(__import__("json").dumps(record) + "\n{\"t\": \"create\", \"inode\": 9")  # and a cut line

    tree = Tree(Index(db), tmp_path / "files")
    assert [e.name for e in tree.children(ROOT_INODE) if e.kind == "file"] == ["a"]
    assert len(list(tree.ops())) == 1
    tree.index.close()


def test_a_failing_batched_block_rolls_back_alone_and_logs_nothing(tmp_path: Path) -> None:
    db, tree = _fresh_tree(tmp_path)
    _create(tree, "a")
    size = os.path.getsize(str(db) + "-redo")
    try:
        with tree.index.batched():
            tree.add(ROOT_INODE, "b", "file", 0o644)
            raise OSError("no spare data file")
    except OSError:
        pass
    assert os.path.getsize(str(db) + "-redo") == size
    assert tree.child(ROOT_INODE, "b") is None and tree.child(ROOT_INODE, "a") is not None
    tree.index.close()
    assert _committed_names(db) == ["a"]


def test_batched_setattrs_killed_before_their_commit_are_applied_again_in_order(tmp_path: Path) -> None:
    db = _run_then_kill(tmp_path, """
        kept = tree.add(ROOT_INODE, "kept", "file", 0o600, owner="u")  # committed
        with tree.index.batched() as batch:
            e = tree.add(ROOT_INODE, "new", "file", 0o600, owner="u", local_data=True, content_gen=1)
            batch.log(tree.created_record(e, tree.enqueue("create", e.inode, ROOT_INODE, "new")))
        for inode, changes in ((e.inode, {"mode": 0o755}), (kept.inode, {"mtime_ns": 12345}),
                               (e.inode, {"mode": 0o700, "mtime_ns": 678})):
            with tree.index.batched() as batch:
                tree.update(inode, ctime_ns=999, **changes)
                seq = tree.enqueue("setattr", inode, None, None, **changes)
                batch.log(tree.setattr_record(inode, 999, changes, seq))
    """)
    assert _committed_names(db) == ["kept"]

    tree = Tree(Index(db), tmp_path / "files")
    new, kept = tree.child(ROOT_INODE, "new"), tree.child(ROOT_INODE, "kept")
    assert (new.mode, new.mtime_ns, new.ctime_ns) == (0o700, 678, 999)
    assert (kept.mode, kept.mtime_ns) == (0o600, 12345)
    assert [(op.kind, op.inode, op.args) for op in tree.ops()] == [
        ("create", new.inode, {}), ("setattr", new.inode, {"mode": 0o755}), ("setattr", kept.inode, {"mtime_ns": 12345}),
        ("setattr", new.inode, {"mode": 0o700, "mtime_ns": 678})]
    tree.index.close()
