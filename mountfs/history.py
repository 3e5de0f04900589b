"""`drive versions`, `drive restore` and `drive trash`: a file's history and the trash, over the server API.

Before asking the server, a PATH inside a mount is flushed, so the history includes the last local edit
and a restore does not race an edit still waiting to be uploaded (which would turn into a conflicted copy).
"""

from __future__ import annotations

import argparse
import os
import posixpath
import time
from typing import Any

import httpx

from .apicli import CommandError, Target, api, call, credentials, mount_of, resolve
from .config import format_size

_TRASH_PAGE = 5_000  # the server's largest page


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def _flush_mount_of(path: str) -> None:
    """Commit what the mount holding PATH (or its parent folder) has not uploaded yet."""
    found = mount_of(path) or mount_of(os.path.dirname(os.path.abspath(path)))
    if found is None:
        return
    from .control import ControlClient, ControlError

    try:
        result = ControlClient(found[0].control_socket).flush()
    except ControlError as e:
        raise CommandError(str(e)) from None
    if isinstance(result, dict) and not result.get("ok", True):
        raise CommandError(f"cannot commit local changes first: {result.get('error') or 'the flush failed'}")


def versions(args: argparse.Namespace) -> int:
    _flush_mount_of(args.path)
    with api(credentials()) as client:
        target = resolve(args.path, client)
        node = call(client, "GET", f"/nodes/{target.node_id}")
        if node["kind"] != "file":
            raise CommandError(f"{target.label} is a {'folder' if node['kind'] == 'dir' else node['kind']}: "
                               "only files have versions")
        found = call(client, "GET", f"/nodes/{target.node_id}/versions")["versions"]
    print(f"{target.label}: {len(found)} version{'s' if len(found) != 1 else ''}")
    for v in found:
        where = f" on {v['device']}" if v.get("device") else ""
        current = "  (current)" if v["version"] == node["version"] else ""
        print(f"  v{v['version']:<4} {_when(v['created_ns'])}  {format_size(v['size']):>10}  "
              f"by {v['created_by']}{where}{current}")
    return 0


def restore(args: argparse.Namespace) -> int:
    if args.version is not None:
        return _restore_version(args)
    return _restore_from_trash(args)


def _restore_version(args: argparse.Namespace) -> int:
    if args.as_name is not None:
        raise CommandError("--as only applies when bringing a file back from the trash")
    _flush_mount_of(args.path)
    with api(credentials()) as client:
        target = resolve(args.path, client)
        node = call(client, "POST", f"/nodes/{target.node_id}/versions/{args.version}/restore")
    print(f"restored {target.label} to version {args.version} (now version {node['version']}, "
          f"{format_size(node['size'])})")
    return 0


def _restore_from_trash(args: argparse.Namespace) -> int:
    parent_path, name = posixpath.split(args.path.rstrip("/"))
    if not name:
        raise CommandError(f"{args.path!r} does not name a file or folder")
    _flush_mount_of(args.path)
    with api(credentials()) as client:
        parent = _parent_folder(parent_path, client)
        trashed = call(client, "GET", "/trash", params={"limit": _TRASH_PAGE})["entries"]
        # Newest first (the server's order): a name deleted twice comes back as its last copy.
        match = next((n for n in trashed if n["parent_id"] == parent.node_id and n["name"] == name), None)
        if match is None:
            if os.path.lexists(args.path):
                raise CommandError(f"{args.path} is not in the trash (it exists); "
                                   "to go back to an older content use --version N (see drive versions)")
            raise CommandError(f"no {name!r} from {parent.label} in the trash (see drive trash)")
        if args.as_name is None and os.path.lexists(args.path):
            raise CommandError(f"{args.path} exists: bring the deleted {name!r} back under another name "
                               "with --as NAME")
        body = {"name": args.as_name} if args.as_name else {}
        node = call(client, "POST", f"/nodes/{match['id']}/restore", json=body)
    print(f"restored {node['name']!r} from the trash into {parent.label}")
    return 0


def _parent_folder(parent_path: str, client: httpx.Client) -> Target:
    if parent_path in ("", "."):
        if mount_of(".") is not None:
            return resolve(".", client)
        me = call(client, "GET", "/me")
        return Target(me["root_id"], "the top of your drive")
    return resolve(parent_path, client)


def trash(args: argparse.Namespace) -> int:
    with api(credentials()) as client:
        trashed = call(client, "GET", "/trash", params={"limit": _TRASH_PAGE})["entries"]
        folders = _folder_names(client, {n["parent_id"] for n in trashed})
    if not trashed:
        print("the trash is empty")
        return 0
    for n in trashed:
        kind = "/" if n["kind"] == "dir" else ""
        print(f"  {_when(n['ctime_ns'])}  {format_size(n['size']):>10}  {folders.get(n['parent_id'], '?')}/"
              f"{n['name']}{kind}")
    print("bring one back with: drive restore PATH (its old path, in a mount or inside the drive)")
    return 0


def _folder_names(client: httpx.Client, ids: set[int]) -> dict[int, str]:
    """Where each trashed item was, as a path from the top of the drive (best effort, one request each)."""
    names: dict[int, str] = {}
    for folder_id in ids:
        parts: list[str] = []
        node: dict[str, Any] | None = call(client, "GET", f"/nodes/{folder_id}")
        while node is not None and node["parent_id"] is not None:
            parts.append(node["name"])
            node = call(client, "GET", f"/nodes/{node['parent_id']}")
        names[folder_id] = "/".join(reversed(parts)) or "."
    return names


def add_commands(sub: Any) -> None:
    """Register the history subcommands on the `drive` parser."""
    v = sub.add_parser("versions", help="list the versions of a file",
                       description="List the versions of PATH (in a mount, or a path inside your drive), "
                                   "newest first.")
    v.add_argument("path", metavar="PATH")
    v.set_defaults(func=versions)
    r = sub.add_parser("restore", help="go back to an older version, or bring a file back from the trash",
                       description="With --version N: make version N of PATH current again (as a new "
                                   "version; nothing is lost). Without: bring PATH, deleted, back from "
                                   "the trash.")
    r.add_argument("path", metavar="PATH")
    r.add_argument("--version", type=int, metavar="N", help="the version to go back to (see drive versions)")
    r.add_argument("--as", dest="as_name", metavar="NAME", help="restore from the trash under another name")
    r.set_defaults(func=restore)
    t = sub.add_parser("trash", help="list what is in the trash")
    t.set_defaults(func=trash)
