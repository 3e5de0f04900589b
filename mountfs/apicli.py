"""What the commands that talk to the server API share: credentials, naming a node by PATH, one-line errors.

A PATH inside a mounted drive is resolved by that mount's daemon (so unsynced files are committed
first and `Shared with me/...` works); any other PATH is taken as a path inside the drive itself,
e.g. `Documents/report.txt`, and resolved by the server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx

from . import registry
from .config import Credentials, load_credentials
from .registry import MountEntry


class CommandError(Exception):
    """An API command failed; the message is the one line to print."""


@dataclass(frozen=True)
class Target:
    """A node named on the command line."""

    node_id: int
    label: str


def credentials() -> Credentials:
    creds = load_credentials()
    if creds is None:
        raise CommandError("not logged in: run drive login --server URL --user NAME")
    return creds


def api(creds: Credentials) -> httpx.Client:
    return httpx.Client(base_url=creds.server + "/api/v1", headers={"Authorization": f"Bearer {creds.token}"},
                        timeout=30)


def call(client: httpx.Client, method: str, url: str, **kw: Any) -> Any:
    """One API request; the server's error message (or the transport's) becomes a CommandError."""
    try:
        r = client.request(method, url, **kw)
    except httpx.TransportError as e:
        raise CommandError(f"cannot reach the server: {e}") from None
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {r.status_code}"
        raise CommandError(message)
    return r.json() if r.content else None


def mount_of(path: str) -> tuple[MountEntry, str] | None:
    """The live mount holding PATH and PATH relative to it, or None when PATH is not in a mount."""
    absolute = os.path.realpath(os.path.abspath(path))
    entry = registry.find(absolute) if os.path.exists(absolute) else None
    if entry is None:
        return None
    rel = os.path.relpath(absolute, entry.mountpoint)
    return entry, "" if rel == "." else rel


def resolve(path: str, client: httpx.Client) -> Target:
    """The node behind PATH: asked of the mount's daemon when PATH is in a mount, else of the server."""
    found = mount_of(path)
    if found is not None:
        from .control import ControlClient, ControlError

        entry, rel = found
        try:
            node = ControlClient(entry.control_socket).resolve(rel)
        except ControlError as e:
            raise CommandError(str(e)) from None
        return Target(node["node_id"], os.path.realpath(os.path.abspath(path)))
    node = call(client, "GET", "/resolve", params={"path": path})
    return Target(node["id"], path)
