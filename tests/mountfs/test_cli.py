"""The `drive` client commands, run as real processes: login against a real server, mount's refusals,
and status/flush/unmount against a stand-in daemon that serves the real control socket."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mountfs import cli, registry
from mountfs.config import (
    Credentials,
    MountConfig,
    ConfigError,
    default_cache_dir,
    default_control_socket,
    format_size,
    load_credentials,
    parse_size,
    save_credentials,
)
from mountfs.registry import MountEntry
from tests.fixtures.server import ServerProcess, drive_cmd, free_port


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Config and cache directories of the test's own, for this process and the commands it runs."""
    monkeypatch.setenv("DRIVE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("DRIVE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DRIVE_TOKEN", raising=False)
    return dict(os.environ)


def drive(env: dict[str, str], *args: str, timeout: float = 60, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(drive_cmd(*args), capture_output=True, text=True, env={**env, **extra_env},
                          stdin=subprocess.DEVNULL, timeout=timeout)


def one_error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drive: "), out.stderr
    return lines[0]


# ---- sizes and config files ----

def test_parse_size() -> None:
    assert parse_size("10G") == 10 << 30
    assert parse_size("500M") == 500 << 20
    assert parse_size("500m") == 500 << 20
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("64KB") == 64 << 10
    assert parse_size("4096") == 4096
    assert parse_size(" 2 T ") == 2 << 40
    for bad in ("", "G", "10X", "-1G", "0", "1.2.3M", "ten"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_format_size() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(10 << 30) == "10.0 GiB"
    assert format_size(3 << 40) == "3.0 TiB"


def test_mount_config_round_trip(tmp_path: Path) -> None:
    cfg = MountConfig(mountpoint=str(tmp_path / "mnt"), cache_dir=str(tmp_path / "c"), server="http://h:1",
                      user="ann", credentials_path=str(tmp_path / "cred.json"), cache_limit=123)
    assert cfg.log_path == str(tmp_path / "c" / "mount.log")
    assert cfg.control_socket == str(tmp_path / "c" / "control.sock")
    assert cfg.device  # the host name
    path = tmp_path / "c" / "mount.json"
    cfg.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert MountConfig.load(path) == cfg
    newer = json.loads(cfg.to_json()) | {"some_future_option": 1}
    assert MountConfig.from_json(json.dumps(newer)) == cfg
    with pytest.raises(ConfigError):
        MountConfig.from_json('{"mountpoint": "/x"}')


def test_long_cache_dir_gets_a_short_control_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    sock = default_control_socket(deep)
    assert len(os.fsencode(sock)) < 108
    assert sock == default_control_socket(deep)  # stable, so every command finds the same one


def test_default_cache_dir(env: dict[str, str], tmp_path: Path) -> None:
    assert default_cache_dir("https://drive.example.com", "ann") == tmp_path / "cache" / "ann@drive.example.com_443"
    assert default_cache_dir("http://127.0.0.1:8765", "bo") == tmp_path / "cache" / "bo@127.0.0.1_8765"


def test_credentials_readable_by_others_are_refused(env: dict[str, str], tmp_path: Path) -> None:
    path = save_credentials(Credentials("http://h:1", "ann", "tok"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_credentials() == Credentials("http://h:1", "ann", "tok")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        load_credentials()
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_error_line(drive(env, "mount", str(empty)))  # a command that needs them says so in one line
    assert line == f"drive: {path} is readable by others (mode 0644): run 'chmod 600 {path}', " \
                   "and get a new token if others may have read it"


# ---- registry ----

def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def entry(mountpoint: str, pid: int, start_time: int | None = None) -> MountEntry:
    return MountEntry(mountpoint=mountpoint, pid=pid, control_socket=mountpoint + ".sock",
                      cache_dir=mountpoint + ".cache", log_path=mountpoint + ".log", start_time=start_time)


def test_registry_prunes_dead_pids_and_finds_by_path(env: dict[str, str], tmp_path: Path) -> None:
    live_mp, dead_mp, reused_mp = (str(tmp_path / n) for n in ("live", "dead", "reused"))
    for mp in (live_mp, dead_mp, reused_mp):
        os.mkdir(mp)
    me = os.getpid()
    registry.register(entry(live_mp, me, registry.process_start_time(me)))
    registry.register(entry(dead_mp, dead_pid()))
    registry.register(entry(reused_mp, me, start_time=1))  # our pid, but recorded for an older process

    assert {e.mountpoint for e in registry.mounts(prune_dead=False)} == {live_mp, dead_mp, reused_mp}
    removed = registry.prune()
    assert {e.mountpoint for e in removed} == {dead_mp, reused_mp}
    assert [e.mountpoint for e in registry.mounts()] == [live_mp]
    assert len(list(registry.registry_dir().iterdir())) == 1

    os.makedirs(os.path.join(live_mp, "a", "b"))
    assert registry.find(live_mp).pid == me
    assert registry.find(os.path.join(live_mp, "a", "b")).mountpoint == live_mp
    assert registry.find(os.path.join(live_mp, "a", "..", "a")).mountpoint == live_mp
    assert registry.find(live_mp + "-sibling") is None
    assert registry.find(dead_mp) is None
    os.symlink(live_mp, tmp_path / "link")
    assert registry.find(tmp_path / "link" / "a").mountpoint == live_mp

    registry.unregister(live_mp)
    assert registry.mounts() == []


def test_pid_alive() -> None:
    assert registry.pid_alive(os.getpid())
    assert registry.pid_alive(os.getpid(), registry.process_start_time(os.getpid()))
    assert not registry.pid_alive(dead_pid())
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    time.sleep(0.5)
    try:
        assert not registry.pid_alive(zombie.pid)  # exited, not yet reaped
    finally:
        zombie.wait()


# ---- drive login ----

def test_login_saves_private_credentials(server: ServerProcess, env: dict[str, str], tmp_path: Path) -> None:
    name, token = server.add_user()
    out = drive(env, "login", "--server", server.url + "/", "--user", name, "--token", token)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"logged in to {server.url} as {name}"
    path = tmp_path / "config" / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"server": server.url, "user": name, "token": token}

    # The token can come from the environment instead (so it is not in ps).
    other, other_token = server.add_user()
    out = drive(env, "login", "--server", server.url, "--user", other, DRIVE_TOKEN=other_token)
    assert out.returncode == 0, out.stderr
    assert load_credentials() == Credentials(server.url, other, other_token)


def test_login_refusals(server: ServerProcess, env: dict[str, str], tmp_path: Path) -> None:
    name, token = server.add_user()
    other, _ = server.add_user()
    line = one_error_line(drive(env, "login", "--server", server.url, "--user", name, "--token", "drv_wrong"))
    assert line == f"drive: the server refused this token for {name}"
    line = one_error_line(drive(env, "login", "--server", server.url, "--user", other, "--token", token))
    assert line == f"drive: this token belongs to {name}, not to {other}"
    down = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(drive(env, "login", "--server", down, "--user", name, "--token", token))
    assert line.startswith(f"drive: cannot reach {down}")
    line = one_error_line(drive(env, "login", "--server", server.url, "--user", name))  # stdin is not a TTY
    assert "no token" in line
    line = one_error_line(drive(env, "login", "--server", "drive.example.com", "--user", name, "--token", token))
    assert "not a server URL" in line
    assert not (tmp_path / "config" / "credentials.json").exists()


# ---- drive mount: what it refuses ----

def test_mount_refusals(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert "does not exist" in one_error_line(drive(env, "mount", str(missing)))
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "not a directory" in one_error_line(drive(env, "mount", str(afile)))
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    assert "not empty" in one_error_line(drive(env, "mount", str(full)))
    assert "already a mount point" in one_error_line(drive(env, "mount", "/proc"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "not logged in" in one_error_line(drive(env, "mount", str(empty)))
    assert "not a size" in one_error_line(drive(env, "mount", str(empty), "--cache-limit", "lots"))


def test_mount_refuses_unreachable_server_without_cache(env: dict[str, str], tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    save_credentials(Credentials(down, "ann", "drv_whatever"))
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_error_line(drive(env, "mount", str(empty)))
    assert line == f"drive: cannot reach {down} and there is no cached copy of this drive to work from"
    assert registry.mounts() == []


def test_mount_refuses_a_revoked_token(server: ServerProcess, env: dict[str, str], tmp_path: Path) -> None:
    name, _ = server.add_user()
    save_credentials(Credentials(server.url, name, "drv_revoked"))
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_error_line(drive(env, "mount", str(empty)))
    assert line == f"drive: the server refused the saved token for {name}: run drive login again"


# ---- drive mount: the ready pipe ----

@pytest.mark.parametrize("script, expect", [
    ("os.write(fd, b'ok\\n'); time.sleep(30)", "ok"),
    ("os.write(fd, b'error: cannot open the cache\\n'); sys.exit(1)", "error: cannot open the cache"),
    ("sys.exit(3)", None),
])
def test_wait_ready(script: str, expect: str | None, tmp_path: Path) -> None:
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", f"import os, sys, time; fd = {w}; {script}"],
                            pass_fds=(w,), start_new_session=True)
    os.close(w)
    try:
        assert cli._wait_ready(r, proc, 20, str(tmp_path / "log")) == expect
    finally:
        os.close(r)
        cli._stop_daemon(proc, str(tmp_path))
    assert proc.poll() is not None


def test_wait_ready_times_out(tmp_path: Path) -> None:
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], pass_fds=(w,),
                            start_new_session=True)
    os.close(w)
    try:
        with pytest.raises(cli.CliError, match="did not get ready within 0.5 s"):
            cli._wait_ready(r, proc, 0.5, str(tmp_path / "log"))
    finally:
        os.close(r)
        cli._stop_daemon(proc, str(tmp_path))


# ---- status, flush, unmount against a stand-in daemon ----

FAKE_DAEMON = textwrap.dedent("""
    import json, sys, time
    import trio
    from mountfs.control import ControlServer

    sock, mountpoint, record, fail = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "fail"

    class Handler:
        async def status(self):
            return {"mountpoint": mountpoint, "server": "http://drive.test", "user": "ann", "device": "laptop",
                    "online": not fail, "pending_ops": 5, "pending_files": 2, "pending_bytes": 3 << 20,
                    "cache_bytes": 1 << 30, "cache_limit": 10 << 30, "last_sync": time.time() - 120,
                    "last_error": "cannot reach http://drive.test" if fail else None, "uploading": {}}

        async def flush(self, report):
            if fail:
                return {"ok": False, "error": "5 changes still pending: cannot reach http://drive.test"}
            for i in range(1, 4):
                await report({"done_bytes": i << 20, "total_bytes": 3 << 20, "done_files": i * 2 // 3,
                              "total_files": 2})
                await trio.sleep(0.01)
            return {"ok": True, "error": None}

        async def unmount(self, flush):
            with open(record, "w") as f:
                json.dump({"unmount_flush": flush}, f)
            self.scope.cancel()

    async def main():
        handler = Handler()
        async with trio.open_nursery() as nursery:
            handler.scope = nursery.cancel_scope
            await nursery.start(ControlServer(sock, handler).serve)
            print("ready", flush=True)

    trio.run(main)
""")


@pytest.fixture
def fake_mount(env: dict[str, str], tmp_path: Path):
    """Start a stand-in daemon on a plain directory and register it as `drive mount` would."""
    procs = []

    def start(name: str = "Drive", fail: bool = False) -> tuple[str, subprocess.Popen, Path]:
        mp = tmp_path / name
        mp.mkdir()
        sock, record = tmp_path / f"{name}.sock", tmp_path / f"{name}.record"
        proc = subprocess.Popen([sys.executable, "-c", FAKE_DAEMON, str(sock), str(mp), str(record),
                                 "fail" if fail else "ok"], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        registry.register(MountEntry(mountpoint=str(mp), pid=proc.pid, control_socket=str(sock),
                                     cache_dir=str(tmp_path / f"{name}.cache"), log_path=str(tmp_path / "log"),
                                     start_time=registry.process_start_time(proc.pid)))
        return str(mp), proc, record

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_status(fake_mount, env: dict[str, str]) -> None:
    mp, _, _ = fake_mount()
    out = drive(env, "status")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == mp
    text = out.stdout
    assert "http://drive.test as ann" in text and "laptop" in text and "online" in text
    assert "2 files, 3.0 MiB (5 changes)" in text
    assert "1.0 GiB of 10.0 GiB" in text
    assert "min ago" in text or "s ago" in text
    assert "last error" not in text

    out = drive(env, "status", os.path.join(mp, "some", "inner", "path"), "--json")
    assert out.returncode == 0, out.stderr
    [st] = json.loads(out.stdout)
    assert st["mountpoint"] == mp and st["pending_files"] == 2


def test_status_and_flush_without_mounts(env: dict[str, str], tmp_path: Path) -> None:
    out = drive(env, "status")
    assert (out.returncode, out.stdout.strip()) == (0, "no drivefs mounts")
    out = drive(env, "status", "--json")
    assert (out.returncode, json.loads(out.stdout)) == (0, [])
    out = drive(env, "flush")
    assert out.returncode == 0 and "no drivefs mounts" in out.stderr
    assert "is not in a drivefs mount" in one_error_line(drive(env, "flush", str(tmp_path)))
    assert "is not a drivefs mount" in one_error_line(drive(env, "unmount", str(tmp_path)))


def test_flush(fake_mount, env: dict[str, str]) -> None:
    mp, _, _ = fake_mount()
    out = drive(env, "flush")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{mp}: committed 2 files, 3.0 MiB in ")


def test_flush_that_cannot_finish(fake_mount, env: dict[str, str]) -> None:
    mp, _, _ = fake_mount(fail=True)
    line = one_error_line(drive(env, "flush", mp))
    assert line == f"drive: {mp}: 5 changes still pending: cannot reach http://drive.test"
    out = drive(env, "status", mp)
    assert "offline" in out.stdout and "last error: cannot reach http://drive.test" in out.stdout


def test_unmount(fake_mount, env: dict[str, str]) -> None:
    mp, proc, record = fake_mount()
    out = drive(env, "unmount", mp)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{mp}: committed 2 files, 3.0 MiB in " + out.stdout.split(" in ", 1)[1]
                                       .splitlines()[0], f"unmounted {mp}"]
    assert json.loads(record.read_text()) == {"unmount_flush": True}
    assert proc.wait(5) == 0
    assert registry.mounts(prune_dead=False) == []


def test_unmount_without_flush_and_with_a_failing_flush(fake_mount, env: dict[str, str]) -> None:
    mp, proc, record = fake_mount()
    out = drive(env, "unmount", mp, "--no-flush")
    assert (out.returncode, out.stdout.strip()) == (0, f"unmounted {mp}"), out.stderr
    assert json.loads(record.read_text()) == {"unmount_flush": False}

    mp, proc, record = fake_mount("Offline", fail=True)
    out = drive(env, "unmount", mp)
    assert out.returncode == 0, out.stderr
    assert "5 changes still pending" in out.stderr and "stay in the cache" in out.stderr
    assert json.loads(record.read_text()) == {"unmount_flush": False}
    assert registry.mounts(prune_dead=False) == []


def test_unmount_after_the_daemon_died(fake_mount, env: dict[str, str], tmp_path: Path) -> None:
    mp, proc, _ = fake_mount()
    proc.kill()
    proc.wait()
    out = drive(env, "status")
    assert out.returncode == 0 and out.stdout.strip() == "no drivefs mounts"  # not mounted: entry dropped

    mp, proc, _ = fake_mount("Again")
    proc.kill()
    proc.wait()
    out = drive(env, "unmount", mp)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{mp} was not mounted any more (its daemon had stopped)"
    assert registry.mounts(prune_dead=False) == []
    assert "inside the drivefs mount" not in out.stderr


def test_mount_inside_a_mount_or_on_a_busy_cache(fake_mount, env: dict[str, str], tmp_path: Path) -> None:
    mp, _, _ = fake_mount()
    os.mkdir(os.path.join(mp, "sub"))
    line = one_error_line(drive(env, "mount", os.path.join(mp, "sub")))
    assert line == f"drive: {mp}/sub is inside the drivefs mount at {mp}"
    save_credentials(Credentials("http://127.0.0.1:1", "ann", "drv_x"))
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_error_line(drive(env, "mount", str(empty), "--cache-dir", str(tmp_path / "Drive.cache")))
    assert line.startswith(f"drive: this cache is in use by the mount at {mp}")


def test_unmount_a_path_inside_a_mount(fake_mount, env: dict[str, str]) -> None:
    mp, _, _ = fake_mount()
    os.mkdir(os.path.join(mp, "sub"))
    line = one_error_line(drive(env, "unmount", os.path.join(mp, "sub")))
    assert line == f"drive: {mp}/sub is inside the drivefs mount at {mp}: run drive unmount {mp}"


# ---- the real thing, where FUSE is available ----

def _fuse_missing() -> str | None:
    import importlib.util
    import shutil

    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return "FUSE is not available here"
    if importlib.util.find_spec("mountfs.daemon") is None:
        return "no mountfs.daemon yet"
    return None


@pytest.mark.skipif(_fuse_missing() is not None, reason=_fuse_missing() or "")
def test_mount_status_flush_unmount(server: ServerProcess, env: dict[str, str], tmp_path: Path) -> None:
    name, token = server.add_user()
    assert drive(env, "login", "--server", server.url, "--user", name, DRIVE_TOKEN=token).returncode == 0
    mp = tmp_path / "Drive"
    mp.mkdir()
    out = drive(env, "mount", str(mp), "--cache-limit", "100M", "--device", "testbox")
    try:
        assert out.returncode == 0, out.stderr
        log = tmp_path / "cache" / f"{name}@127.0.0.1_{server.port}" / "mount.log"
        assert out.stdout.strip() == f"mounted {mp} (log: {log})"
        assert "already a mount point" in one_error_line(drive(env, "mount", str(mp)))

        (mp / "hello.txt").write_bytes(b"hello\n" * 1000)
        out = drive(env, "flush", str(mp))
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith(f"{mp}: ")

        out = drive(env, "status", "--json")
        [st] = json.loads(out.stdout)
        assert (st["mountpoint"], st["user"], st["device"], st["cache_limit"]) == (str(mp), name, "testbox", 100 << 20)
        assert st["online"] is True and st["pending_files"] == 0

        out = drive(env, "unmount", str(mp))
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[-1] == f"unmounted {mp}"
        assert not os.path.ismount(mp) and registry.mounts(prune_dead=False) == []
    finally:
        if os.path.ismount(mp) or cli._is_stale(str(mp)):
            subprocess.run(["fusermount3", "-u", "-z", str(mp)])
        for e in registry.mounts(prune_dead=False):
            if e.alive():
                os.kill(e.pid, 15)
