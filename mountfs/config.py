"""Where the client keeps its settings, the saved login, and what one mount is configured with.

Everything here is plain files and no network, so the CLI and the daemon share it:

- `<config>/credentials.json` (mode 0600): the one saved login, `{"server", "user", "token"}`.
  `<config>` is `$DRIVE_CONFIG_DIR`, else `~/.config/drivefs`.
- `<cache_dir>/mount.json` (mode 0600): the `MountConfig` the daemon is started with. It names the
  credentials file instead of holding the token, so the token is never on a command line.
- The cache of one drive defaults to `$DRIVE_CACHE_DIR/<user>@<host>_<port>`, else
  `~/.cache/drivefs/<user>@<host>_<port>`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_CACHE_LIMIT", "ConfigError", "Credentials", "MountConfig", "config_dir", "credentials_path",
    "default_cache_dir", "default_control_socket", "format_size", "load_credentials", "normalize_server_url",
    "parse_size", "save_credentials", "write_private",
]

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
DEFAULT_CACHE_LIMIT = 10 * GiB

# sun_path is 108 bytes on Linux including the terminating NUL; keep clear of the edge.
_MAX_SOCKET_PATH = 100


class ConfigError(Exception):
    """A settings or credentials file that cannot be used; the message is one line for the user."""


# ---- directories ----

def config_dir() -> Path:
    """`$DRIVE_CONFIG_DIR`, else `~/.config/drivefs` (read on every call, so tests can redirect it)."""
    env = os.environ.get("DRIVE_CONFIG_DIR")
    return Path(env).expanduser() if env else Path.home() / ".config" / "drivefs"


def credentials_path() -> Path:
    return config_dir() / "credentials.json"


def normalize_server_url(url: str) -> str:
    """`https://host[:port][/prefix]` without a trailing slash; ConfigError for anything else."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{url!r} is not a server URL: give one like https://drive.example.com")
    if parts.query or parts.fragment:
        raise ConfigError(f"{url!r} is not a server URL: drop the '?' or '#' part")
    return url


def default_cache_dir(server: str, user: str) -> Path:
    """`<cache root>/<user>@<host>_<port>`: one cache per user and server."""
    parts = urlsplit(server)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    env = os.environ.get("DRIVE_CACHE_DIR")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "drivefs"
    return root / f"{user}@{parts.hostname}_{port}"


def default_control_socket(cache_dir: str | os.PathLike[str]) -> str:
    """`<cache_dir>/control.sock`, unless that path is too long for an AF_UNIX address.

    Then a name derived from the cache directory in `$XDG_RUNTIME_DIR` (else the temp directory), so
    the same cache directory always gets the same socket.
    """
    path = os.path.join(os.fspath(cache_dir), "control.sock")
    if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(os.path.abspath(cache_dir))).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return os.path.join(runtime, f"drivefs-{os.getuid()}-{digest}.sock")


# ---- private files ----

def write_private(path: str | os.PathLike[str], text: str) -> None:
    """Write a file readable by its owner only (0600 from the first byte), replacing it atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _check_private(path: Path, st: os.stat_result) -> None:
    """Refuse a secret that others can read or that someone else owns (as ssh does with keys)."""
    if st.st_uid != os.getuid():
        raise ConfigError(f"{path} belongs to uid {st.st_uid}, not to you: remove it and run drive login again")
    if st.st_mode & 0o077:
        raise ConfigError(f"{path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                          f"run 'chmod 600 {path}', and get a new token if others may have read it")


# ---- credentials ----

@dataclass(frozen=True)
class Credentials:
    """The saved login: which server, as whom, with which token."""

    server: str
    user: str
    token: str = field(repr=False)


def load_credentials(path: str | os.PathLike[str] | None = None) -> Credentials | None:
    """The saved login, or None if there is none. ConfigError if it is unsafe or unreadable."""
    path = Path(path) if path is not None else credentials_path()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        _check_private(path, os.fstat(f.fileno()))
        raw = f.read()
    try:
        data = json.loads(raw)
        creds = Credentials(server=normalize_server_url(data["server"]), user=str(data["user"]),
                            token=str(data["token"]))
    except (ValueError, KeyError, TypeError, ConfigError):
        raise ConfigError(f"{path} is damaged: run drive login again") from None
    if not creds.user or not creds.token:
        raise ConfigError(f"{path} is damaged: run drive login again")
    return creds


def save_credentials(creds: Credentials, path: str | os.PathLike[str] | None = None) -> Path:
    """Save the login (mode 0600), replacing any earlier one; returns the file's path."""
    path = Path(path) if path is not None else credentials_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_private(path, json.dumps(asdict(creds), indent=2) + "\n")
    return path


# ---- sizes ----

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": TiB}


def parse_size(text: str) -> int:
    """`10G`, `500M`, `1.5GiB`, `4096` -> bytes. K/M/G/T are powers of 1024. ValueError otherwise."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size: give one like 500M or 10G")
    n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if n <= 0:
        raise ValueError(f"{text!r} is not a size: it must be more than zero")
    return n


def format_size(n: int | float) -> str:
    """Bytes as `512 B`, `1.5 KiB`, `10.0 GiB`."""
    if n < KiB:
        return f"{int(n)} B"
    for unit, scale in (("KiB", KiB), ("MiB", MiB), ("GiB", GiB)):
        if n < scale * 1024:
            return f"{n / scale:.1f} {unit}"
    return f"{n / TiB:.1f} TiB"


# ---- one mount ----

@dataclass
class MountConfig:
    """What the daemon needs to run one mount. Paths are absolute strings, so it round-trips as JSON.

    `log_path` and `control_socket` default to files in `cache_dir` when left empty.
    """

    mountpoint: str
    cache_dir: str
    server: str
    user: str
    credentials_path: str
    device: str = field(default_factory=socket.gethostname)
    cache_limit: int = DEFAULT_CACHE_LIMIT
    allow_other: bool = False
    log_path: str = ""
    control_socket: str = ""
    foreground: bool = False

    def __post_init__(self) -> None:
        self.mountpoint = os.path.abspath(self.mountpoint)
        self.cache_dir = os.path.abspath(self.cache_dir)
        self.credentials_path = os.path.abspath(self.credentials_path)
        self.log_path = os.path.abspath(self.log_path or os.path.join(self.cache_dir, "mount.log"))
        self.control_socket = self.control_socket or default_control_socket(self.cache_dir)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> MountConfig:
        """Parse; unknown keys are ignored (a newer CLI may add some). ConfigError if unusable."""
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (ValueError, TypeError, AttributeError) as e:
            raise ConfigError(f"bad mount configuration: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as JSON, mode 0600."""
        write_private(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MountConfig:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from None
        return cls.from_json(text)

    def load_credentials(self) -> Credentials:
        """The login this mount runs as; ConfigError if it is gone or is for another server or user."""
        creds = load_credentials(self.credentials_path)
        if creds is None:
            raise ConfigError(f"{self.credentials_path} is missing: run drive login")
        if creds.server != normalize_server_url(self.server) or creds.user != self.user:
            raise ConfigError(f"{self.credentials_path} is now a login for {creds.user} at {creds.server}, "
                              f"not {self.user} at {self.server}: run drive login again")
        return creds
