"""`drive user add` and `drive user token`, the admin commands that make accounts, run as a user would run
them beside a live server (the fixtures make their users in-process, the same way these commands do)."""

from __future__ import annotations

import itertools
import os
import stat
import subprocess
from pathlib import Path

from tests.fixtures.server import ServerProcess, drive_cmd

_names = itertools.count(1)


def _user_cmd(server: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(drive_cmd("user", *args, "--data", str(server.data_dir)), capture_output=True,
                          text=True, env=server.env, timeout=60)


def _me(server: ServerProcess, token: str) -> str:
    with server.client(token) as c:
        r = c.get("/api/v1/me")
        assert r.status_code == 200, r.text
        return r.json()["name"]


def _unique() -> str:
    return f"cli{next(_names)}-{os.getpid()}"


def test_user_add_prints_a_token_that_works(server: ServerProcess):
    name = _unique()
    out = _user_cmd(server, "add", name)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token and token not in out.stderr  # only the token on stdout, for scripts to capture
    assert "keep it secret" in out.stderr
    assert _me(server, token) == name


def test_user_add_writes_the_token_to_a_private_file(server: ServerProcess, tmp_path: Path):
    name, path = _unique(), tmp_path / "token"
    out = _user_cmd(server, "add", name, "--token-file", str(path))
    assert out.returncode == 0, out.stderr
    token = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in out.stdout + out.stderr
    assert _me(server, token) == name


def test_an_existing_name_is_refused_clearly(server: ServerProcess):
    name = _unique()
    assert _user_cmd(server, "add", name).returncode == 0
    again = _user_cmd(server, "add", name)
    assert again.returncode != 0
    assert name in again.stderr and "Traceback" not in again.stderr
    assert again.stdout == ""


def test_user_token_issues_another_working_token(server: ServerProcess):
    name = _unique()
    first = _user_cmd(server, "add", name).stdout.strip()
    out = _user_cmd(server, "token", name)
    assert out.returncode == 0, out.stderr
    second = out.stdout.strip()
    assert second != first
    assert _me(server, second) == name == _me(server, first)
    missing = _user_cmd(server, "token", _unique())
    assert missing.returncode != 0 and "no user named" in missing.stderr
