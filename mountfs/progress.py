"""Progress of a long daemon command (flush, pin) on the terminal: a tqdm bar on a tty, nothing otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any


class ProgressView:
    """Called with each progress report ({done,total}_{bytes,files}); remembers the last one."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.last: dict[str, int] = {}
        self.started = time.monotonic()
        self._bar = None
        self._tty = sys.stderr.isatty()

    def __call__(self, progress: dict[str, Any]) -> None:
        self.last = {k: int(progress.get(k) or 0) for k in ("done_bytes", "total_bytes", "done_files", "total_files")}
        if not self._tty:
            return
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self.last["total_bytes"], desc=self.label, unit="B", unit_scale=True,
                             unit_divisor=1024, file=sys.stderr, leave=False, dynamic_ncols=True)
        bar = self._bar
        if bar.total != self.last["total_bytes"]:
            bar.total = self.last["total_bytes"]
        bar.update(self.last["done_bytes"] - bar.n)
        bar.set_postfix_str(f"{self.last['done_files']}/{self.last['total_files']} files", refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def seconds(self) -> float:
        return max(time.monotonic() - self.started, 1e-3)
