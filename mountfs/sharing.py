"""`drive share`, `drive unshare` and `drive shares`: find the node behind a path and call the share API.

A PATH inside a mounted drive is resolved by that mount's daemon (so unsynced files are committed
first and `Shared with me/...` works); any other PATH is taken as a path inside the drive itself,
e.g. `Documents/report.txt`, and resolved by the server.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

import httpx

from . import registry
from .config import Credentials, load_credentials


class ShareError(Exception):
    """A sharing command failed; the message is the one line to print."""


@dataclass(frozen=True)
class Target:
    """A node named on the command line."""

    node_id: int
    label: str


def _api(creds: Credentials) -> httpx.Client:
    return httpx.Client(base_url=creds.server + "/api/v1", headers={"Authorization": f"Bearer {creds.token}"},
                        timeout=30)


def _call(client: httpx.Client, method: str, url: str, **kw: Any) -> Any:
    try:
        r = client.request(method, url, **kw)
    except httpx.TransportError as e:
        raise ShareError(f"cannot reach the server: {e}") from None
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {r.status_code}"
        raise ShareError(message)
    return r.json() if r.content else None


def _resolve(path: str, creds: Credentials, client: httpx.Client) -> Target:
    absolute = os.path.realpath(os.path.abspath(path))
    entry = registry.find(absolute) if os.path.exists(absolute) else None
    if entry is not None:
        from .control import ControlClient, ControlError

        rel = os.path.relpath(absolute, entry.mountpoint)
        try:
            node = ControlClient(entry.control_socket).resolve("" if rel == "." else rel)
        except ControlError as e:
            raise ShareError(str(e)) from None
        return Target(node["node_id"], absolute)
    node = _call(client, "GET", "/resolve", params={"path": path})
    return Target(node["id"], path)


def _creds() -> Credentials:
    creds = load_credentials()
    if creds is None:
        raise ShareError("not logged in: run drive login --server URL --user NAME")
    return creds


def share(args: argparse.Namespace) -> int:
    creds = _creds()
    with _api(creds) as client:
        target = _resolve(args.path, creds, client)
        perm = "write" if args.write else "read"
        _call(client, "POST", f"/nodes/{target.node_id}/shares", json={"user": args.user, "permission": perm})
    print(f"shared {target.label} with {args.user} ({'read and write' if args.write else 'read only'})")
    return 0


def unshare(args: argparse.Namespace) -> int:
    creds = _creds()
    with _api(creds) as client:
        target = _resolve(args.path, creds, client)
        _call(client, "DELETE", f"/nodes/{target.node_id}/shares/{args.user}")
    print(f"{args.user} no longer has access to {target.label}")
    return 0


def shares(args: argparse.Namespace) -> int:
    creds = _creds()
    with _api(creds) as client:
        if args.path is None:
            mine = _call(client, "GET", "/shares/by-me")["shares"]
            theirs = _call(client, "GET", "/shares/with-me")["items"]
            for s in mine:
                node = _call(client, "GET", f"/nodes/{s['node_id']}")
                print(f"you share {node['name']!r} with {s['user']} ({s['permission']})")
            for item in theirs:
                print(f"{item['share']['owner']} shares {item['node']['name']!r} with you ({item['share']['permission']})")
            if not mine and not theirs:
                print("nothing is shared by you or with you")
            return 0
        target = _resolve(args.path, creds, client)
        node = _call(client, "GET", f"/nodes/{target.node_id}")
        found = _call(client, "GET", f"/nodes/{target.node_id}/shares")["shares"]
    print(f"{target.label}: owned by {node['owner']}")
    for s in found:
        via = "" if s["node_id"] == target.node_id else " (through a folder above it)"
        print(f"  {s['user']}: {s['permission']}{via}")
    if not found:
        print("  not shared with anyone")
    return 0


def add_commands(sub: Any) -> None:
    """Register the sharing subcommands on the `drive` parser."""
    p = sub.add_parser("share", help="give another user access to a file or folder",
                       description="Share PATH (in a mount, or a path inside your drive) with USER. A shared "
                                   "folder shares everything in it, also what is added later.")
    p.add_argument("path", metavar="PATH")
    p.add_argument("user", metavar="USER")
    p.add_argument("--write", action="store_true", help="let USER change it too (default: read only)")
    p.set_defaults(func=share)
    u = sub.add_parser("unshare", help="take a user's access away")
    u.add_argument("path", metavar="PATH")
    u.add_argument("user", metavar="USER")
    u.set_defaults(func=unshare)
    s = sub.add_parser("shares", help="who has access to PATH, or everything shared by or with you")
    s.add_argument("path", metavar="PATH", nargs="?")
    s.set_defaults(func=shares)
