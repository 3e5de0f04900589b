"""Server configuration and the layout of its data directory."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 8600


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "drivefs" / "server"


@dataclass(frozen=True)
class ServerConfig:
    """Where the server keeps its state and how long its grants live."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    url_ttl_s: float = 300.0
    session_ttl_s: float = 7 * 86400.0

    @property
    def db_path(self) -> Path:
        return self.data_dir / "meta.db"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    def secret(self) -> bytes:
        """The URL-signing key, created on first use with mode 0600."""
        path = self.data_dir / "secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())
