"""Counts of what the reliability tests exercised, printed at the end of the pytest run.

Each test adds to a JSON file under the session's base temp directory (`reliability-counts.json`);
`pytest_terminal_summary` prints one `reliability:` line from it, so the counts show in CI output
without `-s`. `scripts/soak` reads the same file after each of its runs.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

COUNTS_FILE = "reliability-counts.json"
KEYS = ("kill_points", "faults_injected", "fuzz_cases", "files_verified")
_PATH = pytest.StashKey[Path]()
_LOCK = threading.Lock()


class Counts:
    """Adds to the run's counts file; safe to call from the test's threads."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, **amounts: int) -> None:
        unknown = set(amounts) - set(KEYS)
        if unknown:
            raise ValueError(f"unknown counts {sorted(unknown)}")
        with _LOCK:
            data = read_counts(self.path)
            for key, n in amounts.items():
                data[key] = data.get(key, 0) + int(n)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1))
            tmp.replace(self.path)


def read_counts(path: Path) -> dict[str, int]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def format_counts(data: dict[str, int]) -> str:
    return ("reliability: kill points survived={kill_points}, faults injected={faults_injected}, "
            "fuzz cases={fuzz_cases}, files verified={files_verified}").format(**{k: data.get(k, 0) for k in KEYS})


@pytest.fixture(scope="session")
def counts(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Counts:
    path = tmp_path_factory.getbasetemp() / COUNTS_FILE
    pytestconfig.stash[_PATH] = path
    return Counts(path)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    path = config.stash.get(_PATH, None)
    if path is None:
        return
    terminalreporter.write_sep("-", "reliability counts")
    terminalreporter.write_line(format_counts(read_counts(path)))
