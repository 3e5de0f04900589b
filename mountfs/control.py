"""The control socket between `drive` commands and a running mount daemon.

An AF_UNIX stream socket (mode 0600, and only peers with our uid are served) speaking
newline-delimited JSON. The client sends one request per line:

    {"cmd": "status"}
    {"cmd": "flush"}
    {"cmd": "unmount", "flush": true}
    {"cmd": "pin", "path": "Photos/2026"}   {"cmd": "unpin", "path": "..."}   {"cmd": "pins"}

and the server answers it with zero or more progress lines, then exactly one final line:

    {"progress": {"done_bytes": 1024, "total_bytes": 4096, "done_files": 0, "total_files": 2}}
    {"result": ...}            or            {"error": "one line for the user"}

Requests on one connection are served in turn. `unmount` may end the process before its answer is
sent; the client takes a closed connection after an `unmount` request as success.

The server side runs under trio inside the daemon (`ControlServer`); the client side is plain blocking
sockets, for the CLI (`ControlClient`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

__all__ = ["ControlClient", "ControlError", "ControlHandler", "ControlServer", "DaemonNotRunning",
           "RemoteError"]

log = logging.getLogger(__name__)

# A request or answer longer than this is a bug or an attack, not a command.
MAX_LINE = 1 << 20

Progress = dict[str, Any]


class ControlHandler(Protocol):
    """What the daemon implements; `ControlServer` turns requests into these calls."""

    async def status(self) -> dict:
        """JSON-able: mountpoint, server, user, device, online, pending_ops, pending_files, pending_items,
        pending_bytes, cache_bytes, cache_limit, last_sync (unix time or None), last_error (str or None), uploading."""
        ...

    async def flush(self, report: Callable[[dict], Awaitable[None]]) -> dict:
        """Wait until every local change is committed, calling `report` with done_bytes, total_bytes,
        done_files, total_files as it goes; return {"ok": bool, "error": str | None}."""
        ...

    async def unmount(self, flush: bool) -> None:
        """(After an optional flush) stop the mount; the process then exits."""
        ...

    async def pin(self, path: str, report: Callable[[dict], Awaitable[None]]) -> dict:
        """Pin a path relative to the mount point and fetch what it covers (progress as for flush);
        return its summary: path, files, bytes, missing_bytes."""
        ...

    async def unpin(self, path: str) -> dict:
        """Drop the pin on a path; return its summary."""
        ...

    async def pins(self) -> list[dict]:
        """The summary of every pinned path."""
        ...

    async def resolve(self, path: str) -> dict:
        """The server node behind a path relative to the mount point: node_id, name, kind, owner, access."""
        ...


# ---- errors (client side) ----

class ControlError(Exception):
    """Talking to a daemon failed; the message is one line for the user."""


class DaemonNotRunning(ControlError):
    """Nothing is listening on the control socket."""


class RemoteError(ControlError):
    """The daemon answered with an error."""


# ---- server ----

def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


class _LineReader:
    """Lines from a trio stream, each at most MAX_LINE bytes."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def readline(self) -> bytes | None:
        """The next line without its newline; None at end of stream (a partial last line is dropped)."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[:i + 1]
                return line
            if len(self._buf) > MAX_LINE:
                raise ValueError("request line too long")
            data = await self._stream.receive_some(65536)
            if not data:
                return None
            self._buf += data


class ControlServer:
    """Serves `handler` on an AF_UNIX socket at `path` until cancelled; removes the socket file after."""

    def __init__(self, path: str | os.PathLike[str], handler: ControlHandler) -> None:
        self.path = os.fspath(path)
        self.handler = handler
        self._inode: tuple[int, int] | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, report started (the socket then accepts connections), and serve forever."""
        sock = await self._listen()
        try:
            task_status.started()
            await trio.serve_listeners(self._serve_connection, [trio.SocketListener(sock)])
        finally:
            sock.close()
            self._remove_socket()

    async def _listen(self) -> trio.socket.SocketType:
        self._clear_stale()
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await sock.bind(self.path)
            # Until this chmod the file has the umask's mode; connecting needs write permission on it,
            # which the usual umasks do not give others. The peer uid check below is the real guard.
            os.chmod(self.path, 0o600)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            sock.listen(16)
        except BaseException:
            sock.close()
            raise
        return sock

    def _clear_stale(self) -> None:
        """Remove a socket file left by a dead daemon; refuse to take over a live one or a non-socket."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)  # nobody listening: stale
            return
        finally:
            probe.close()
        raise OSError(f"another drivefs daemon is already listening on {self.path}")

    def _remove_socket(self) -> None:
        # Only our own file: a successor daemon may already have bound a new one at the same path.
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except OSError:
            pass

    @staticmethod
    def _peer_uid(stream: trio.SocketStream) -> int | None:
        try:
            creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except (OSError, AttributeError):
            return None
        return struct.unpack("3i", creds)[1]

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        lock = trio.Lock()  # report() may be called from several tasks; sends must not interleave

        async def send(obj: Any) -> None:
            async with lock:
                await stream.send_all(_encode(obj))

        async with stream:
            try:
                uid = self._peer_uid(stream)
                if uid is not None and uid != os.getuid():
                    log.warning("refused a control connection from uid %d", uid)
                    await send({"error": "permission denied: this mount belongs to another user"})
                    return
                reader = _LineReader(stream)
                while (line := await reader.readline()) is not None:
                    if line.strip():
                        await self._answer(line, send)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away; whatever it asked for has run or is running to completion
            except ValueError as e:  # an overlong line
                with trio.move_on_after(1):
                    try:
                        await send({"error": str(e)})
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
            except Exception:
                # Whatever goes wrong with one connection must not take the daemon down with it.
                log.exception("control connection failed")

    async def _answer(self, line: bytes, send: Callable[[Any], Awaitable[None]]) -> None:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError
        except ValueError:
            await send({"error": "bad request: expected one JSON object per line"})
            return
        cmd = request.get("cmd")

        async def report(progress: Progress) -> None:
            try:
                await send({"progress": progress})
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the flush goes on without an audience

        try:
            if cmd == "status":
                result: Any = await self.handler.status()
            elif cmd == "flush":
                result = await self.handler.flush(report)
            elif cmd == "resolve":
                result = await self.handler.resolve(str(request.get("path", "")))
            elif cmd == "pin":
                result = await self.handler.pin(str(request.get("path", "")), report)
            elif cmd == "unpin":
                result = await self.handler.unpin(str(request.get("path", "")))
            elif cmd == "pins":
                result = await self.handler.pins()
            elif cmd == "unmount":
                await self.handler.unmount(bool(request.get("flush", True)))
                result = None
            else:
                await send({"error": f"unknown command {cmd!r}"})
                return
        except Exception as e:
            log.exception("control command %r failed", cmd)
            message = " ".join(str(e).split()) or type(e).__name__
            await send({"error": message})
            return
        await send({"result": result})


# ---- client ----

_DEFAULT = object()


class ControlClient:
    """Blocking client for the CLI. `timeout` bounds quick requests; flush and unmount wait as long as
    the daemon needs (interrupt them with Ctrl-C)."""

    def __init__(self, path: str | os.PathLike[str], timeout: float | None = 15.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout

    def status(self) -> dict:
        return self.request("status")

    def flush(self, on_progress: Callable[[Progress], None] | None = None) -> dict:
        return self.request("flush", on_progress=on_progress, timeout=None)

    def resolve(self, path: str) -> dict:
        return self.request("resolve", path=path, timeout=None)

    def pin(self, path: str, on_progress: Callable[[Progress], None] | None = None) -> dict:
        return self.request("pin", path=path, on_progress=on_progress, timeout=None)

    def unpin(self, path: str) -> dict:
        return self.request("unpin", path=path, timeout=None)

    def pins(self) -> list[dict]:
        return self.request("pins", timeout=None)

    def unmount(self, flush: bool = True) -> None:
        """Ask the daemon to stop; returns once it has accepted (it may still be exiting)."""
        try:
            self.request("unmount", flush=flush, timeout=None)
        except _ClosedEarly:
            pass  # it exited before answering: that is what we asked for

    def request(self, cmd: str, *, on_progress: Callable[[Progress], None] | None = None,
                timeout: float | None | object = _DEFAULT, **args: Any) -> Any:
        """Send one command; call `on_progress` for each progress line; return the result."""
        sock = self._connect()
        try:
            sock.settimeout(self.timeout if timeout is _DEFAULT else timeout)  # type: ignore[arg-type]
            try:
                sock.sendall(_encode({"cmd": cmd, **args}))
                with sock.makefile("rb") as f:
                    while True:
                        line = f.readline(MAX_LINE + 1)
                        if len(line) > MAX_LINE:
                            raise ControlError(f"the drivefs daemon sent an overlong answer to {cmd}")
                        if not line.endswith(b"\n"):
                            raise _ClosedEarly(f"the drivefs daemon closed the connection during {cmd}")
                        try:
                            answer = json.loads(line)
                        except ValueError:
                            raise ControlError(f"the drivefs daemon sent something unreadable during {cmd}") \
                                from None
                        if "progress" in answer:
                            if on_progress is not None:
                                on_progress(answer["progress"])
                        elif "result" in answer:
                            return answer["result"]
                        elif "error" in answer:
                            raise RemoteError(str(answer["error"]))
            except TimeoutError:
                raise ControlError(f"the drivefs daemon did not answer {cmd} within {sock.gettimeout():g} s") \
                    from None
            except (ConnectionResetError, BrokenPipeError):
                raise _ClosedEarly(f"the drivefs daemon closed the connection during {cmd}") from None
        finally:
            sock.close()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise DaemonNotRunning(f"no drivefs daemon is listening on {self.path}") from None
        except OSError as e:
            sock.close()
            raise ControlError(f"cannot connect to {self.path}: {e.strerror or e}") from None
        return sock


class _ClosedEarly(ControlError):
    """The connection ended before the final answer."""
