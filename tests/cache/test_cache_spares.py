"""SpareFiles: empty data files made ahead of time, handed out under their new name."""

from __future__ import annotations

import os
import time
from pathlib import Path

from cache.spares import PREFIX, SpareFiles


def _spares_on_disk(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(PREFIX))


def test_fill_makes_empty_files_and_take_renames_one_to_its_new_name(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path, keep=4)
    assert spares.fill() == 4
    assert len(_spares_on_disk(tmp_path)) == 4
    assert all(os.path.getsize(tmp_path / n) == 0 for n in _spares_on_disk(tmp_path))

    fd = spares.take(tmp_path / "17")
    assert fd is not None
    try:
        os.pwrite(fd, b"hello", 0)
    finally:
        os.close(fd)
    assert (tmp_path / "17").read_bytes() == b"hello"
    assert len(spares) == 3 and len(_spares_on_disk(tmp_path)) == 3
    assert spares.fill() == 1


def test_a_taken_spare_replaces_a_stray_file_and_is_dated_now(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path, keep=1)
    spares.fill()
    hour_ago = time.time_ns() - 3600 * 10**9
    for name in _spares_on_disk(tmp_path):
        os.utime(tmp_path / name, ns=(hour_ago, hour_ago))
    (tmp_path / "5").write_bytes(b"left by a rolled-back create")

    before = time.time() - 5  # the kernel's file clock is coarse
    fd = spares.take(tmp_path / "5")
    assert fd is not None
    os.close(fd)
    st = os.stat(tmp_path / "5")
    assert st.st_size == 0
    assert st.st_mtime >= before


def test_take_without_spares_returns_none_and_skips_one_removed_behind_its_back(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path, keep=2)
    assert spares.take(tmp_path / "1") is None
    spares.fill()
    os.unlink(tmp_path / _spares_on_disk(tmp_path)[0])
    fd = spares.take(tmp_path / "1")
    assert fd is not None
    os.close(fd)
    assert (tmp_path / "1").exists()
    assert spares.take(tmp_path / "2") is None


def test_on_low_is_called_once_half_the_spares_are_gone(tmp_path: Path) -> None:
    calls: list[int] = []
    spares = SpareFiles(tmp_path, keep=4, on_low=lambda: calls.append(len(spares)))
    spares.fill()
    for inode in (1, 2):
        os.close(spares.take(tmp_path / str(inode)))
    assert calls == [2]
    os.close(spares.take(tmp_path / "3"))
    assert calls == [2, 1]


def test_adopt_takes_up_an_earlier_runs_spares_and_removes_a_written_one(tmp_path: Path) -> None:
    earlier = SpareFiles(tmp_path, keep=3)
    earlier.fill()
    written = tmp_path / _spares_on_disk(tmp_path)[0]
    written.write_bytes(b"should never happen")

    later = SpareFiles(tmp_path, keep=3)
    later.adopt()
    assert len(later) == 2
    assert not written.exists()
    assert later.fill() == 1
    assert len(_spares_on_disk(tmp_path)) == 3


def test_recycle_empties_a_data_file_keeps_its_inode_as_a_spare_and_take_hands_it_out(tmp_path: Path) -> None:
    spares = SpareFiles(tmp_path, keep=0)
    old = tmp_path / "12"
    old.write_bytes(b"a deleted file's bytes" * 1000)
    ino = old.stat().st_ino

    assert spares.recycle(old)
    assert not old.exists() and len(spares) == 1
    [name] = _spares_on_disk(tmp_path)
    assert (tmp_path / name).stat().st_size == 0 and (tmp_path / name).stat().st_ino == ino

    fd = spares.take(tmp_path / "13")
    assert fd is not None
    os.close(fd)
    assert os.stat(tmp_path / "13").st_ino == ino
    assert os.stat(tmp_path / "13").st_size == 0
    assert _spares_on_disk(tmp_path) == []


def test_recycle_leaves_the_file_alone_once_the_pool_is_full_and_a_missing_file_is_done(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("cache.spares.RECYCLED_MAX", 2)
    spares = SpareFiles(tmp_path, keep=2)
    spares.fill()
    extra = tmp_path / "7"
    extra.write_bytes(b"kept")
    assert not spares.recycle(extra)
    assert extra.read_bytes() == b"kept" and len(spares) == 2
    os.close(spares.take(tmp_path / "9"))
    assert spares.recycle(tmp_path / "8")  # no local copy: nothing to keep or delete
    assert len(spares) == 1
