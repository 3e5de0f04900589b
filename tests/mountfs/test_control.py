"""The control socket: a real ControlServer under trio, the blocking ControlClient in a thread."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest
import trio

from mountfs.control import ControlClient, ControlServer, DaemonNotRunning, RemoteError


class FakeHandler:
    """A daemon's handler reduced to what the protocol needs."""

    def __init__(self) -> None:
        self.unmounted: list[bool] = []
        self.fail_status = False
        self.cancel_on_unmount: trio.CancelScope | None = None

    async def status(self) -> dict:
        if self.fail_status:
            raise RuntimeError("index is locked\nby another process")
        return {"mountpoint": "/mnt/x", "online": True, "pending_ops": 3, "pending_files": 2,
                "pending_bytes": 2048, "last_sync": None, "path": Path("/not/json/native")}

    async def flush(self, report) -> dict:
        for done in (0, 1024, 2048):
            await report({"done_bytes": done, "total_bytes": 2048, "done_files": done // 1024, "total_files": 2})
        return {"ok": True, "error": None}

    async def unmount(self, flush: bool) -> None:
        self.unmounted.append(flush)
        if self.cancel_on_unmount is not None:
            self.cancel_on_unmount.cancel()  # like the daemon: stopping the mount ends everything


def call(fn, *args, **kwargs):
    return trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    handler = FakeHandler()
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, handler).serve)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600

        client = ControlClient(path, timeout=5)
        st = await call(client.status)
        assert st["pending_files"] == 2 and st["online"] is True
        assert st["path"] == "/not/json/native"  # non-JSON values are sent as strings

        seen: list[dict] = []
        result = await call(client.flush, on_progress=seen.append)
        assert result == {"ok": True, "error": None}
        assert [p["done_bytes"] for p in seen] == [0, 1024, 2048]
        assert seen[-1] == {"done_bytes": 2048, "total_bytes": 2048, "done_files": 2, "total_files": 2}

        await call(client.unmount, flush=False)
        await call(client.unmount)
        assert handler.unmounted == [False, True]
        nursery.cancel_scope.cancel()
    assert not path.exists()  # the server removes its socket when it stops


async def test_errors_are_one_line_answers(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    handler = FakeHandler()
    handler.fail_status = True
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, handler).serve)
        client = ControlClient(path, timeout=5)
        with pytest.raises(RemoteError, match=r"^index is locked by another process$"):
            await call(client.status)
        with pytest.raises(RemoteError, match="unknown command 'explode'"):
            await call(client.request, "explode")

        def raw() -> list[dict]:
            # Several requests on one connection, one of them not JSON: each gets its answer, in order.
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(path))
                s.sendall(b"not json\n\n[1]\n" + json.dumps({"cmd": "flush"}).encode() + b"\n")
                s.shutdown(socket.SHUT_WR)
                with s.makefile("rb") as f:
                    return [json.loads(line) for line in f]

        answers = await trio.to_thread.run_sync(raw)
        assert answers[0]["error"].startswith("bad request")
        assert answers[1]["error"].startswith("bad request")
        assert [a for a in answers[2:] if "progress" not in a] == [{"result": {"ok": True, "error": None}}]
        # The server survived all of that.
        handler.fail_status = False
        assert (await call(client.status))["pending_ops"] == 3
        nursery.cancel_scope.cancel()


async def test_unmount_that_ends_the_daemon_before_answering(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    handler = FakeHandler()
    async with trio.open_nursery() as nursery:
        handler.cancel_on_unmount = nursery.cancel_scope
        await nursery.start(ControlServer(path, handler).serve)
        await call(ControlClient(path, timeout=5).unmount, flush=True)  # no answer comes, and that is fine
    assert handler.unmounted == [True]
    assert not path.exists()


async def test_stale_socket_is_replaced_and_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays behind, with nobody listening: what a crashed daemon leaves
    assert path.exists()
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, FakeHandler()).serve)
        assert (await call(ControlClient(path, timeout=5).status))["online"] is True
        with pytest.raises(OSError, match="already listening"):
            await ControlServer(path, FakeHandler()).serve()
        nursery.cancel_scope.cancel()

    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        await ControlServer(path, FakeHandler()).serve()
    assert path.read_text() == "not a socket"


def test_client_without_daemon(tmp_path: Path) -> None:
    with pytest.raises(DaemonNotRunning):
        ControlClient(tmp_path / "nothing.sock").status()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()
    with pytest.raises(DaemonNotRunning):
        ControlClient(tmp_path / "stale.sock").status()
