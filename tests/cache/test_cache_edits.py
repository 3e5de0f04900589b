"""The record of what changed in each local copy since it matched a chunk list: trusted only while
every change was noted."""

from __future__ import annotations

from cache.chunker import ChunkRef
from cache.edits import TO_END, Edits

REFS = tuple(ChunkRef(offset=i * 100, size=100, hash=f"{i:064x}") for i in range(10))
FILE = (1, 42)


def test_noted_changes_come_back_with_the_list_sequential_writes_as_one_range():
    e = Edits()
    e.known(7, version=3, refs=REFS, file_id=FILE, gen=5)
    e.note(7, 0, 10, gen=6)
    e.note(7, 10, 30, gen=7)  # right after the last: the same range grows
    e.note(7, 500, 501, gen=8)
    e.note(7, 250, TO_END, gen=9)  # a truncation
    k = e.take(7, version=3, gen=9)
    assert k is not None
    assert k.refs == REFS and k.file_id == FILE
    assert k.changed == ((0, 30), (500, 501), (250, TO_END))
    assert e.take(7, version=3, gen=9) is not None  # taking does not end the record


def test_a_change_not_noted_another_version_or_generation_makes_it_unknown():
    e = Edits()
    e.known(7, version=3, refs=REFS, file_id=FILE, gen=5)
    assert e.take(7, version=4, gen=5) is None  # based on another version
    assert e.take(7, version=3, gen=6) is None  # a change since that was never noted
    e.note(7, 0, 1, gen=7)  # the generation jumped: something changed the file in between
    assert e.take(7, version=3, gen=7) is None
    e.note(7, 1, 2, gen=8)
    assert e.take(7, version=3, gen=8) is None  # gone for good, until known() again
    assert e.take(8, version=3, gen=5) is None  # never known


def test_too_many_scattered_ranges_give_up_the_record():
    e = Edits()
    e.known(7, version=3, refs=REFS, file_id=FILE, gen=0)
    for gen in range(1, Edits.MAX_RANGES + 1):
        e.note(7, gen * 10, gen * 10 + 1, gen=gen)
    assert e.take(7, version=3, gen=Edits.MAX_RANGES) is not None
    e.note(7, 5, 6, gen=Edits.MAX_RANGES + 1)
    assert e.take(7, version=3, gen=Edits.MAX_RANGES + 1) is None


def whole(n: int) -> tuple[ChunkRef, ...]:
    return tuple(ChunkRef(offset=i * 100, size=100, hash=f"{i:064x}") for i in range(n))


def test_records_are_bounded_by_their_refs_the_least_recently_used_going_first():
    e = Edits()
    refs = whole(Edits.MAX_REFS // 4)
    for inode in range(1, 5):
        e.known(inode, version=1, refs=refs, file_id=FILE, gen=1)
    assert e.take(1, version=1, gen=1) is not None  # used: now the most recent
    e.known(5, version=1, refs=refs, file_id=FILE, gen=1)
    assert e.take(2, version=1, gen=1) is None
    assert all(e.take(i, version=1, gen=1) is not None for i in (1, 3, 4, 5))
    e.known(6, version=1, refs=whole(Edits.MAX_REFS + 1), file_id=FILE, gen=1)  # too big to keep
    assert e.take(6, version=1, gen=1) is None
    e.drop(5)
    assert e.take(5, version=1, gen=1) is None


def test_a_list_that_is_not_a_whole_files_is_not_kept():
    e = Edits()
    e.known(7, version=1, refs=REFS[1:], file_id=FILE, gen=1)  # does not start at 0
    assert e.take(7, version=1, gen=1) is None
    e.known(7, version=1, refs=REFS[:3] + REFS[4:], file_id=FILE, gen=1)  # a gap
    assert e.take(7, version=1, gen=1) is None
