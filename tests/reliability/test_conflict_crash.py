"""A crash in the middle of keeping a conflicted copy loses neither version.

When this device's edit and another device's meet, the mount keeps its own bytes as a conflicted copy
and takes the server's version. The daemon is made to die (tests/reliability/inject) at the two
moments where the bytes are between names: right after they are linked under the copy's number (the
index has not committed the copy), and right before the old name is removed (it has). After a restart
both versions must be there, on both devices, and writing the file again must not touch the copy.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_offline import edit_on_both_while_apart
from tests.e2e.test_sync import eventually, read_or_none
from tests.fixtures.mount import MountProcess, is_mounted

INJECT = Path(__file__).parent / "inject"


def _copies(m: MountProcess) -> list[str]:
    return sorted(n for n in os.listdir(m.path) if n.startswith("report") and "conflicted copy" in n)


@pytest.mark.parametrize("point", ["link", "unlink"])
def test_killed_while_keeping_a_conflicted_copy(two_devices_own_server, point):
    a, b = two_devices_own_server
    srv = a.server
    # Both edit while apart; B's version reaches the server first, A's edit waits in A's cache.
    edit_on_both_while_apart(a, b, "report.txt", "edited on A", "edited on B")
    a.unmount(flush=False)
    srv.start()
    b.flush()

    # A comes back with the fault armed: replaying its edit meets B's version and starts the copy.
    a.env.update(PYTHONPATH=str(INJECT), DRIVE_TEST_DIE_AT=point)
    try:
        a.mount()
        eventually(lambda: not a.daemon_pids(), timeout=30, what=f"A's daemon dies at '{point}'")
    finally:
        del a.env["PYTHONPATH"], a.env["DRIVE_TEST_DIE_AT"]
    if is_mounted(a.path):
        subprocess.run(["fusermount3", "-u", "-z", str(a.path)], capture_output=True)

    a.mount()
    a.flush()
    for m in (a, b):
        eventually(lambda: len(_copies(m)) == 1, timeout=20, what=f"one conflicted copy on {m.device}")
        assert (m.path / "report.txt").read_text() == "edited on B"
        assert (m.path / _copies(m)[0]).read_text() == "edited on A"

    # The file written again from scratch (open with O_TRUNC) leaves the copy's bytes alone.
    (a.path / "report.txt").write_text("after")
    a.flush()
    eventually(lambda: read_or_none(b.path / "report.txt") == b"after", what="new edit on B")
    for m in (a, b):
        assert (m.path / _copies(m)[0]).read_text() == "edited on A"
