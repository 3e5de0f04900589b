"""Everyday file work through a real mount: create, read, append, overwrite, truncate, rename, delete."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess

import pytest


def server_file(mount, path: str) -> bytes:
    """Download a file's current version straight from the server, bypassing the mount."""
    from tests.e2e.helpers import download

    return download(mount.server.url, mount.token, path)


def test_create_read_append_overwrite_truncate(mount):
    p = mount.path / "notes.txt"
    p.write_text("hello\n")
    assert p.read_text() == "hello\n"
    with open(p, "a") as f:
        f.write("world\n")
    assert p.read_text() == "hello\nworld\n"
    with open(p, "r+b") as f:
        f.seek(0)
        f.write(b"HELLO")
    assert p.read_bytes() == b"HELLO\nworld\n"
    os.truncate(p, 3)
    assert p.read_bytes() == b"HEL"
    assert p.stat().st_size == 3
    mount.flush()
    assert server_file(mount, "notes.txt") == b"HEL"


def test_folders_rename_and_delete(mount):
    d = mount.path / "a" / "b"
    d.mkdir(parents=True)
    (d / "f.bin").write_bytes(os.urandom(100_000))
    os.rename(mount.path / "a", mount.path / "c")
    assert (mount.path / "c" / "b" / "f.bin").stat().st_size == 100_000
    assert not (mount.path / "a").exists()
    with pytest.raises(OSError) as e:
        os.rmdir(mount.path / "c")
    assert e.value.errno == errno.ENOTEMPTY
    shutil.rmtree(mount.path / "c")
    assert sorted(os.listdir(mount.path)) == ["Shared with me"]
    mount.flush()
    from tests.e2e.helpers import server_listing

    assert server_listing(mount.server.url, mount.token, "") == []


def test_rename_over_and_noreplace(mount):
    a, b = mount.path / "a.txt", mount.path / "b.txt"
    a.write_text("new")
    b.write_text("old")
    mount.flush()
    os.replace(a, b)
    assert b.read_text() == "new" and not a.exists()
    a.write_text("again")
    subprocess.run(["mv", "--no-clobber", str(a), str(b)], capture_output=True)
    assert b.read_text() == "new" and a.exists()
    mount.flush()
    assert server_file(mount, "b.txt") == b"new"


def test_editor_style_save_keeps_identity_and_history(mount):
    doc = mount.path / "doc.txt"
    doc.write_text("v1")
    mount.flush()
    from tests.e2e.helpers import server_node

    before = server_node(mount.server.url, mount.token, "doc.txt")
    tmp = mount.path / ".doc.txt.swp"
    with open(tmp, "w") as f:
        f.write("v2 edited")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, doc)
    assert doc.read_text() == "v2 edited"
    mount.flush()
    after = server_node(mount.server.url, mount.token, "doc.txt")
    assert after["id"] == before["id"]
    assert after["version"] == before["version"] + 1
    assert server_file(mount, "doc.txt") == b"v2 edited"


def test_links_and_devices_refused_symlinks_work(mount):
    (mount.path / "t").write_text("x")
    with pytest.raises(OSError) as e:
        os.link(mount.path / "t", mount.path / "hard")
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        os.mkfifo(mount.path / "fifo")
    assert e.value.errno == errno.EPERM
    os.symlink("t", mount.path / "soft")
    assert os.readlink(mount.path / "soft") == "t"
    assert (mount.path / "soft").read_text() == "x"


def test_a_deleted_files_local_copy_is_emptied_and_kept_for_the_next_new_file(mount):
    """Deleting a file keeps its local copy's inode, emptied, as a spare data file for later creates (on
    ext4 without a journal, making files right after deleting others is several times dearer)."""
    from tests.e2e.test_sync import eventually

    files = mount.cache_dir / "files"
    p = mount.path / "old.txt"
    p.write_bytes(b"private bytes" * 500)
    mount.flush()
    data_ino = (files / str(p.stat().st_ino)).stat().st_ino

    def spare_with_that_inode() -> list:
        return [q for q in files.iterdir() if q.name.startswith(".spare-") and q.stat().st_ino == data_ino]

    p.unlink()
    mount.flush()
    eventually(lambda: bool(spare_with_that_inode()), timeout=10, what="the deleted file's copy kept as a spare")
    assert spare_with_that_inode()[0].stat().st_size == 0
    assert sorted(os.listdir(mount.path)) == ["Shared with me"]
    (mount.path / "new.txt").write_bytes(b"fresh")
    assert (mount.path / "new.txt").read_bytes() == b"fresh"
    mount.flush()
    assert server_file(mount, "new.txt") == b"fresh"


def test_written_file_survives_cache_loss(mount):
    data = os.urandom(9 * 2**20 + 123)
    (mount.path / "big.bin").write_bytes(data)
    mount.unmount()
    shutil.rmtree(mount.cache_dir)
    mount.mount()
    assert (mount.path / "big.bin").read_bytes() == data


def test_writing_into_an_uncached_file_fetches_it_whole_first(mount):
    """A write in place needs the whole local copy: every chunk comes back, a repeated one at each of its
    offsets, some from the chunk cache and the rest from the server, before the write lands."""
    block = os.urandom(3 * 2**20)
    data = bytearray(os.urandom(2**20) + block + os.urandom(5 * 2**20) + block + os.urandom(777))
    (mount.path / "big.bin").write_bytes(data)
    mount.unmount()
    shutil.rmtree(mount.cache_dir)
    mount.mount()
    with open(mount.path / "big.bin", "rb") as f:  # a part of it cached, as after reading its start
        assert f.read(2**20) == data[: 2**20]
    middle = len(data) // 2
    with open(mount.path / "big.bin", "r+b") as f:
        f.seek(middle)
        f.write(b"!")
        f.seek(0, os.SEEK_END)
        f.write(b"tail")
        os.fsync(f.fileno())
    data[middle:middle + 1] = b"!"
    data += b"tail"
    assert (mount.path / "big.bin").read_bytes() == data
    assert (mount.path / "big.bin").stat().st_size == len(data)
    mount.flush()
    assert server_file(mount, "big.bin") == data
