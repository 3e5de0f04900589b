"""An append-only file of records that makes changes held in an open index transaction survive a kill."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("drivefs.redo")


class RedoLog:
    """One JSON record per line, each appended with a single write(2).

    A record is in the kernel's page cache once `append` returns, so a killed process loses none of
    them; like a commit with synchronous=NORMAL, it is made durable against power loss by the next
    fsync of the index (Index.sync commits first, and a commit empties the log). A line cut short by a
    power loss is skipped when read.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._empty = os.fstat(self._fd).st_size == 0

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()  # ASCII: names are \u-escaped
        if os.write(self._fd, line) != len(line):  # only a full disk stops a small write short
            raise OSError(28, "short write to the redo log")  # ENOSPC
        self._empty = False

    def records(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                log.warning("skipping a damaged record in %s", self.path)
        return out

    def clear(self) -> None:
        if not self._empty:
            os.ftruncate(self._fd, 0)
            self._empty = True

    def close(self) -> None:
        os.close(self._fd)
