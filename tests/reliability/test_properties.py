"""Property tests of the local tree (cache/tree.py) and of the chunker's edit locality.

Already covered elsewhere and not repeated here: chunk reassembly and determinism whatever the read
sizes (tests/cache/test_cache_chunker.py::test_property_chunks_reassemble_to_the_input), and
schema-driven fuzzing of every API operation with and without a token (tests/server/test_schema_fuzz.py).

RELIABILITY_FUZZ_EXAMPLES sets the number of examples (60 here; scripts/soak runs more).
"""

from __future__ import annotations

import io
import random
import shutil
import tempfile
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cache.chunker import AVG_CHUNK, MAX_CHUNK, chunk_stream
from cache.index import Index
from cache.tree import ROOT_INODE, SHARED_INODE, SHARED_NAME, Tree
from tests.reliability.helpers import FUZZ_EXAMPLES, SEED

NAMES = st.sampled_from(["a", "b", "c", "A", "é", "e\u0301", "x" * 255, "sp ace", "-dash"])
OP_KINDS = st.sampled_from(["mkdir", "create", "symlink", "rename", "unlink", "rmdir", "setattr"])


class _Rollback(Exception):
    pass


class TreeMachine(RuleBasedStateMachine):
    """Random sequences of add / update / detach / collect / enqueue / op_done against a dict model.

    Rows are only removed the way the mount removes them (Vfs.collect): detached and named by no
    pending op. The model predicts every answer, including which changes the index refuses because
    two attached nodes would share a (parent, name).
    """

    examples = 0

    def __init__(self) -> None:
        super().__init__()
        TreeMachine.examples += 1
        self.dir = Path(tempfile.mkdtemp(prefix="tree-prop-"))
        self.index = Index(self.dir / "index.db")
        self.tree = Tree(self.index, self.dir / "files")
        self.tree.ensure_roots(1000)
        # inode -> fields the model tracks
        self.nodes: dict[int, dict] = {
            ROOT_INODE: dict(parent=None, name="", kind="dir", node_id=1000, content_gen=0, synced_gen=0),
            SHARED_INODE: dict(parent=ROOT_INODE, name=SHARED_NAME, kind="dir", node_id=None, content_gen=0,
                               synced_gen=0),
        }
        self.ops: dict[int, tuple[str, int, int | None, str | None, int | None]] = {}
        self.next_node_id = 2000

    def teardown(self) -> None:
        self.index.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    inodes = Bundle("inodes")

    # ---- helpers ----

    def _taken(self, parent: int | None, name: str, besides: int | None = None) -> bool:
        return parent is not None and any(
            n["parent"] == parent and n["name"] == name and i != besides for i, n in self.nodes.items())

    def _dirs(self) -> list[int]:
        return sorted(i for i, n in self.nodes.items() if n["kind"] == "dir")

    def _named(self, inode: int) -> bool:
        return any(inode in (op[1], op[2], op[4]) for op in self.ops.values())

    # ---- rules ----

    @initialize(target=inodes)
    def start(self):
        return ROOT_INODE

    @rule(target=inodes, data=st.data(), name=NAMES, kind=st.sampled_from(["dir", "file", "symlink"]),
          with_id=st.booleans())
    def add(self, data, name, kind, with_id):
        parent = data.draw(st.sampled_from(self._dirs()), label="parent")
        node_id = None
        if with_id:
            node_id = self.next_node_id
            self.next_node_id += 1
        if self._taken(parent, name):
            with pytest.raises(apsw.ConstraintError):
                self.tree.add(parent, name, kind, 0o644, node_id=node_id)
            return ROOT_INODE
        e = self.tree.add(parent, name, kind, 0o644, node_id=node_id, local_data=kind == "file")
        assert e.inode not in self.nodes, "inode numbers are never reused"
        assert (e.parent_inode, e.name, e.kind, e.node_id) == (parent, name, kind, node_id)
        self.nodes[e.inode] = dict(parent=parent, name=name, kind=kind, node_id=node_id, content_gen=0,
                                   synced_gen=0)
        return e.inode

    @rule(inode=inodes, data=st.data(), name=NAMES)
    def move(self, inode, data, name):
        if inode not in self.nodes or inode in (ROOT_INODE, SHARED_INODE):
            return
        parent = data.draw(st.sampled_from(self._dirs()), label="new parent")
        if self._taken(parent, name, besides=inode):
            with pytest.raises(apsw.ConstraintError):
                self.tree.update(inode, parent_inode=parent, name=name)
        else:
            self.tree.update(inode, parent_inode=parent, name=name)
            self.nodes[inode].update(parent=parent, name=name)

    @rule(inode=inodes)
    def detach(self, inode):
        if inode in self.nodes and inode not in (ROOT_INODE, SHARED_INODE):
            self.tree.update(inode, parent_inode=None)
            self.nodes[inode]["parent"] = None

    @rule(inode=inodes, sync=st.booleans())
    def write_or_sync(self, inode, sync):
        n = self.nodes.get(inode)
        if n is None or n["kind"] != "file":
            return
        if sync:
            self.tree.update(inode, synced_gen=n["content_gen"])
            n["synced_gen"] = n["content_gen"]
        else:
            self.tree.update(inode, content_gen=n["content_gen"] + 1)
            n["content_gen"] += 1

    @rule(inode=inodes, other=inodes)
    def give_server_id(self, inode, other):
        """A server id is unique: taking one another row holds is refused."""
        if inode not in self.nodes or other not in self.nodes:
            return
        theirs = self.nodes[other]["node_id"]
        if theirs is not None and other != inode:
            with pytest.raises(apsw.ConstraintError):
                self.tree.update(inode, node_id=theirs)
        else:
            self.tree.update(inode, node_id=self.next_node_id)
            self.nodes[inode]["node_id"] = self.next_node_id
            self.next_node_id += 1

    @rule(inode=inodes)
    def collect(self, inode):
        """What Vfs.collect does: drop a detached row once no pending op names it."""
        n = self.nodes.get(inode)
        if n is None or n["parent"] is not None or inode in (ROOT_INODE, SHARED_INODE):
            return
        assert self.tree.named_by_ops(inode) == self._named(inode)
        if self._named(inode) or any(c["parent"] == inode for c in self.nodes.values()):
            return  # (the mount detaches only empty folders: rmdir and forget_local empty them first)
        self.tree.remove(inode)
        del self.nodes[inode]

    @rule(kind=OP_KINDS, inode=inodes, parent=inodes, other=st.one_of(st.none(), inodes), name=NAMES)
    def enqueue(self, kind, inode, parent, other, name):
        if any(i is not None and i not in self.nodes for i in (inode, parent, other)):
            return
        self.tree.enqueue(kind, inode, parent, name, other_inode=other, why="prop")
        seq = self.index.conn.execute("SELECT max(seq) FROM ops").fetchone()[0]
        assert seq not in self.ops and all(seq > s for s in self.ops), "op seqs only grow"
        self.ops[seq] = (kind, inode, parent, name, other)

    @precondition(lambda self: self.ops)
    @rule(data=st.data(), failed=st.booleans())
    def op_done(self, data, failed):
        seq = data.draw(st.sampled_from(sorted(self.ops)), label="seq")
        if failed:
            self.tree.op_failed(seq, "refused")
        self.tree.op_done(seq)
        del self.ops[seq]

    @rule(data=st.data(), name=NAMES)
    def rolled_back(self, data, name):
        """A transaction that fails halfway leaves nothing behind."""
        parent = data.draw(st.sampled_from(self._dirs()), label="parent")
        if self._taken(parent, name):
            return
        with pytest.raises(_Rollback):
            with self.index.transaction():
                e = self.tree.add(parent, name, "file", 0o600)
                self.tree.enqueue("create", e.inode, parent, name)
                raise _Rollback()

    # ---- invariants ----

    @invariant()
    def rows_match_the_model(self):
        rows = {r[0] for r in self.index.conn.execute("SELECT inode FROM inodes")}
        assert rows == set(self.nodes)
        for inode, n in self.nodes.items():
            e = self.tree.get(inode)
            assert e is not None
            assert (e.parent_inode, e.name, e.kind, e.node_id) == (n["parent"], n["name"], n["kind"], n["node_id"])
            assert e.dirty == (n["content_gen"] > n["synced_gen"])
            if n["node_id"] is not None:
                assert self.tree.by_node(n["node_id"]).inode == inode

    @invariant()
    def attached_names_are_unique_and_children_are_right(self):
        seen = set()
        for inode, n in self.nodes.items():
            if n["parent"] is None:
                continue
            assert (n["parent"], n["name"]) not in seen
            seen.add((n["parent"], n["name"]))
            assert self.tree.child(n["parent"], n["name"]).inode == inode
        for d in self._dirs():
            want = sorted(i for i, n in self.nodes.items() if n["parent"] == d)
            assert [e.inode for e in self.tree.children(d)] == want
            assert self.tree.has_children(d) == bool(want)
            if want:  # readdir resumes after an inode
                assert [e.inode for e in self.tree.children(d, after_inode=want[0])] == want[1:]

    @invariant()
    def queue_matches_the_model(self):
        assert self.tree.pending_ops() == len(self.ops)
        got = [(op.seq, op.kind, op.inode, op.parent_inode, op.name, op.other_inode)
               for op in self.tree.ops(limit=10_000)]
        assert got == [(seq, *self.ops[seq]) for seq in sorted(self.ops)]
        for inode in self.nodes:
            assert self.tree.named_by_ops(inode) == self._named(inode)
        # every inode a pending op names still has its row (so replay can find its server id)
        for _kind, inode, parent, _name, other in self.ops.values():
            for i in (inode, parent, other):
                assert i is None or self.tree.get(i) is not None

    @invariant()
    def dirty_and_orphans(self):
        assert [e.inode for e in self.tree.dirty_files()] == sorted(
            i for i, n in self.nodes.items() if n["content_gen"] > n["synced_gen"])
        assert sorted(e.inode for e in self.tree.orphans()) == sorted(
            i for i, n in self.nodes.items() if n["parent"] is None and i > SHARED_INODE)


TREE_SETTINGS = settings(max_examples=FUZZ_EXAMPLES, stateful_step_count=40, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck))


def test_tree_operations_match_a_model(counts):
    from hypothesis.stateful import run_state_machine_as_test

    TreeMachine.examples = 0
    try:
        run_state_machine_as_test(seed(SEED)(TreeMachine), settings=TREE_SETTINGS)
    finally:
        counts.add(fuzz_cases=TreeMachine.examples)


# ---- the chunker: an edit changes nothing before it -------------------------------------------------

def _refs(data: bytes):
    return [ref for ref, _ in chunk_stream(io.BytesIO(data))]


@st.composite
def edits(draw):
    size = draw(st.integers(min_value=0, max_value=3 * MAX_CHUNK))
    data = random.Random(draw(st.integers(0, 2**32))).randbytes(size)
    at = draw(st.integers(min_value=0, max_value=size))
    kind = draw(st.sampled_from(["insert", "delete", "overwrite", "append"]))
    blob = draw(st.binary(min_size=1, max_size=64))
    if kind == "insert":
        edited = data[:at] + blob + data[at:]
    elif kind == "delete":
        edited = data[:at] + data[at + len(blob):]
    elif kind == "overwrite":
        edited = data[:at] + blob + data[at + len(blob):]
    else:
        at = size
        edited = data + blob * draw(st.integers(1, AVG_CHUNK // 64))
    return data, edited, at


def test_an_edit_keeps_every_chunk_before_it(counts):
    """The cut points before an edit do not move, so an edit re-uploads only chunks from the edit on:
    each chunk that ends before the edit, and starts at least MAX_CHUNK before the shorter file's end
    (near the end a cut also depends on how much is left), is the same chunk in both versions."""
    n = 0

    @settings(max_examples=max(10, FUZZ_EXAMPLES // 3), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(edits())
    def check(case):
        nonlocal n
        n += 1
        data, edited, at = case
        before, after = _refs(data), _refs(edited)
        assert sum(r.size for r in after) == len(edited)
        horizon = min(len(data), len(edited)) - MAX_CHUNK
        stable = [r for r in before if r.offset + r.size <= at and r.offset <= horizon]
        assert after[:len(stable)] == stable

    try:
        seed(SEED)(check)()
    finally:
        counts.add(fuzz_cases=n)
