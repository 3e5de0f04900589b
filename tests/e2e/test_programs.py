"""Real programs working on the mount: git, SQLite in WAL mode, tar."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.helpers import download, server_node

pytestmark = pytest.mark.client_side  # once, in the embedded pass: see tests/conftest.py


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, **kw)
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out


def test_git_commit_status_log_fsck(mount):
    repo = mount.path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}

    def git(*args: str) -> str:
        return run(["git", *args], cwd=repo, env=env).stdout

    git("init", "-q", "-b", "main")
    git("config", "user.name", "Test User")
    git("config", "user.email", "test@example.com")
    (repo / "README.md").write_text("# hello\n")
    (repo / "src").mkdir()
    (repo / "src" / "main.py").write_text("print('hi')\n")
    (repo / "data.bin").write_bytes(os.urandom(300_000))
    git("add", "-A")
    git("commit", "-q", "-m", "first commit")
    assert git("status", "--porcelain") == ""
    assert "first commit" in git("log", "--oneline")

    (repo / "README.md").write_text("# hello\n\nmore text\n")
    (repo / "src" / "util.py").write_text("X = 1\n")
    os.remove(repo / "data.bin")
    assert git("status", "--porcelain") != ""
    git("add", "-A")
    git("commit", "-q", "-m", "second commit")
    assert git("status", "--porcelain") == ""
    log = git("log", "--format=%s")
    assert log.splitlines() == ["second commit", "first commit"]
    assert git("show", "HEAD~1:README.md") == "# hello\n"
    run(["git", "fsck", "--full", "--strict"], cwd=repo, env=env)


def _check_db(path: Path, expected: int) -> None:
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT count(*), count(DISTINCT v) FROM t").fetchone() == (expected, expected)
    finally:
        con.close()


def test_sqlite_wal_survives_remount_without_cache(mount):
    db = mount.path / "db" / "app.sqlite"
    db.parent.mkdir()
    con = sqlite3.connect(db, isolation_level=None)  # autocommit unless a transaction is begun
    assert con.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    con.execute("PRAGMA synchronous=FULL")  # every commit fsyncs the WAL
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE, blob BLOB)")
    n = 0
    for _ in range(5):
        con.execute("BEGIN")
        for _ in range(2000):
            con.execute("INSERT INTO t (v, blob) VALUES (?, ?)", (f"row-{n}", random.randbytes(64)))
            n += 1
        con.execute("COMMIT")
    for _ in range(300):  # single-row transactions: one fsync each
        con.execute("INSERT INTO t (v, blob) VALUES (?, ?)", (f"row-{n}", random.randbytes(64)))
        n += 1
    assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert con.execute("SELECT count(*) FROM t").fetchone()[0] == n == 10_300
    con.close()  # the last connection checkpoints the WAL into the main file
    _check_db(db, n)

    mount.flush()
    mount.unmount()
    shutil.rmtree(mount.cache_dir)
    mount.mount()
    _check_db(db, n)


def _make_tree(root: Path) -> None:
    rnd = random.Random(1234)
    for i in range(12):
        d = root / f"dir{i}" / f"sub{i % 3}" / "deeper"
        d.mkdir(parents=True)
        for j in range(16):
            (d.parent / f"file{j}.txt").write_text(f"file {i}/{j}\n" * rnd.randint(1, 200))
        (d / "leaf.dat").write_bytes(rnd.randbytes(rnd.randint(0, 5000)))
    (root / "big1.bin").write_bytes(rnd.randbytes(3 * 2**20 + 17))
    (root / "dir3" / "big2.bin").write_bytes(rnd.randbytes(2**20))
    (root / "empty").write_bytes(b"")
    (root / "empty-dir").mkdir()
    for p in (root / "dir1" / "run.sh", root / "dir2" / "sub2" / "tool"):
        p.write_text("#!/bin/sh\necho hi\n")
        p.chmod(0o755)
    (root / "dir0" / "ro.txt").write_text("read only\n")
    (root / "dir0" / "ro.txt").chmod(0o444)
    os.symlink("dir1/run.sh", root / "link-to-run")
    os.symlink("does/not/exist", root / "dangling")


def test_tar_extract_into_mount_matches(mount, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(src)
    archive = tmp_path / "src.tar"
    run(["tar", "cf", str(archive), "-C", str(src), "."], cwd=tmp_path)
    dest = mount.path / "unpacked"
    dest.mkdir()
    run(["tar", "xf", str(archive), "-C", str(dest)], cwd=tmp_path)
    out = subprocess.run(["diff", "-r", "--no-dereference", str(src), str(dest)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    checked = ("dir1/run.sh", "dir2/sub2/tool", "dir0/ro.txt", "big1.bin", "empty", "dir4", "dir5/sub2/deeper")
    for rel in checked:
        a, b = os.lstat(src / rel), os.lstat(dest / rel)
        assert stat.S_IMODE(a.st_mode) == stat.S_IMODE(b.st_mode), rel
        assert int(a.st_mtime) == int(b.st_mtime), rel  # tar keeps whole seconds
        if stat.S_ISREG(a.st_mode):
            assert a.st_size == b.st_size, rel
    assert os.readlink(dest / "link-to-run") == "dir1/run.sh"
    assert (dest / "link-to-run").read_text() == "#!/bin/sh\necho hi\n"
    assert os.readlink(dest / "dangling") == "does/not/exist"
    count = sum(len(files) + len(dirs) for _, dirs, files in os.walk(dest))
    assert count > 230

    mount.flush()
    url, token = mount.server.url, mount.token
    assert download(url, token, "unpacked/big1.bin") == (src / "big1.bin").read_bytes()
    assert download(url, token, "unpacked/dir3/big2.bin") == (src / "dir3" / "big2.bin").read_bytes()
    assert download(url, token, "unpacked/dir7/sub1/file9.txt") == (src / "dir7/sub1/file9.txt").read_bytes()
    assert download(url, token, "unpacked/empty") == b""
    for rel in checked:
        node = server_node(url, token, f"unpacked/{rel}")
        assert node["mode"] & 0o7777 == stat.S_IMODE(os.lstat(src / rel).st_mode), rel
        assert node["mtime_ns"] // 10**9 == int(os.lstat(src / rel).st_mtime), rel
    assert server_node(url, token, "unpacked/link-to-run")["target"] == "dir1/run.sh"
