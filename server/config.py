"""Server configuration: where state lives (data directory, metadata database, blob store) and how long grants live.

A ServerConfig is built from, in rising precedence: the defaults, a config file (TOML or JSON; `drive server
--config FILE` or $DRIVE_SERVER_CONFIG), the environment, and the command-line options given. The embedded
defaults keep everything in the data directory: SQLite at DATA/meta.db and chunk files under DATA/blobs.

Environment: DRIVE_DATABASE_URL (`postgresql://...`, or a SQLite path / `sqlite:///path`), DRIVE_BLOB_URL
(`s3://BUCKET?endpoint=URL&region=R&prefix=P`, or a folder / `file:///path`), DRIVE_S3_ACCESS_KEY and
DRIVE_S3_SECRET_KEY (else boto3's own: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, profiles, roles).
Secrets never appear in a repr or a log line.
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_PORT = 8600

ENV_CONFIG = "DRIVE_SERVER_CONFIG"
ENV_DATABASE_URL = "DRIVE_DATABASE_URL"
ENV_BLOB_URL = "DRIVE_BLOB_URL"
ENV_S3_ACCESS_KEY = "DRIVE_S3_ACCESS_KEY"
ENV_S3_SECRET_KEY = "DRIVE_S3_SECRET_KEY"
_ENV = {"database_url": ENV_DATABASE_URL, "blob_url": ENV_BLOB_URL, "s3_access_key": ENV_S3_ACCESS_KEY,
        "s3_secret_key": ENV_S3_SECRET_KEY}
_SECRET_FIELDS = frozenset({"s3_access_key", "s3_secret_key"})


class ConfigError(ValueError):
    """The configuration (file, environment or options) cannot be used; the message says which part."""


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "drivefs" / "server"


def redact_url(url: str) -> str:
    """A URL with any password replaced by '***', fit for logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@dataclass(frozen=True, repr=False)
class ServerConfig:
    """Where the server keeps its state and how long its grants live."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    url_ttl_s: float = 300.0
    session_ttl_s: float = 7 * 86400.0
    database_url: str = ""
    """'' = SQLite at data_dir/meta.db; else 'postgresql://...' or a SQLite path ('sqlite:///path')."""
    blob_url: str = ""
    """'' = chunk files under data_dir/blobs; else 's3://bucket?endpoint=...' or a folder ('file:///path')."""
    s3_access_key: str | None = field(default=None, compare=False)
    s3_secret_key: str | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS:
                value = None if value is None else "***"
            elif f.name == "database_url":
                value = redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"ServerConfig({', '.join(shown)})"

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


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings of a TOML file (or JSON, by its .json suffix); keys are ServerConfig's field names."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read the config file {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a table of settings")
    data = dict(data.get("server", data)) if isinstance(data.get("server"), dict) else data
    known = {f.name for f in fields(ServerConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(known))})")
    return data


def load_config(config_file: Path | str | None = None, env: Mapping[str, str] | None = None,
                **given: Any) -> ServerConfig:
    """Build a ServerConfig: defaults < config file < environment < `given` (options set on the command line;
    None values count as not given). The file is `config_file`, else $DRIVE_SERVER_CONFIG if set."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    path = config_file or env.get(ENV_CONFIG) or None
    if path:
        values.update(read_config_file(Path(path)))
    for name, var in _ENV.items():
        if env.get(var):
            values[name] = env[var]
    values.update({k: v for k, v in given.items() if v is not None})
    values.setdefault("data_dir", default_data_dir())
    kinds = {"data_dir": Path, "host": str, "port": int, "url_ttl_s": float, "session_ttl_s": float,
             "database_url": str, "blob_url": str, "s3_access_key": str, "s3_secret_key": str}
    out: dict[str, Any] = {}
    for name, value in values.items():
        try:
            out[name] = kinds[name](os.path.expanduser(value) if name == "data_dir" else value)
        except (TypeError, ValueError):
            shown = "***" if name in _SECRET_FIELDS else repr(value)
            raise ConfigError(f"setting {name} = {shown} is not a valid {kinds[name].__name__}") from None
    if not 0 < out.get("port", DEFAULT_PORT) < 65536:
        raise ConfigError(f"port {out['port']} is out of range")
    for name in ("url_ttl_s", "session_ttl_s"):
        if name in out and out[name] <= 0:
            raise ConfigError(f"{name} must be positive")
    return ServerConfig(**out)
