"""`drive share`, `drive unshare` and `drive shares`: find the node behind a path and call the share API."""

from __future__ import annotations

import argparse
from typing import Any

from .apicli import api, call, credentials, resolve


def share(args: argparse.Namespace) -> int:
    creds = credentials()
    with api(creds) as client:
        target = resolve(args.path, client)
        perm = "write" if args.write else "read"
        call(client, "POST", f"/nodes/{target.node_id}/shares", json={"user": args.user, "permission": perm})
    print(f"shared {target.label} with {args.user} ({'read and write' if args.write else 'read only'})")
    return 0


def unshare(args: argparse.Namespace) -> int:
    creds = credentials()
    with api(creds) as client:
        target = resolve(args.path, client)
        call(client, "DELETE", f"/nodes/{target.node_id}/shares/{args.user}")
    print(f"{args.user} no longer has access to {target.label}")
    return 0


def shares(args: argparse.Namespace) -> int:
    creds = credentials()
    with api(creds) as client:
        if args.path is None:
            mine = call(client, "GET", "/shares/by-me")["shares"]
            theirs = call(client, "GET", "/shares/with-me")["items"]
            for s in mine:
                node = call(client, "GET", f"/nodes/{s['node_id']}")
                print(f"you share {node['name']!r} with {s['user']} ({s['permission']})")
            for item in theirs:
                print(f"{item['share']['owner']} shares {item['node']['name']!r} with you ({item['share']['permission']})")
            if not mine and not theirs:
                print("nothing is shared by you or with you")
            return 0
        target = resolve(args.path, client)
        node = call(client, "GET", f"/nodes/{target.node_id}")
        found = call(client, "GET", f"/nodes/{target.node_id}/shares")["shares"]
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
