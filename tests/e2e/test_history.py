"""`drive versions`, `drive restore` and `drive trash` on a mounted drive, through the real command."""

from __future__ import annotations

import os

from tests.e2e.test_sync import eventually, read_or_none


def test_versions_list_and_restore_an_old_version(mount):
    doc = mount.path / "notes.txt"
    doc.write_text("first draft")
    mount.flush()
    doc.write_text("second draft, longer")
    # No flush here: `drive versions` commits the pending edit itself before asking the server.
    out = mount.drive("versions", str(doc)).stdout
    lines = [line for line in out.splitlines() if line.strip().startswith("v")]
    assert len(lines) == 2, out
    assert lines[0].split()[0] == "v2" and "(current)" in lines[0], out
    assert lines[1].split()[0] == "v1" and "(current)" not in lines[1], out
    assert "testdev" in lines[0], out  # the device that wrote it

    out = mount.drive("restore", str(doc), "--version", "1").stdout
    assert "version 1" in out and "now version 3" in out, out
    eventually(lambda: read_or_none(doc) == b"first draft", timeout=5, what="restored content in the mount")
    # Nothing was rewritten: the draft that was replaced is still there as version 2.
    assert mount.drive("versions", "notes.txt").stdout.count("\n  v") == 3  # by drive path, from outside


def test_trash_and_restore_a_deleted_file(mount):
    (mount.path / "Docs").mkdir()
    kept = mount.path / "Docs" / "report.txt"
    kept.write_bytes(b"quarterly numbers\n" * 1000)
    mount.flush()
    os.unlink(kept)
    mount.flush()
    listing = mount.drive("trash").stdout
    assert "Docs/report.txt" in listing, listing

    out = mount.drive("restore", str(kept)).stdout
    assert "restored 'report.txt'" in out, out
    eventually(lambda: read_or_none(kept) == b"quarterly numbers\n" * 1000, timeout=5, what="file back in the mount")
    assert "the trash is empty" in mount.drive("trash").stdout

    # Deleted again while a new file took its name: it comes back under another name.
    os.unlink(kept)
    kept.write_text("a new report")
    out = mount.drive("restore", str(kept), check=False)
    assert out.returncode == 1 and "--as NAME" in out.stderr, out.stderr
    mount.drive("restore", str(kept), "--as", "report (old).txt")
    eventually(lambda: read_or_none(mount.path / "Docs" / "report (old).txt") == b"quarterly numbers\n" * 1000,
               timeout=5, what="restored under a new name")
    assert kept.read_text() == "a new report"


def test_history_commands_refuse_clearly(mount):
    (mount.path / "folder").mkdir()
    (mount.path / "one.txt").write_text("only version")
    mount.flush()
    out = mount.drive("versions", str(mount.path / "folder"), check=False)
    assert out.returncode == 1 and "only files have versions" in out.stderr, out.stderr
    out = mount.drive("restore", str(mount.path / "one.txt"), "--version", "7", check=False)
    assert out.returncode == 1 and "no version 7" in out.stderr, out.stderr
    out = mount.drive("restore", str(mount.path / "never-existed.txt"), check=False)
    assert out.returncode == 1 and "not in the trash" not in out.stderr and "trash" in out.stderr, out.stderr
    out = mount.drive("versions", "no/such/file.txt", check=False)
    assert out.returncode == 1 and out.stderr.startswith("drive: "), out.stderr
    assert (mount.path / "one.txt").read_text() == "only version"
