"""`drive pin`, `drive unpin` and `drive pin --list`: keep files and folders on this device, for offline use.

These talk to the daemon of the mount holding PATH (pins belong to one device's cache); the work is in
mountfs/pinner.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from .apicli import CommandError, mount_of
from .config import format_size
from .progress import ProgressView


def _daemon_of(path: str) -> tuple[Any, str, str]:
    """The control client of the mount holding PATH, PATH relative to it, and PATH as shown."""
    shown = os.path.abspath(path)
    if not os.path.lexists(shown):
        raise CommandError(f"{shown}: no such file or folder")
    found = mount_of(path)
    if found is None:
        raise CommandError(f"{shown} is not in a drivefs mount: only files in a mounted drive can be pinned")
    from .control import ControlClient

    entry, rel = found
    return ControlClient(entry.control_socket), rel, shown


def _kept(summary: dict) -> str:
    files, size, missing = summary["files"], summary["bytes"], summary["missing_bytes"]
    text = f"{files} file{'s' if files != 1 else ''}, {format_size(size)}"
    if missing:
        text += f" ({format_size(missing)} not on this device yet: it follows when the server is reachable)"
    return text


def _each(paths: list[str], act: Callable[[Any, str, str], str]) -> int:
    """Run act(control client, path in the mount, path as shown) for each PATH and print the line it
    returns; a PATH that fails gets one line on stderr and the others go on. Exit code 1 if any failed."""
    from .control import ControlError

    failed = 0
    for path in paths:
        try:
            line = act(*_daemon_of(path))
        except (CommandError, ControlError) as e:
            print(f"drive: {e}", file=sys.stderr)
            failed += 1
            continue
        print(line)
    return 1 if failed else 0


def pin(args: argparse.Namespace) -> int:
    if args.list:
        return _list(args.path, args.json)
    if not args.path:
        raise CommandError("give the files or folders to pin (or --list)")

    def one(client: Any, rel: str, shown: str) -> str:
        view = ProgressView(os.path.basename(shown) or shown)
        try:
            summary = client.pin(rel, on_progress=view)
        finally:
            view.close()
        return f"pinned {shown}: {_kept(summary)} kept on this device"

    return _each(args.path, one)


def unpin(args: argparse.Namespace) -> int:
    def one(client: Any, rel: str, shown: str) -> str:
        summary = client.unpin(rel)
        return f"unpinned {shown}: its {format_size(summary['bytes'])} may leave this device when the cache needs room"

    return _each(args.path, one)


def _list(paths: list[str], as_json: bool) -> int:
    from .cli import mounts_holding
    from .control import ControlClient, ControlError

    # Each mount once, however many of the paths it holds.
    held = [e for path in paths for e in mounts_holding(path)] if paths else mounts_holding(None)
    entries = list({e.mountpoint: e for e in held}.values())
    if not entries and not as_json:
        print("no drivefs mounts")
        return 0
    failed = 0
    found: list[dict] = []
    for entry in entries:
        try:
            pinned = [{**p, "path": os.path.join(entry.mountpoint, p["path"])}
                      for p in ControlClient(entry.control_socket).pins()]
        except ControlError as e:
            print(f"drive: {entry.mountpoint}: {e}", file=sys.stderr)
            failed += 1
            continue
        found += pinned
        if not as_json:
            if not pinned:
                print(f"{entry.mountpoint}: nothing pinned")
            for summary in pinned:
                print(f"{summary['path']}: {_kept(summary)}")
    if as_json:
        print(json.dumps(found, indent=2))
    return 1 if failed else 0


def add_commands(sub: Any) -> None:
    """Register the pin subcommands on the `drive` parser."""
    p = sub.add_parser("pin", help="keep files or folders on this device, for use offline",
                       description="Fetch PATH (a file, or a folder and everything in it, now and later) and "
                                   "keep it in this device's cache: it stays readable without the server and "
                                   "is never evicted. New versions from other devices are fetched as they "
                                   "arrive. With --list: what is pinned (in the mounts holding PATH, or all).")
    p.add_argument("path", metavar="PATH", nargs="*")
    p.add_argument("--list", action="store_true", help="list the pinned paths and how much they hold")
    p.add_argument("--json", action="store_true", help="with --list: as JSON (path, files, bytes, missing_bytes)")
    p.set_defaults(func=pin)
    u = sub.add_parser("unpin", help="stop keeping pinned files or folders on this device",
                       description="Drop the pin on PATH: its content stays cached until the cache needs room.")
    u.add_argument("path", metavar="PATH", nargs="+")
    u.set_defaults(func=unpin)
