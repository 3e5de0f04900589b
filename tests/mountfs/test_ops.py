"""POSIX details through a real mount: errno of each failure, attributes, sizes, names, the root folder."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import stat

import pytest

from tests.e2e.helpers import download, server_listing, server_node

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def fails(err: int, fn, *args, **kwargs) -> None:
    with pytest.raises(OSError) as e:
        fn(*args, **kwargs)
    assert e.value.errno == err, f"{fn.__name__}{args}: expected {errno.errorcode[err]}, got {e.value!r}"


def test_errno_of_tree_operations(mount):
    m = mount.path
    (m / "dir" / "sub").mkdir(parents=True)
    (m / "dir" / "sub" / "f").write_text("in sub")
    (m / "empty").mkdir()
    (m / "file").write_text("a file")

    fails(errno.ENOENT, os.stat, m / "missing")
    fails(errno.ENOENT, open, m / "missing")
    fails(errno.ENOENT, os.unlink, m / "missing")
    fails(errno.ENOENT, os.rmdir, m / "missing")
    fails(errno.ENOENT, os.rename, m / "missing", m / "other")
    fails(errno.ENOENT, os.mkdir, m / "missing" / "x")

    fails(errno.EEXIST, os.mkdir, m / "dir")
    fails(errno.EEXIST, os.mkdir, m / "file")
    fails(errno.EEXIST, os.open, m / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fails(errno.EEXIST, os.symlink, "x", m / "dir")

    fails(errno.ENOTEMPTY, os.rmdir, m / "dir")
    fails(errno.ENOTEMPTY, os.rename, m / "empty", m / "dir")  # dir over a non-empty dir
    fails(errno.ENOTDIR, os.rmdir, m / "file")
    fails(errno.EISDIR, os.unlink, m / "dir")
    fails(errno.ENOTDIR, os.stat, m / "file" / "x")

    fails(errno.EISDIR, os.rename, m / "file", m / "empty")  # file over a dir
    fails(errno.ENOTDIR, os.rename, m / "empty", m / "file")  # dir over a file
    fails(errno.EINVAL, os.rename, m / "dir", m / "dir" / "sub" / "inside")  # into its own subtree
    fails(errno.EINVAL, os.rename, m / "dir", m / "dir" / "sub")

    # Nothing above changed anything.
    assert sorted(os.listdir(m)) == ["Shared with me", "dir", "empty", "file"]
    assert (m / "dir" / "sub" / "f").read_text() == "in sub"
    assert (m / "file").read_text() == "a file"

    # A dir over an empty dir replaces it.
    (m / "empty2").mkdir()
    os.rename(m / "empty", m / "empty2")
    assert sorted(os.listdir(m)) == ["Shared with me", "dir", "empty2", "file"]
    mount.flush()
    assert server_listing(mount.server.url, mount.token, "") == ["dir", "empty2", "file"]


def test_rename_noreplace(mount):
    m = mount.path
    (m / "a").write_text("A")
    (m / "b").write_text("B")
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("this libc has no renameat2")
    libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]

    def renameat2(src, dst, flags: int) -> None:
        if libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    fails(errno.EEXIST, renameat2, m / "a", m / "b", RENAME_NOREPLACE)
    fails(errno.EINVAL, renameat2, m / "a", m / "b", RENAME_EXCHANGE)  # refused, not half done
    assert (m / "a").read_text() == "A" and (m / "b").read_text() == "B"
    renameat2(m / "a", m / "c", RENAME_NOREPLACE)
    assert not (m / "a").exists() and (m / "c").read_text() == "A"
    mount.flush()
    assert server_listing(mount.server.url, mount.token, "") == ["b", "c"]
    assert download(mount.server.url, mount.token, "b") == b"B"


def test_chmod_and_utime_reach_the_server(mount):
    m = mount.path
    f, d = m / "f.sh", m / "d"
    f.write_text("#!/bin/sh\n")
    d.mkdir()
    os.chmod(f, 0o751)
    os.chmod(d, 0o700)
    t_file = 1_500_000_000_123_456_789
    t_dir = 1_400_000_000_000_000_000
    os.utime(f, ns=(t_file, t_file))
    os.utime(d, ns=(t_dir, t_dir))
    st = os.stat(f)
    assert stat.S_IMODE(st.st_mode) == 0o751 and stat.S_ISREG(st.st_mode)
    assert st.st_mtime_ns == t_file
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700 and os.stat(d).st_mtime_ns == t_dir
    assert os.access(f, os.X_OK)
    mount.flush()
    url, token = mount.server.url, mount.token
    node = server_node(url, token, "f.sh")
    assert node["mode"] & 0o7777 == 0o751 and node["mtime_ns"] == t_file
    node = server_node(url, token, "d")
    assert node["mode"] & 0o7777 == 0o700 and node["mtime_ns"] == t_dir

    # Again on a file that is already on the server and unchanged.
    os.chmod(f, 0o600)
    os.utime(f, ns=(t_dir, t_dir))
    assert os.stat(f).st_mtime_ns == t_dir
    mount.flush()
    node = server_node(url, token, "f.sh")
    assert node["mode"] & 0o7777 == 0o600 and node["mtime_ns"] == t_dir
    assert download(url, token, "f.sh") == b"#!/bin/sh\n"


def test_sizes_truncate_append_sparse(mount):
    m = mount.path
    # truncate up: the new part reads as zeros, also where old bytes used to be
    p = m / "t.bin"
    p.write_bytes(b"x" * 1000)
    os.truncate(p, 10)
    os.truncate(p, 300_000)
    assert p.stat().st_size == 300_000
    assert p.read_bytes() == b"x" * 10 + bytes(300_000 - 10)
    with open(p, "r+b") as f:
        f.truncate(400_000)
        f.seek(400_000)
        f.write(b"end")
    assert p.read_bytes() == b"x" * 10 + bytes(400_000 - 10) + b"end"

    # O_APPEND: every write lands at the end, also from two handles
    q = m / "log.txt"
    q.write_bytes(b"start\n")
    f1 = os.open(q, os.O_WRONLY | os.O_APPEND)
    f2 = os.open(q, os.O_WRONLY | os.O_APPEND)
    try:
        for i in range(5):
            os.write(f1, f"one {i}\n".encode())
            os.write(f2, f"two {i}\n".encode())
    finally:
        os.close(f1)
        os.close(f2)
    expected_log = b"start\n" + b"".join(f"one {i}\ntwo {i}\n".encode() for i in range(5))
    assert q.read_bytes() == expected_log

    # a large sparse file: 1 byte at 100 MiB
    s = m / "sparse.bin"
    big = 100 * 2**20
    with open(s, "wb") as f:
        f.seek(big)
        f.write(b"!")
    assert s.stat().st_size == big + 1
    with open(s, "rb") as f:
        assert f.read(4096) == bytes(4096)
        f.seek(big // 2)
        assert f.read(1 << 20) == bytes(1 << 20)
        f.seek(big - 10)
        assert f.read() == bytes(10) + b"!"

    mount.flush()
    url, token = mount.server.url, mount.token
    assert download(url, token, "t.bin") == b"x" * 10 + bytes(400_000 - 10) + b"end"
    assert download(url, token, "log.txt") == expected_log
    assert server_node(url, token, "sparse.bin")["size"] == big + 1
    remote_sparse = download(url, token, "sparse.bin")
    assert len(remote_sparse) == big + 1 and remote_sparse[-1:] == b"!" and remote_sparse.count(0) == big
    del remote_sparse

    # The same on files whose bytes are only on the server (a fresh cache): they are fetched first.
    mount.unmount()
    shutil.rmtree(mount.cache_dir)
    mount.mount()
    os.truncate(q, 6)
    with open(q, "ab") as f:
        f.write(b"appended\n")
    assert q.read_bytes() == b"start\nappended\n"
    os.truncate(p, 500_000)
    assert p.read_bytes() == b"x" * 10 + bytes(400_000 - 10) + b"end" + bytes(100_000 - 3)
    mount.flush()
    assert download(url, token, "log.txt") == b"start\nappended\n"
    assert download(url, token, "t.bin") == p.read_bytes()


def test_names(mount):
    m = mount.path
    names = ["café.txt", "日本語のファイル", "emoji 🎉 party", "spaces and 'quotes' \"x\"", "a\u0301-combining",
             "ß-Σ-ǅ", "-leading-dash", ".hidden"]
    for n in names:
        (m / n).write_text(n)
    (m / "Ordner ü").mkdir()
    os.rename(m / "café.txt", m / "Ordner ü" / "thé.txt")
    expected = sorted(["Shared with me", "Ordner ü", *[n for n in names if n != "café.txt"]])
    assert sorted(os.listdir(m)) == expected
    for n in names[1:]:
        assert (m / n).read_text() == n

    n255 = "a" * 255
    (m / n255).write_text("long")
    u255 = "é" * 127 + "z"  # 254 + 1 bytes in UTF-8
    assert len(u255.encode()) == 255
    (m / u255).mkdir()
    assert (m / n255).read_text() == "long" and (m / u255).is_dir()

    fails(errno.EINVAL, os.open, os.fsencode(m) + b"/bad-\xff-utf8", os.O_CREAT | os.O_WRONLY)  # names are UTF-8
    fails(errno.EINVAL, os.mkdir, os.fsencode(m) + b"/\xc3")
    fails(errno.ENOENT, os.stat, os.fsencode(m) + b"/bad-\xff-utf8")  # no such name can exist: not EIO
    fails(errno.ENOENT, os.unlink, os.fsencode(m) + b"/bad-\xff-utf8")

    n256 = "b" * 256
    u256 = "日" * 85 + "z"  # 255 + 1 bytes
    assert len(u256.encode()) == 256
    fails(errno.ENAMETOOLONG, open, m / n256, "w")
    fails(errno.ENAMETOOLONG, os.mkdir, m / u256)
    fails(errno.ENAMETOOLONG, os.symlink, "x", m / n256)
    fails(errno.ENAMETOOLONG, os.rename, m / n255, m / n256)
    fails(errno.ENAMETOOLONG, os.stat, m / n256)
    assert n255 in os.listdir(m) and n256 not in os.listdir(m)

    mount.flush()
    url, token = mount.server.url, mount.token
    assert set(server_listing(url, token, "")) == set(expected) - {"Shared with me"} | {n255, u255}
    assert server_listing(url, token, "Ordner ü") == ["thé.txt"]
    assert download(url, token, n255) == b"long"
    assert download(url, token, "emoji 🎉 party") == "emoji 🎉 party".encode()


def test_shared_with_me_is_fixed_and_statfs_works(mount):
    m = mount.path
    shared = m / "Shared with me"
    assert shared.is_dir() and os.listdir(shared) == []
    fails(errno.EEXIST, os.mkdir, shared)
    fails(errno.EEXIST, os.open, shared, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fails(errno.EEXIST, os.symlink, "x", shared)
    with pytest.raises(OSError) as e:
        os.rmdir(shared)
    assert e.value.errno in (errno.EACCES, errno.EPERM, errno.EBUSY)
    fails(errno.EISDIR, os.unlink, shared)
    with pytest.raises(OSError) as e:
        os.rename(shared, m / "renamed")
    assert e.value.errno in (errno.EACCES, errno.EPERM, errno.EBUSY)
    (m / "d").mkdir()
    with pytest.raises(OSError) as e:
        os.rename(m / "d", shared)
    assert e.value.errno in (errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTEMPTY)
    fails(errno.EACCES, os.mkdir, shared / "x")
    fails(errno.EACCES, open, shared / "x", "w")
    assert sorted(os.listdir(m)) == ["Shared with me", "d"]
    assert shared.is_dir()

    st = os.statvfs(m)
    assert st.f_bsize > 0 and st.f_blocks > 0 and st.f_namemax == 255
    assert 0 <= st.f_bavail <= st.f_blocks
    shutil.disk_usage(m)
    mount.flush()
    assert server_listing(mount.server.url, mount.token, "") == ["d"]


def test_unlinked_while_open_and_open_truncate(mount):
    m = mount.path
    fd = os.open(m / "tmpfile", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        os.write(fd, b"before unlink ")
        os.unlink(m / "tmpfile")
        assert "tmpfile" not in os.listdir(m)
        fails(errno.ENOENT, os.stat, m / "tmpfile")
        os.write(fd, b"after unlink")
        assert os.pread(fd, 100, 0) == b"before unlink after unlink"
        assert os.fstat(fd).st_size == len(b"before unlink after unlink")
        (m / "tmpfile").write_text("a new file under the old name")  # the name is free again
    finally:
        os.close(fd)
    assert (m / "tmpfile").read_text() == "a new file under the old name"

    p = m / "trunc.txt"
    p.write_text("long original content\n" * 100)
    mount.flush()
    with open(p, "w") as f:  # O_TRUNC
        assert os.fstat(f.fileno()).st_size == 0
        f.write("short")
    assert p.read_text() == "short"
    mount.flush()
    url, token = mount.server.url, mount.token
    assert server_listing(url, token, "") == ["tmpfile", "trunc.txt"]
    assert download(url, token, "tmpfile") == b"a new file under the old name"
    assert download(url, token, "trunc.txt") == b"short"
