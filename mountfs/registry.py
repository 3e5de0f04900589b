"""The per-user list of live mounts: one JSON file per mount point under `<config>/mounts/`.

`drive mount` adds an entry once its daemon says the mount is live; `drive unmount` removes it. An
entry whose daemon is gone (crashed, killed, machine rebooted) is stale: `mounts()` and `find()` drop
such entries unless asked not to (`drive unmount` asks, to clean up a stale FUSE mount).

A pid can be reused after its process dies, so an entry also records the process start time (from
`/proc/<pid>/stat`), and a pid that now names a younger process counts as dead.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from mountfs.config import config_dir, write_private

__all__ = ["MountEntry", "find", "mounts", "pid_alive", "process_start_time", "prune", "register",
           "registry_dir", "unregister"]


@dataclass(frozen=True)
class MountEntry:
    """One live mount: where, which process serves it, and how to reach that process."""

    mountpoint: str
    pid: int
    control_socket: str
    cache_dir: str
    log_path: str
    start_time: int | None = None  # clock ticks after boot, /proc/<pid>/stat field 22

    def alive(self) -> bool:
        return pid_alive(self.pid, self.start_time)


def registry_dir() -> Path:
    return config_dir() / "mounts"


def _entry_path(mountpoint: str) -> Path:
    mountpoint = os.path.abspath(mountpoint)
    digest = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
    tail = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(mountpoint))[:40]
    return registry_dir() / f"{tail or 'root'}-{digest}.json"


def _proc_stat(pid: int) -> tuple[bytes, int] | None:
    """(state letter, start time in clock ticks after boot) from /proc/<pid>/stat, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split after the last ')'.
    rest = raw[raw.rfind(b")") + 2:].split()
    try:
        return rest[0], int(rest[19])
    except (IndexError, ValueError):
        return None


def process_start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot), or None if there is no such process or no /proc."""
    info = _proc_stat(pid)
    return info[1] if info else None


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """Whether `pid` is a running process (not a zombie) and, given `start_time`, the one recorded."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, but is someone else's
    info = _proc_stat(pid)
    if info is None:
        # Gone since the kill() above, or no /proc here to ask: then trust kill().
        return not Path("/proc/self/stat").exists()
    state, started = info
    if state in (b"Z", b"X"):
        return False
    return start_time is None or started == start_time


def register(entry: MountEntry) -> Path:
    """Record a live mount (replacing any entry for the same mount point); returns the entry's file."""
    path = _entry_path(entry.mountpoint)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, json.dumps(asdict(entry), indent=2) + "\n")
    return path


def unregister(mountpoint: str) -> None:
    _entry_path(mountpoint).unlink(missing_ok=True)


def _read(path: Path) -> MountEntry | None:
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(MountEntry)}
        return MountEntry(**{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, TypeError):
        return None


def _all() -> list[tuple[Path, MountEntry | None]]:
    try:
        names = sorted(registry_dir().glob("*.json"))
    except OSError:
        return []
    return [(p, _read(p)) for p in names]


def prune() -> list[MountEntry]:
    """Delete entries whose process is gone (and unreadable ones); returns the stale entries removed."""
    removed = []
    for path, entry in _all():
        if entry is None or not entry.alive():
            path.unlink(missing_ok=True)
            if entry is not None:
                removed.append(entry)
    return removed


def mounts(prune_dead: bool = True) -> list[MountEntry]:
    """Every registered mount, sorted by mount point; dead ones are pruned unless `prune_dead` is False."""
    if prune_dead:
        prune()
    return sorted((e for _, e in _all() if e is not None), key=lambda e: e.mountpoint)


def _resolve(path: str | os.PathLike[str]) -> str:
    # realpath stats every component; on a dead FUSE mount that fails with ENOTCONN, which
    # realpath (strict=False) tolerates by keeping the path as given from there on.
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def find(path: str | os.PathLike[str], prune_dead: bool = True) -> MountEntry | None:
    """The mount whose mount point is `path` or contains it (the innermost one), or None."""
    target = _resolve(path)
    best: MountEntry | None = None
    for entry in mounts(prune_dead):
        mp = entry.mountpoint
        if target == mp or target.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) > len(best.mountpoint):
                best = entry
    return best
