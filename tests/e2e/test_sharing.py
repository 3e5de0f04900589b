"""Sharing between two users, each with a mount: `drive share`, read and write shares, unsharing."""

from __future__ import annotations

import errno
import os

import httpx
import pytest

from tests.e2e.test_sync import eventually, read_or_none

SHARED = "Shared with me"


def test_read_share_is_readable_not_writable(owner_and_recipient):
    owner, rec = owner_and_recipient
    (owner.path / "Docs").mkdir()
    (owner.path / "Docs" / "plan.txt").write_text("the plan")
    out = owner.drive("share", str(owner.path / "Docs"), rec.user)
    assert "shared" in out.stdout
    seen = rec.path / SHARED / "Docs"
    eventually(lambda: read_or_none(seen / "plan.txt") == b"the plan", timeout=5, what="shared folder visible")
    with pytest.raises(OSError) as e:
        (seen / "plan.txt").write_text("changed")
    assert e.value.errno in (errno.EACCES, errno.EROFS)
    with pytest.raises(OSError) as e:
        (seen / "new.txt").write_text("x")
    assert e.value.errno in (errno.EACCES, errno.EROFS)
    with pytest.raises(OSError) as e:
        os.unlink(seen / "plan.txt")
    assert e.value.errno in (errno.EACCES, errno.EROFS)
    # Added later by the owner: the whole subtree is shared.
    (owner.path / "Docs" / "later.txt").write_text("added later")
    eventually(lambda: read_or_none(seen / "later.txt") == b"added later", timeout=5, what="later file visible")
    # The server refuses a direct write too.
    node = httpx.get(f"{rec.server.url}/api/v1/shares/with-me",
                     headers={"Authorization": f"Bearer {rec.token}"}).json()["items"][0]["node"]
    r = httpx.post(f"{rec.server.url}/api/v1/folders", json={"parent_id": node["id"], "name": "x"},
                   headers={"Authorization": f"Bearer {rec.token}"})
    assert r.status_code == 403


def test_write_share_round_trip_and_unshare(owner_and_recipient):
    owner, rec = owner_and_recipient
    (owner.path / "Team").mkdir()
    (owner.path / "Team" / "notes.txt").write_text("v1")
    owner.flush()
    owner.drive("share", "Team", rec.user, "--write")  # a path inside the drive, from outside the mount
    listing = owner.drive("shares", str(owner.path / "Team")).stdout
    assert rec.user in listing and "write" in listing
    team = rec.path / SHARED / "Team"
    eventually(lambda: read_or_none(team / "notes.txt") == b"v1", timeout=5, what="write share visible")
    (team / "notes.txt").write_text("v2 by recipient")
    (team / "from-recipient.txt").write_text("hello owner")
    eventually(lambda: read_or_none(owner.path / "Team" / "notes.txt") == b"v2 by recipient", timeout=5,
               what="recipient's edit reaches the owner")
    eventually(lambda: read_or_none(owner.path / "Team" / "from-recipient.txt") == b"hello owner", timeout=5,
               what="recipient's new file reaches the owner")
    owner.drive("unshare", str(owner.path / "Team"), rec.user)
    eventually(lambda: "Team" not in os.listdir(rec.path / SHARED), timeout=5, what="unshared item disappears")
    assert not (team / "notes.txt").exists()


def test_name_collision_shows_owner(server, owner_and_recipient, tmp_path):
    owner, rec = owner_and_recipient
    from tests.fixtures.mount import MountProcess

    name, token = server.add_user()
    third = MountProcess(server, name, token, tmp_path / "third", device="third-device")
    third.mount()
    try:
        for m in (owner, third):
            (m.path / "Photos").mkdir()
            (m.path / "Photos" / "who.txt").write_text(m.user)
            m.drive("share", str(m.path / "Photos"), rec.user)
        eventually(lambda: len([n for n in os.listdir(rec.path / SHARED) if n.startswith("Photos")]) == 2,
                   timeout=5, what="both shares visible")
        names = sorted(os.listdir(rec.path / SHARED))
        assert "Photos" in names
        other = [n for n in names if n.startswith("Photos (from ")]
        assert len(other) == 1
        owners = {(rec.path / SHARED / n / "who.txt").read_text() for n in names if n.startswith("Photos")}
        assert owners == {owner.user, third.user}
    finally:
        third.cleanup()
