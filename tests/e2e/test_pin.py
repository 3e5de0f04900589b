"""`drive pin`: pinned files and folders are fetched ahead, follow changes made elsewhere, stay readable
without the server, and survive a remount; bad paths get a clear error."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.e2e.test_sync import eventually

pytestmark = pytest.mark.client_side  # once, in the embedded pass: see tests/conftest.py

MiB = 2**20


def pinned(m) -> list[dict]:
    return json.loads(m.drive("pin", "--list", "--json", str(m.path)).stdout)


def test_a_pinned_folder_follows_changes_and_reads_offline(two_devices_own_server):
    a, b = two_devices_own_server
    trip = a.path / "Trip"
    (trip / "sub").mkdir(parents=True)
    big, note = os.urandom(3 * MiB), b"hello"
    (trip / "big.bin").write_bytes(big)
    (trip / "sub" / "note.txt").write_bytes(note)
    (a.path / "other.bin").write_bytes(os.urandom(MiB))
    a.flush()
    eventually(lambda: (b.path / "Trip" / "sub").is_dir(), timeout=10, what="Trip on B")

    out = b.drive("pin", str(b.path / "Trip")).stdout
    assert f"pinned {b.path / 'Trip'}: 2 files" in out and "not on this device" not in out, out
    assert pinned(b) == [{"path": str(b.path / "Trip"), "files": 2, "bytes": len(big) + len(note),
                          "missing_bytes": 0}]

    # Made on the other device after the pin: a new file, and a new version of a pinned one.
    later, big2 = os.urandom(2 * MiB), os.urandom(3 * MiB)
    (trip / "later.bin").write_bytes(later)
    (trip / "big.bin").write_bytes(big2)
    a.flush()
    eventually(lambda: pinned(b)[0]["files"] == 3 and pinned(b)[0]["missing_bytes"] == 0, timeout=30,
               what="B fetches what changed inside the pin")

    a.server.stop()
    try:
        assert (b.path / "Trip" / "big.bin").read_bytes() == big2
        assert (b.path / "Trip" / "later.bin").read_bytes() == later
        assert (b.path / "Trip" / "sub" / "note.txt").read_bytes() == note
        with pytest.raises(OSError):  # never pinned nor read on B: it needs the server
            (b.path / "other.bin").read_bytes()
        # Pinned while the server is away: pinned all the same, and it says what is still to come.
        out = b.drive("pin", str(b.path / "other.bin")).stdout
        assert f"pinned {b.path / 'other.bin'}: 1 file, 1.0 MiB (1.0 MiB not on this device yet" in out, out
    finally:
        a.server.start()
    eventually(lambda: all(p["missing_bytes"] == 0 for p in pinned(b)) and len(pinned(b)) == 2, timeout=60,
               what="the file pinned offline is fetched once the server is back")


def test_pins_persist_and_unpin_explains_itself(mount, tmp_path):
    folder = mount.path / "Keep"
    folder.mkdir()
    (folder / "f.txt").write_text("kept")
    (mount.path / "loose.txt").write_text("loose")
    mount.flush()
    assert "pinned" in mount.drive("pin", str(folder)).stdout

    mount.unmount()
    mount.mount()
    assert [p["path"] for p in pinned(mount)] == [str(folder)]
    both = json.loads(mount.drive("pin", "--list", "--json", str(mount.path), str(folder)).stdout)
    assert [p["path"] for p in both] == [str(folder)]  # two paths in one mount: its pins listed once
    assert "pinned:     1 path, 4 B (all on this device)" in mount.drive("status", str(mount.path)).stdout

    def error(*args: str) -> str:
        out = mount.drive(*args, check=False)
        assert out.returncode == 1, out
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        return lines[0]

    assert "inside the pinned folder Keep" in error("unpin", str(folder / "f.txt"))
    assert "loose.txt is not pinned" in error("unpin", str(mount.path / "loose.txt"))
    assert "no such file or folder" in error("pin", str(mount.path / "missing.txt"))
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    assert "is not in a drivefs mount" in error("pin", str(outside))

    assert "unpinned" in mount.drive("unpin", str(folder)).stdout
    assert pinned(mount) == []
    assert "nothing pinned" in mount.drive("pin", "--list", str(mount.path)).stdout


def test_a_pin_larger_than_the_cache_is_refused(server, tmp_path):
    from tests.fixtures.mount import MountProcess

    name, token = server.add_user()
    m = MountProcess(server, name, token, tmp_path / "m", extra_args=["--cache-limit", "3M"])
    m.mount()
    try:
        (m.path / "big").mkdir()
        (m.path / "big" / "a.bin").write_bytes(os.urandom(2 * MiB))
        (m.path / "big" / "b.bin").write_bytes(os.urandom(2 * MiB))
        (m.path / "small.bin").write_bytes(os.urandom(MiB))
        m.flush()
        out = m.drive("pin", str(m.path / "big"), check=False)
        assert out.returncode == 1 and "more than this mount's cache limit of 3.0 MiB" in out.stderr, out
        assert pinned(m) == []  # nothing half-pinned
        assert "pinned" in m.drive("pin", str(m.path / "small.bin")).stdout
        out = m.drive("pin", str(m.path / "big" / "a.bin"), check=False)  # 1 + 2 MiB: fits the limit exactly
        assert out.returncode == 0, out
        out = m.drive("pin", str(m.path / "big" / "b.bin"), check=False)  # now 5 MiB in all
        assert out.returncode == 1 and "with what is pinned already that is 5.0 MiB" in out.stderr, out
    finally:
        m.cleanup()


def test_a_pinned_folder_that_outgrows_the_cache_keeps_what_fits(server, tmp_path):
    from tests.fixtures.mount import MountProcess

    name, token = server.add_user()
    a = MountProcess(server, name, token, tmp_path / "a", device="writer")
    b = MountProcess(server, name, token, tmp_path / "b", device="small", extra_args=["--cache-limit", "3M"])
    try:
        a.mount()
        b.mount()
        (a.path / "Box").mkdir()
        (a.path / "Box" / "one.bin").write_bytes(os.urandom(2 * MiB))
        a.flush()
        eventually(lambda: (b.path / "Box" / "one.bin").exists(), timeout=10, what="Box on B")
        b.drive("pin", str(b.path / "Box"))
        (a.path / "Box" / "two.bin").write_bytes(os.urandom(2 * MiB))  # 4 MiB pinned > 3 MiB
        a.flush()
        eventually(lambda: pinned(b)[0]["files"] == 2, timeout=20, what="the new file listed on B")
        time.sleep(3)  # the background task has had its look at it
        p = pinned(b)[0]
        assert p["missing_bytes"] == 2 * MiB, p  # two.bin left to be read on demand
        assert "no longer fit in the cache limit" in Path(b.cache_dir, "mount.log").read_text()
    finally:
        a.cleanup()
        b.cleanup()
