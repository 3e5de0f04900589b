"""Content-defined chunking: bounds, reassembly, determinism, locality of edits, bounded memory, recuts."""

import hashlib
import io
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.chunker import (
    MAX_CHUNK,
    MIN_CHUNK,
    ChunkRef,
    chunk_file,
    chunk_stream,
    chunk_views,
    content_hash,
    hash_bytes,
    is_chunk_hash,
    manifest_of,
    recut,
    untouched,
)
from cache.chunker import _cuts_from

MiB = 2**20
REPO = Path(__file__).resolve().parents[2]


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks_of(data: bytes) -> list[tuple[ChunkRef, bytes]]:
    return list(chunk_stream(io.BytesIO(data)))


class ShortReader:
    """A stream that never returns more than the sizes it is given, like a pipe or a socket."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._sizes = sizes
        self._turn = 0

    def _next_size(self, wanted: int) -> int:
        size = self._sizes[self._turn % len(self._sizes)]
        self._turn += 1
        return min(size, wanted)

    def read(self, n: int) -> bytes:
        part = bytes(self._data[self._pos : self._pos + self._next_size(n)])
        self._pos += len(part)
        return part


class ShortReadintoReader(ShortReader):
    def readinto(self, buf: memoryview) -> int:
        part = self.read(len(buf))
        buf[: len(part)] = part
        return len(part)


def assert_well_formed(data: bytes, chunks: list[tuple[ChunkRef, bytes]]) -> None:
    assert b"".join(part for _ref, part in chunks) == data
    offset = 0
    for i, (ref, part) in enumerate(chunks):
        assert ref.offset == offset
        assert ref.size == len(part) > 0
        assert ref.hash == hash_bytes(part)
        assert ref.size <= MAX_CHUNK
        if i < len(chunks) - 1:
            assert ref.size >= MIN_CHUNK
        offset += ref.size
    assert offset == len(data)


def test_empty_input_has_no_chunks(tmp_path):
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert chunks_of(b"") == []
    assert manifest_of(empty) == []


def test_hash_is_sha256_hex():
    assert hash_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_sizes_within_bounds_and_reassembly_for_varied_content():
    random_part = random_bytes(9 * MiB, seed=1)
    zeros = bytes(9 * MiB)
    pattern = b"drivefs!" * (MiB // 8) * 3
    data = random_part + zeros + pattern + random_bytes(123_457, seed=2)
    chunks = chunks_of(data)
    assert_well_formed(data, chunks)
    # Long runs of zeros have no natural cut points: they must be capped at MAX_CHUNK, not merged.
    assert any(ref.size == MAX_CHUNK for ref, _part in chunks)
    assert len(chunks) > 10


def test_small_input_is_one_chunk():
    data = random_bytes(MIN_CHUNK - 1, seed=3)
    chunks = chunks_of(data)
    assert [ref for ref, _part in chunks] == [ChunkRef(0, len(data), hash_bytes(data))]


def test_same_bytes_give_same_chunks_whatever_the_read_sizes(tmp_path):
    data = random_bytes(14 * MiB, seed=4)
    expected = [ref for ref, _part in chunks_of(data)]
    assert len(expected) > 5

    path = tmp_path / "file"
    path.write_bytes(data)
    assert manifest_of(path) == expected
    assert [ref for ref, _part in chunk_file(path)] == expected

    for sizes in ([4093], [65_537], [3 * MiB + 1], [1, 7, 100_000, 5 * MiB, 333]):
        for reader_class in (ShortReader, ShortReadintoReader):
            reader = reader_class(data, sizes)
            got = [ref for ref, _part in chunk_stream(reader)]
            assert got == expected, (reader_class.__name__, sizes)


def test_small_and_in_memory_streams_cut_like_the_stream_cutter():
    # chunk_stream takes streams of at most MIN_CHUNK whole and cuts those that fit its buffer from
    # memory: the chunks must be exactly the stream cutter's, or dedupe against older uploads breaks.
    from cache.chunker import _new_cutter

    for size in (1, MIN_CHUNK, MIN_CHUNK + 1, 3 * MiB + 5, 2 * MAX_CHUNK, 2 * MAX_CHUNK + 1, 11 * MiB):
        data = random_bytes(size, seed=size)
        reference = [ChunkRef(c.offset, len(c.data), hash_bytes(bytes(c.data)))
                     for c in _new_cutter().cut_stream(io.BytesIO(data))]
        assert [ref for ref, _part in chunks_of(data)] == reference, size
        assert [ref for ref, _part in chunk_stream(ShortReader(data, [65_537]))] == reference, size


def test_views_read_on_the_spot_are_the_chunks():
    # chunk_views hands out views into the cutter's buffer instead of copies: read before the next chunk
    # is asked for, they must be exactly chunk_stream's chunks, for in-memory and streamed inputs alike.
    for size in (1, MIN_CHUNK + 1, 3 * MiB + 5, 2 * MAX_CHUNK + 1, 11 * MiB):
        data = random_bytes(size, seed=size)
        views = [(ref, bytes(view)) for ref, view in chunk_views(ShortReadintoReader(data, [65_537]))]
        assert views == chunks_of(data), size
        assert_well_formed(data, views)


def content_hash_of(data: bytes) -> str:
    return content_hash([ref for ref, _part in chunks_of(data)])


def test_content_hash_of_an_empty_or_one_chunk_file_is_its_sha256():
    for data in (b"", b"x", random_bytes(MIN_CHUNK, seed=6)):
        assert content_hash_of(data) == hashlib.sha256(data).hexdigest()


def test_content_hash_of_a_file_of_several_chunks_names_its_content():
    data = random_bytes(12 * MiB, seed=7)
    refs = [ref for ref, _part in chunks_of(data)]
    assert len(refs) > 3
    h = content_hash(refs)
    assert h == content_hash(manifest_of_bytes(data, reads=[65_537]))  # however the file is read
    assert is_chunk_hash(h) and h != hashlib.sha256(data).hexdigest()
    # Any change of content changes it: one byte, one byte more, or the same chunks in another order.
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 1
    assert content_hash_of(bytes(flipped)) != h
    assert content_hash_of(data + b"\0") != h
    assert content_hash(refs[1:] + refs[:1]) != h
    # It names a list of chunks: a file whose bytes are the chunks' hashes and sizes does not share it.
    listed = b"".join(bytes.fromhex(r.hash) + r.size.to_bytes(8, "big") for r in refs)
    assert content_hash_of(listed) != h


def manifest_of_bytes(data: bytes, reads: list[int]) -> list[ChunkRef]:
    return [ref for ref, _part in chunk_stream(ShortReadintoReader(data, reads))]


def test_inserting_one_byte_changes_only_the_chunks_around_it():
    data = random_bytes(64 * MiB, seed=5)
    middle = len(data) // 2
    edited = data[:middle] + b"\x00" + data[middle:]

    before = [ref for ref, _part in chunks_of(data)]
    after = [ref for ref, _part in chunks_of(edited)]
    old_hashes = {ref.hash for ref in before}
    new_hashes = {ref.hash for ref in after}

    changed = [ref for ref in after if ref.hash not in old_hashes]
    assert 1 <= len(changed) <= 2
    assert len(old_hashes - new_hashes) <= 2
    # The changed chunks are the ones covering the edit, not somewhere else in the file.
    for ref in changed:
        assert ref.offset <= middle + MAX_CHUNK and ref.offset + ref.size >= middle - MAX_CHUNK
    assert len(before) > 40


@st.composite
def inputs(draw):
    if draw(st.booleans()):
        data = draw(st.binary(max_size=300))
    else:
        size = draw(st.integers(min_value=0, max_value=6 * MiB))
        data = random_bytes(size, seed=draw(st.integers(min_value=0, max_value=2**32)))
    sizes = draw(st.lists(st.integers(min_value=1, max_value=5 * MiB), min_size=1, max_size=4))
    return data, sizes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs())
def test_property_chunks_reassemble_to_the_input(case):
    data, sizes = case
    chunks = list(chunk_stream(ShortReadintoReader(data, sizes)))
    assert_well_formed(data, chunks)
    assert [ref for ref, _part in chunks] == [ref for ref, _part in chunks_of(data)]


MEMORY_PROBE = textwrap.dedent(
    """
    import sys
    from cache.chunker import manifest_of

    def peak_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])

    before = peak_kib()
    refs = manifest_of(sys.argv[1])
    after = peak_kib()
    print(before, after, len(refs), sum(ref.size for ref in refs))
    """
)


def test_chunking_a_large_file_keeps_memory_bounded(tmp_path):
    path = tmp_path / "large"
    size = 200 * MiB
    with open(path, "wb") as f:
        for i in range(size // MiB):
            f.write(random_bytes(MiB, seed=i))

    # A fresh interpreter, so that the peak measures chunking alone and not this test's own buffers.
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    before_kib, after_kib, count, total = map(int, result.stdout.split())
    assert total == size
    assert count >= size // MAX_CHUNK
    assert (after_kib - before_kib) * 1024 < 48 * MiB
    assert after_kib * 1024 < 120 * MiB


# ---- recut: only the changed parts of a file cut again ------------------------------------------------

_END = 2**62  # "to the end of the file", as a truncation records it


def edited(data: bytes, edits: list[tuple]) -> tuple[bytes, list[tuple[int, int]]]:
    """Apply ("write", offset, bytes) and ("truncate", size) edits; return the result and the ranges a
    mount records for them."""
    buf, changed = bytearray(data), []
    for edit in edits:
        if edit[0] == "write":
            _, offset, part = edit
            if offset > len(buf):
                buf.extend(bytes(offset - len(buf)))
            buf[offset:offset + len(part)] = part
            changed.append((offset, offset + len(part)))
        else:
            _, size = edit
            del buf[size:]
            buf.extend(bytes(size - len(buf)))
            changed.append((size, _END))
    return bytes(buf), changed


def recut_refs(new: bytes, old: bytes, changed) -> tuple[list[ChunkRef], list[bool], int]:
    read = 0

    def read_at(offset: int, n: int) -> bytes:
        nonlocal read
        read += min(n, max(0, len(new) - offset))
        return new[offset:offset + n]

    out = list(recut(read_at, len(new), untouched(len(new), refs_of(old), changed)))
    return [ref for ref, _ in out], [view is None for _, view in out], read


def refs_of(data: bytes) -> list[ChunkRef]:
    return [ref for ref, _ in chunk_views(io.BytesIO(data))]


# Where an edit lands is drawn as a fraction of the file's size (up to 1.2: past its end), so that
# edits fall inside files of every size rather than mostly past the end of small ones.
edits_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 1200), st.integers(1, 600 * 1024), st.integers(0, 2**32)),
        st.tuples(st.just("truncate"), st.integers(0, 1200)),
    ),
    min_size=0, max_size=4,
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(size=st.one_of(st.integers(3 * MiB, 10 * MiB), st.integers(0, 2 * MiB)), seed=st.integers(0, 2**32),
       edits=edits_strategy)
def test_recut_gives_the_chunks_of_a_whole_cut(size, seed, edits):
    old = random_bytes(size, seed)
    at = lambda permille: size * permille // 1000  # noqa: E731
    steps = [("truncate", at(e[1])) if e[0] == "truncate" else ("write", at(e[1]), random_bytes(e[2], e[3]))
             for e in edits]
    new, changed = edited(old, steps)
    refs, reused, _ = recut_refs(new, old, changed)
    assert refs == refs_of(new)
    old_refs = set(refs_of(old))
    assert all(ref in old_refs for ref, again in zip(refs, reused) if again)


def test_recut_of_one_changed_byte_reads_a_few_chunks_and_takes_the_rest_as_known():
    old = random_bytes(48 * MiB, 7)
    new, changed = edited(old, [("write", 20 * MiB, b"x")])
    refs, reused, read = recut_refs(new, old, changed)
    assert refs == refs_of(new)
    assert read <= 3 * MiB  # the chunk it falls in, and not much more ahead
    assert 1 <= reused.count(False) <= 3 and reused.count(True) >= len(refs) - 3


def test_recut_of_an_append_cuts_from_the_old_last_chunk_on():
    old = random_bytes(30 * MiB, 8)
    new, changed = edited(old, [("write", len(old), random_bytes(3 * MiB, 9))])
    refs, reused, read = recut_refs(new, old, changed)
    assert refs == refs_of(new)
    assert read <= 4 * MiB + 3 * MiB  # from the old last chunk on, with a little read ahead
    old_refs = refs_of(old)
    assert refs[:len(old_refs) - 1] == old_refs[:-1] and all(reused[:len(old_refs) - 1])


def test_recut_of_changes_scattered_over_many_chunks_reads_little_more_than_it_cuts():
    old = random_bytes(48 * MiB, 11)
    new, changed = edited(old, [("write", r.offset + 10, b"y") for r in refs_of(old)[::4]])
    refs, reused, read = recut_refs(new, old, changed)
    assert refs == refs_of(new)
    cut = sum(ref.size for ref, again in zip(refs, reused) if not again)
    assert cut < len(new) / 2 and read <= 2 * cut


def test_recut_with_nothing_changed_reads_nothing_and_a_truncation_cuts_the_tail_again():
    old = random_bytes(20 * MiB, 10)
    refs, reused, read = recut_refs(old, old, [])
    assert refs == refs_of(old) and all(reused) and read == 0
    # Cut to 5 MiB, then grown back with zeros: everything from the cut on is new.
    new, changed = edited(old, [("truncate", 5 * MiB), ("truncate", 20 * MiB)])
    refs, reused, _ = recut_refs(new, old, changed)
    assert refs == refs_of(new)



def test_recut_cuts_right_whatever_it_has_read_ahead_when_it_starts_a_chunk():
    # Data whose chunks end at every distance from where a read ahead stops, including a chunk left
    # with exactly what was read ahead and no cut in it: the cutter must read on, not try again.
    old = random_bytes(40 * MiB, 13)
    for first_read in (256 * 1024, 512 * 1024, 2 * MiB):
        for offset in (0, 5 * MiB + 1, 17 * MiB):
            new, changed = edited(old, [("write", offset, b"z")])
            with patch("cache.chunker._FIRST_READ", first_read):
                refs, _, _ = recut_refs(new, old, changed)
            assert refs == refs_of(new)


class FixedCutter:
    """A stand-in for FastCDC that cuts every `every` bytes (or at the end of what it is given)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.windows: list[int] = []

    def cut_buf(self, buf):
        self.windows.append(len(buf))
        yield SimpleNamespace(length=min(self.every, len(buf)))


def test_cutting_reads_on_when_what_is_in_hand_holds_no_cut():
    # Chunks of exactly twice the first read ahead: the second chunk starts with that much in hand and
    # no cut in it, so the cutter reads more before it looks again, never at the same bytes twice.
    data = random_bytes(10 * MiB, 14)
    calls = []

    def read_at(offset: int, n: int) -> bytes:
        calls.append(n)
        assert len(calls) < 100, "the cutter keeps asking without getting anywhere"
        return data[offset:offset + n]

    cutter = FixedCutter(2 * MiB)
    with patch("cache.chunker._new_cutter", lambda: cutter):
        cuts = [ref for ref, _ in _cuts_from(read_at, 0, len(data))]
    assert [(r.offset, r.size) for r in cuts] == [(i * 2 * MiB, 2 * MiB) for i in range(5)]
    assert sum(calls) == len(data)  # every byte read once
    windows = cutter.windows
    assert all(a != b for a, b in zip(windows, windows[1:]))  # no window looked at twice in a row
