"""The `drive` command line: every subcommand prints one clear line on failure and exits non-zero."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mountfs import registry
from mountfs.config import (
    DEFAULT_CACHE_LIMIT,
    ConfigError,
    Credentials,
    MountConfig,
    credentials_path,
    default_cache_dir,
    format_size,
    load_credentials,
    normalize_server_url,
    parse_size,
    save_credentials,
    write_private,
)
from mountfs.progress import ProgressView
from mountfs.registry import MountEntry
from server.config import DEFAULT_PORT, ServerConfig, default_data_dir

# How long `drive mount` waits for the daemon to say the mount is live.
READY_TIMEOUT_S = 30.0
# How long `drive unmount` waits for the daemon to exit once it has accepted the unmount.
EXIT_TIMEOUT_S = 30.0
# Timeout of the requests `drive login` and `drive mount` make to the server.
HTTP_TIMEOUT_S = 10.0
API = "/api/v1"


class CliError(Exception):
    """A failure to report in one line, with an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _server_config(args: argparse.Namespace) -> ServerConfig:
    """Defaults < --config FILE (or $DRIVE_SERVER_CONFIG) < environment < the options given."""
    from server.config import ConfigError as ServerConfigError
    from server.config import load_config

    given = {"data_dir": args.data, "host": getattr(args, "host", None), "port": getattr(args, "port", None),
             "url_ttl_s": getattr(args, "url_ttl", None), "session_ttl_s": getattr(args, "session_ttl", None)}
    try:
        return load_config(args.config, **given)
    except ServerConfigError as e:
        raise CliError(str(e)) from None


def _server(args: argparse.Namespace) -> int:
    from server.main import StartupError, serve

    try:
        serve(_server_config(args), log_level=args.log_level)
    except StartupError as e:
        raise CliError(str(e)) from None
    return 0


def _user_add(args: argparse.Namespace) -> int:
    from server.errors import ApiError
    from server.main import open_store

    store = open_store(_server_config(args))
    try:
        user, token = store.add_user(args.name)
    except ApiError as e:
        raise CliError(e.message) from None
    if args.token_file:
        write_private(args.token_file, token + "\n")
        print(f"created user {user.name}; token written to {args.token_file}")
    else:
        print(f"created user {user.name}; their token (shown once, keep it secret):", file=sys.stderr)
        print(token)
    return 0


def _user_token(args: argparse.Namespace) -> int:
    from server.errors import ApiError
    from server.main import open_store

    store = open_store(_server_config(args))
    try:
        token = store.new_token(args.name)
    except ApiError as e:
        raise CliError(e.message) from None
    if args.token_file:
        write_private(args.token_file, token + "\n")
        print(f"new token for {args.name} written to {args.token_file}")
    else:
        print(token)
    return 0


def _user_list(args: argparse.Namespace) -> int:
    from server.main import open_store

    for name in open_store(_server_config(args)).list_users():
        print(name)
    return 0


# ---- talking to the server (login, mount) ----

class _Unreachable(CliError):
    """The server did not answer at all (as opposed to answering no)."""


def _transport_reason(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text)


def _fetch_me(server: str, token: str, user: str) -> dict[str, Any]:
    """GET /api/v1/me with `token`; CliError (or _Unreachable) with one line if that does not work."""
    import httpx

    try:
        r = httpx.get(server + API + "/me", headers={"Authorization": f"Bearer {token}"},
                      timeout=HTTP_TIMEOUT_S, follow_redirects=True)
    except httpx.TransportError as e:
        raise _Unreachable(f"cannot reach {server} ({_transport_reason(e)})") from None
    if r.status_code in (401, 403):
        raise CliError(f"the server refused this token for {user}")
    if r.status_code != 200:
        try:
            detail = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            detail = r.reason_phrase
        raise CliError(f"{server} answered HTTP {r.status_code} ({detail}): is this a drivefs server?")
    try:
        me = r.json()
        str(me["name"])
    except (ValueError, KeyError, TypeError):
        raise CliError(f"{server} did not answer like a drivefs server") from None
    return me


def _read_token(args: argparse.Namespace, server: str) -> str:
    token = args.token or os.environ.get("DRIVE_TOKEN")
    if not token:
        if not sys.stdin.isatty():
            raise CliError("no token: pass --token, set DRIVE_TOKEN, or run drive login in a terminal to be asked")
        import getpass

        token = getpass.getpass(f"token for {args.user} at {server}: ")
    token = token.strip()
    if not token:
        raise CliError("no token given")
    return token


def _login(args: argparse.Namespace) -> int:
    server = normalize_server_url(args.server)
    token = _read_token(args, server)
    me = _fetch_me(server, token, args.user)
    if me["name"] != args.user:
        raise CliError(f"this token belongs to {me['name']}, not to {args.user}")
    save_credentials(Credentials(server=server, user=args.user, token=token))
    print(f"logged in to {server} as {args.user}")
    return 0


def _credentials() -> Credentials:
    creds = load_credentials()
    if creds is None:
        raise CliError("not logged in: run drive login --server URL --user NAME")
    return creds


# ---- mount points ----

def _unescape_mount_field(field: str) -> str:
    # /proc/self/mounts writes space, tab, newline and backslash as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _proc_mounts() -> dict[str, tuple[str, str]]:
    """Mount point -> (source, fs type) from /proc/self/mounts (the last mount of a point wins)."""
    table: dict[str, tuple[str, str]] = {}
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    table[_unescape_mount_field(parts[1])] = (_unescape_mount_field(parts[0]), parts[2])
    except OSError:
        pass
    return table


def _is_stale(path: str) -> bool:
    """A FUSE mount whose daemon is gone: every access fails with ENOTCONN."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def _is_mounted(path: str) -> bool:
    if path in _proc_mounts() or _is_stale(path):
        return True
    try:
        return os.path.ismount(path)
    except OSError:
        return False


def _abspath(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _check_mountpoint(path: str) -> str:
    """The real path of an empty directory nothing is mounted on; CliError otherwise."""
    shown = _abspath(path)
    try:
        st = os.stat(shown)
    except FileNotFoundError:
        raise CliError(f"{shown} does not exist: create an empty directory to mount on") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise CliError(f"{shown} is a mount whose daemon has stopped: run drive unmount {shown}") from None
        raise CliError(f"cannot use {shown}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CliError(f"{shown} is not a directory")
    real = os.path.realpath(shown)
    if real in _proc_mounts() or os.path.ismount(real):
        raise CliError(f"{shown} is already a mount point")
    outer = registry.find(real)
    if outer is not None:
        raise CliError(f"{shown} is inside the drivefs mount at {outer.mountpoint}")
    try:
        if os.listdir(real):
            raise CliError(f"{shown} is not empty: mount on an empty directory")
    except OSError as e:
        raise CliError(f"cannot use {shown}: {e.strerror}") from None
    if not os.access(real, os.R_OK | os.W_OK | os.X_OK):
        raise CliError(f"{shown} is not writable by you")
    return real


def _check_fuse(allow_other: bool) -> None:
    if not os.path.exists("/dev/fuse"):
        raise CliError("FUSE is not available (no /dev/fuse): install fuse3 (in a container, pass /dev/fuse in)")
    if shutil.which("fusermount3") is None:
        raise CliError("FUSE is not available (no fusermount3): install fuse3")
    if allow_other and os.getuid() != 0:
        try:
            conf = Path("/etc/fuse.conf").read_text()
        except OSError:
            conf = ""
        if not re.search(r"^\s*user_allow_other\b", conf, re.MULTILINE):
            raise CliError("--allow-other needs a line 'user_allow_other' in /etc/fuse.conf")


def _fusermount_lazy(path: str) -> None:
    """Detach a mount even though it is busy or its daemon is gone."""
    tool = shutil.which("fusermount3")
    cmd = [tool, "-u", "-z", path] if tool else ["umount", "-l", path]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CliError(f"{' '.join(cmd)} failed: {e}") from None
    if out.returncode != 0 and _is_mounted(path):
        lines = (out.stderr or out.stdout).strip().splitlines()
        raise CliError(f"{' '.join(cmd)} failed: {lines[-1] if lines else f'exit code {out.returncode}'}")


# ---- drive mount ----

def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _mount(args: argparse.Namespace) -> int:
    mountpoint = _check_mountpoint(args.path)
    creds = _credentials()
    if args.cache_dir:
        cache_dir = Path(_abspath(args.cache_dir))
    else:
        cache_dir = default_cache_dir(creds.server, creds.user)
    cache_dir = Path(os.path.realpath(cache_dir))
    for other in registry.mounts():
        if os.path.realpath(other.cache_dir) == str(cache_dir):
            raise CliError(f"this cache is in use by the mount at {other.mountpoint}: unmount that first, "
                           f"or give this mount its own --cache-dir")
    try:
        _fetch_me(creds.server, creds.token, creds.user)
    except _Unreachable as e:
        if not (cache_dir / "index.db").exists():
            raise CliError(f"cannot reach {creds.server} and there is no cached copy of this drive "
                           f"to work from") from None
        print(f"drive: {e}: working offline from the cached copy; changes upload once it is back",
              file=sys.stderr)
    except CliError as e:
        if str(e).startswith("the server refused"):
            raise CliError(f"the server refused the saved token for {creds.user}: run drive login again") from None
        raise
    _check_fuse(args.allow_other)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise CliError(f"cannot create the cache directory {cache_dir}: {e.strerror}") from None
    config = MountConfig(
        mountpoint=mountpoint, cache_dir=str(cache_dir), server=creds.server, user=creds.user,
        credentials_path=str(credentials_path()), device=args.device or socket.gethostname(),
        cache_limit=args.cache_limit, allow_other=args.allow_other, foreground=args.foreground,
    )
    config_path = cache_dir / "mount.json"
    config.save(config_path)
    if args.foreground:
        return _mount_foreground(config)
    return _mount_background(config, config_path)


def _project_root() -> str:
    """The directory holding the `mountfs` package, so the daemon runs the same code as this CLI."""
    return str(Path(__file__).resolve().parent.parent)


def _log_tail(path: str, offset: int) -> str:
    """The last non-blank line the log gained after `offset` ('' if none)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _mount_background(config: MountConfig, config_path: Path) -> int:
    log_fd = os.open(config.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    log_start = os.fstat(log_fd).st_size
    ready_r, ready_w = os.pipe()
    env = dict(os.environ, DRIVE_READY_FD=str(ready_w))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_project_root(), os.environ.get("PYTHONPATH")]))
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mountfs.daemon", str(config_path)],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, env=env, cwd="/",
            start_new_session=True, pass_fds=(ready_w,),
        )
    except OSError as e:
        os.close(ready_r)
        raise CliError(f"cannot start the mount daemon: {e}") from None
    finally:
        os.close(ready_w)
        os.close(log_fd)
    try:
        line = _wait_ready(ready_r, proc, READY_TIMEOUT_S, config.log_path)
    except BaseException:
        _stop_daemon(proc, config.mountpoint)
        raise
    finally:
        os.close(ready_r)
    if line != "ok":
        _stop_daemon(proc, config.mountpoint)
        if line is None:
            code = proc.poll()
            tail = _log_tail(config.log_path, log_start)
            why = f"exited with code {code}" if code is not None else "closed its ready pipe"
            raise CliError(f"the mount daemon {why} before the mount was ready"
                           + (f": {tail}" if tail else "") + f" (log: {config.log_path})")
        message = line[len("error:"):].strip() if line.startswith("error:") else f"unexpected answer {line!r}"
        raise CliError(f"{message} (log: {config.log_path})")
    registry.register(MountEntry(
        mountpoint=config.mountpoint, pid=proc.pid, control_socket=config.control_socket,
        cache_dir=config.cache_dir, log_path=config.log_path, start_time=registry.process_start_time(proc.pid),
    ))
    proc.returncode = 0  # it is meant to outlive us: keep Popen's destructor from warning about it
    print(f"mounted {config.mountpoint} (log: {config.log_path})")
    return 0


def _wait_ready(fd: int, proc: subprocess.Popen, timeout: float, log_path: str) -> str | None:
    """The daemon's one ready line (without newline), or None if it closed the pipe first.

    CliError on timeout.
    """
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CliError(f"the mount daemon did not get ready within {timeout:g} s (log: {log_path})")
        readable, _, _ = select.select([fd], [], [], min(left, 0.5))
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                try:
                    proc.wait(2)  # it closed the pipe: usually it is exiting
                except subprocess.TimeoutExpired:
                    pass
                return None
            buf += chunk
            if b"\n" in buf:
                return buf.split(b"\n", 1)[0].decode(errors="replace").strip()
        elif proc.poll() is not None:
            return None  # exited, but something else it started holds the pipe open


def _stop_daemon(proc: subprocess.Popen, mountpoint: str) -> None:
    """Stop a daemon that failed to start properly, and detach anything it left mounted."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass
    if _is_mounted(mountpoint):
        try:
            _fusermount_lazy(mountpoint)
        except CliError:
            pass


def _mount_foreground(config: MountConfig) -> int:
    """Run the daemon in this process until it is unmounted; it says itself when the mount is live.

    The mount is registered under our pid from the start, so `drive status` and `drive unmount` find it
    from another terminal (they cannot connect until the control socket is up a moment later).
    """
    from mountfs.daemon import run_foreground

    me = os.getpid()
    registry.register(MountEntry(mountpoint=config.mountpoint, pid=me, control_socket=config.control_socket,
                                 cache_dir=config.cache_dir, log_path=config.log_path,
                                 start_time=registry.process_start_time(me)))
    try:
        code = run_foreground(config)
    finally:
        current = registry.find(config.mountpoint, prune_dead=False)
        if current is not None and current.pid == me:
            registry.unregister(config.mountpoint)
    return code if isinstance(code, int) else 0


# ---- finding mounts (unmount, flush, status) ----

def _sorted_mounts() -> tuple[list[MountEntry], list[MountEntry]]:
    """(live mounts, stale ones: daemon gone but still mounted). Entries of neither kind are dropped."""
    live, stale = [], []
    for entry in registry.mounts(prune_dead=False):
        if entry.alive():
            live.append(entry)
        elif _is_mounted(entry.mountpoint):
            stale.append(entry)
        else:
            registry.unregister(entry.mountpoint)
    return live, stale


def _stale_message(entry: MountEntry) -> str:
    return (f"{entry.mountpoint}: its drivefs daemon has stopped (see {entry.log_path}): "
            f"run drive unmount {entry.mountpoint}")


def mounts_holding(path: str | None) -> list[MountEntry]:
    """The live mount holding PATH, or every live mount. CliError for a PATH not in one."""
    live, stale = _sorted_mounts()
    if path is None:
        for entry in stale:
            print(f"drive: {_stale_message(entry)}", file=sys.stderr)
        return live
    target = os.path.realpath(_abspath(path))
    entry = registry.find(target, prune_dead=False)
    if entry is None:
        raise CliError(f"{_abspath(path)} is not in a drivefs mount")
    if entry in stale:
        raise CliError(_stale_message(entry))
    if entry not in live:
        raise CliError(f"{_abspath(path)} is not in a drivefs mount")
    return [entry]


def _control(entry: MountEntry):  # -> ControlClient (imported lazily: it pulls in trio)
    from mountfs.control import ControlClient

    return ControlClient(entry.control_socket)


# ---- drive flush ----

class _FlushView(ProgressView):
    """Flush progress, and the line that sums a flush up."""

    def summary(self) -> str:
        files, size = self.last.get("total_files", 0), self.last.get("total_bytes", 0)
        if not files and not size:
            return "nothing to flush, every change is committed"
        secs = self.seconds()
        return (f"committed {files} file{'s' if files != 1 else ''}, {format_size(size)} "
                f"in {secs:.1f} s ({format_size(size / secs)}/s)")


def _flush_entry(entry: MountEntry) -> tuple[dict[str, Any], _FlushView]:
    """Flush one mount with progress shown; returns the daemon's result ({"ok", "error"}) and the view."""
    view = _FlushView(os.path.basename(entry.mountpoint) or entry.mountpoint)
    try:
        result = _control(entry).flush(on_progress=view)
    finally:
        view.close()
    if not isinstance(result, dict):
        result = {"ok": False, "error": f"unexpected answer {result!r}"}
    return result, view


def _flush(args: argparse.Namespace) -> int:
    from mountfs.control import ControlError

    entries = mounts_holding(args.path)
    if not entries:
        print("no drivefs mounts to flush", file=sys.stderr)
        return 0
    failed = 0
    for entry in entries:
        try:
            result, view = _flush_entry(entry)
        except ControlError as e:
            print(f"drive: {entry.mountpoint}: {e}", file=sys.stderr)
            failed += 1
            continue
        if result.get("ok"):
            print(f"{entry.mountpoint}: {view.summary()}")
        else:
            print(f"drive: {entry.mountpoint}: {result.get('error') or 'the flush failed'}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


# ---- drive unmount ----

def _wait_gone(entry: MountEntry, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while entry.alive() or _is_mounted(entry.mountpoint):
        if time.monotonic() > deadline:
            raise CliError(f"the drivefs daemon (pid {entry.pid}) has not finished unmounting {entry.mountpoint} "
                           f"after {timeout:g} s (log: {entry.log_path})")
        time.sleep(0.1)


def _unmount(args: argparse.Namespace) -> int:
    from mountfs.control import ControlError, DaemonNotRunning

    shown = _abspath(args.path)
    target = os.path.realpath(shown)
    entry = registry.find(target, prune_dead=False)
    if entry is None or entry.mountpoint != target:
        if entry is not None:
            raise CliError(f"{shown} is inside the drivefs mount at {entry.mountpoint}: "
                           f"run drive unmount {entry.mountpoint}")
        source, fstype = _proc_mounts().get(target, ("", ""))
        if "drivefs" in source or "drivefs" in fstype:
            _fusermount_lazy(target)  # a drivefs mount we have no record of (its registry entry was lost)
            print(f"unmounted {shown} (it was not registered; lazily detached)")
            return 0
        raise CliError(f"{shown} is not a drivefs mount")

    if not entry.alive():
        if _is_mounted(target):
            _fusermount_lazy(target)
            print(f"the drivefs daemon for {shown} had stopped: detached the stale mount "
                  f"(changes not yet uploaded stay in the cache for the next mount)")
        else:
            print(f"{shown} was not mounted any more (its daemon had stopped)")
        registry.unregister(target)
        return 0

    flush = not args.no_flush
    try:
        if flush:
            result, view = _flush_entry(entry)
            if result.get("ok"):
                print(f"{shown}: {view.summary()}")
            else:
                flush = False
                print(f"drive: {shown}: {result.get('error') or 'the flush failed'}; unmounting anyway: "
                      f"the changes stay in the cache and upload at the next mount", file=sys.stderr)
        _control(entry).unmount(flush=flush)
    except DaemonNotRunning:
        raise CliError(f"the drivefs daemon (pid {entry.pid}) for {shown} does not answer on "
                       f"{entry.control_socket} (log: {entry.log_path})") from None
    except ControlError as e:
        raise CliError(f"cannot unmount {shown}: {e}") from None
    _wait_gone(entry, EXIT_TIMEOUT_S)
    registry.unregister(target)
    print(f"unmounted {shown}")
    return 0


# ---- drive status ----

def _when(ts: float | None) -> str:
    if not ts:
        return "never"
    ago = time.time() - ts
    if ago < 0:
        rel = "in the future?"
    elif ago < 90:
        rel = f"{ago:.0f} s ago"
    elif ago < 90 * 60:
        rel = f"{ago / 60:.0f} min ago"
    elif ago < 36 * 3600:
        rel = f"{ago / 3600:.0f} h ago"
    else:
        rel = f"{ago / 86400:.0f} days ago"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f" ({rel})"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _status_lines(st: dict[str, Any]) -> Iterator[str]:
    yield str(st.get("mountpoint"))
    if "error" in st:
        yield f"  error:      {st['error']}"
        return
    yield f"  server:     {st.get('server')} as {st.get('user')}"
    yield f"  device:     {st.get('device')}"
    yield f"  state:      {'online' if st.get('online') else 'offline'}"
    files, size, ops = (int(st.get(k) or 0) for k in ("pending_files", "pending_bytes", "pending_ops"))
    if files or size or ops:
        yield f"  pending:    {_plural(files, 'file')}, {format_size(size)} ({_plural(ops, 'change')})"
    else:
        yield "  pending:    nothing, every change is committed"
    limit = st.get("cache_limit")
    yield f"  cache:      {format_size(int(st.get('cache_bytes') or 0))}" + (
        f" of {format_size(int(limit))}" if limit else "")
    pinned = st.get("pinned") or {}
    if pinned.get("paths"):
        missing = int(pinned.get("missing_bytes") or 0)
        yield (f"  pinned:     {_plural(int(pinned['paths']), 'path')}, {format_size(int(pinned.get('bytes') or 0))} "
               + (f"({format_size(missing)} not on this device yet)" if missing else "(all on this device)"))
    yield f"  last sync:  {_when(st.get('last_sync'))}"
    if st.get("last_error"):
        yield f"  last error: {st['last_error']}"
    uploading = st.get("uploading") or {}
    if isinstance(uploading, dict):
        for name, info in uploading.items():
            if isinstance(info, dict) and "total_bytes" in info:
                info = f"{format_size(int(info.get('done_bytes') or 0))} of {format_size(int(info['total_bytes']))}"
            yield f"  uploading:  {name}: {info}"
    elif uploading:
        yield f"  uploading:  {uploading}"


def _status(args: argparse.Namespace) -> int:
    from mountfs.control import ControlError

    entries = mounts_holding(args.path)
    reports: list[dict[str, Any]] = []
    for entry in entries:
        try:
            st = dict(_control(entry).status())
            st.setdefault("mountpoint", entry.mountpoint)
        except ControlError as e:
            st = {"mountpoint": entry.mountpoint, "pid": entry.pid,
                  "error": f"{e} (daemon pid {entry.pid}, log: {entry.log_path})"}
        reports.append(st)
    if args.json:
        print(json.dumps(reports, indent=2, default=str))
    elif not reports:
        print("no drivefs mounts")
    else:
        print("\n\n".join("\n".join(_status_lines(st)) for st in reports))
    return 1 if any("error" in st for st in reports) else 0


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other failure."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"drive: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="drive", description="drivefs: a cloud drive you mount as a folder.",
                epilog="Client setup: drive login, then drive mount ~/Drive. Run drive COMMAND --help for more.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "server", help="run the server (embedded: SQLite + a local blob directory)",
        description="Run the API server. By default everything lives in the data directory (SQLite and chunk "
                    "files). To run several servers, point them at PostgreSQL and an S3 store, in a config file "
                    "(TOML or JSON: data_dir, host, port, url_ttl_s, session_ttl_s, database_url, blob_url, "
                    "s3_access_key, s3_secret_key) or the environment: DRIVE_DATABASE_URL=postgresql://..., "
                    "DRIVE_BLOB_URL=s3://BUCKET?endpoint=URL&region=R, DRIVE_S3_ACCESS_KEY, DRIVE_S3_SECRET_KEY. "
                    "Options given here win over the environment, which wins over the file.")
    s.add_argument("--config", type=Path, metavar="FILE",
                   help="settings file, TOML or JSON (default: $DRIVE_SERVER_CONFIG if set)")
    s.add_argument("--data", type=Path, help=f"data directory (default: {default_data_dir()})")
    s.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    s.add_argument("--port", type=int, help=f"port to listen on (default: {DEFAULT_PORT})")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--url-ttl", type=float, metavar="SECONDS",
                   help=f"lifetime of signed blob URLs (default: {ServerConfig.url_ttl_s})")
    s.add_argument("--session-ttl", type=float, metavar="SECONDS",
                   help=f"lifetime of resumable upload sessions (default: {ServerConfig.session_ttl_s})")
    s.set_defaults(func=_server)

    u = sub.add_parser("user", help="manage users (run where the server's data directory is)")
    usub = u.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    for name, func, helptext in (("add", _user_add, "create a user and print its token once"),
                                 ("token", _user_token, "issue another token for a user")):
        a = usub.add_parser(name, help=helptext)
        a.add_argument("name")
        a.add_argument("--data", type=Path)
        a.add_argument("--config", type=Path, metavar="FILE", help="the server's settings file (see drive server)")
        a.add_argument("--token-file", help="write the token to this file (mode 0600) instead of printing it")
        a.set_defaults(func=func)
    ls = usub.add_parser("list", help="list users")
    ls.add_argument("--data", type=Path)
    ls.add_argument("--config", type=Path, metavar="FILE", help="the server's settings file (see drive server)")
    ls.set_defaults(func=_user_list)

    lg = sub.add_parser(
        "login", help="check a token with the server and save it for drive mount",
        description="Check TOKEN with the server, then save server, user and token to "
                    "$DRIVE_CONFIG_DIR/credentials.json (default ~/.config/drivefs; mode 0600). "
                    "The token comes from --token, else $DRIVE_TOKEN, else a prompt. A later login replaces "
                    "the saved one.")
    lg.add_argument("--server", required=True, metavar="URL", help="the server, e.g. https://drive.example.com")
    lg.add_argument("--user", required=True, metavar="NAME", help="your user name on that server")
    lg.add_argument("--token", metavar="TOKEN",
                    help="the token from 'drive user add' (visible to other users in ps: prefer "
                         "$DRIVE_TOKEN or the prompt)")
    lg.set_defaults(func=_login)

    m = sub.add_parser(
        "mount", help="mount your drive on an empty directory",
        description="Mount the drive of the logged-in user on PATH, an empty directory, and return once it is "
                    "live; a background daemon serves it (log: CACHE_DIR/mount.log). Files are fetched on "
                    "first read and kept in a local cache; changes are kept there until uploaded. If the "
                    "server cannot be reached, the cached copy is mounted and changes upload once it is back.")
    m.add_argument("path", metavar="PATH", help="an existing, empty directory")
    m.add_argument("--foreground", action="store_true",
                   help="run the daemon in this terminal until unmounted or interrupted (Ctrl-C)")
    m.add_argument("--cache-dir", metavar="DIR",
                   help="where the local copy lives (default: $DRIVE_CACHE_DIR or ~/.cache/drivefs, "
                        "then USER@HOST_PORT)")
    m.add_argument("--cache-limit", type=_size_arg, default=DEFAULT_CACHE_LIMIT, metavar="SIZE",
                   help="how much file content to keep cached, e.g. 500M or 20G (K/M/G/T are powers of "
                        "1024; default 10G)")
    m.add_argument("--device", metavar="NAME",
                   help="the name this computer's changes are recorded under (default: the host name)")
    m.add_argument("--allow-other", action="store_true",
                   help="let other users on this computer see the mount (needs user_allow_other in "
                        "/etc/fuse.conf)")
    m.set_defaults(func=_mount)

    um = sub.add_parser(
        "unmount", help="upload pending changes, then unmount",
        description="Upload every pending change of the mount at PATH (showing progress), then unmount it "
                    "and wait until its daemon has exited. If the upload fails, or with --no-flush, the mount "
                    "still goes away, and pending changes stay in the cache and upload at the next mount: "
                    "nothing is discarded. A mount whose daemon has died is detached (fusermount3 -u -z).")
    um.add_argument("path", metavar="PATH", help="the mount point")
    um.add_argument("--no-flush", action="store_true",
                    help="do not wait for uploads first (pending changes wait in the cache for the next mount)")
    um.set_defaults(func=_unmount)

    fl = sub.add_parser(
        "flush", help="wait until every local change is uploaded and committed",
        description="Block until every change made in the mount holding PATH (default: in every mount) is "
                    "committed on the server, with a progress bar on a terminal. Exits non-zero if that "
                    "cannot happen now, e.g. while the server is unreachable; the changes stay pending.")
    fl.add_argument("path", metavar="PATH", nargs="?", help="a mount point or a path inside one")
    fl.set_defaults(func=_flush)

    st = sub.add_parser(
        "status", help="show mounts: online or not, pending uploads, cache use, last sync",
        description="For the mount holding PATH (default: every mount), show its server and user, device, "
                    "whether it is online, changes waiting to upload, cache use against its limit, the last "
                    "sync with the server and the last error.")
    st.add_argument("path", metavar="PATH", nargs="?", help="a mount point or a path inside one")
    st.add_argument("--json", action="store_true", help="print a JSON list of status objects instead")
    st.set_defaults(func=_status)
    from mountfs import history, pins, sharing

    sharing.add_commands(sub)
    history.add_commands(sub)
    pins.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from mountfs.apicli import CommandError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CliError, ConfigError, CommandError) as e:
        print(f"drive: {e}", file=sys.stderr)
        return getattr(e, "code", 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`drive status | head`): not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as e:
        # mountfs.control pulls in trio, so it is only imported by the commands that talk to a daemon.
        control = sys.modules.get("mountfs.control")
        if control is not None and isinstance(e, control.ControlError):
            print(f"drive: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
