"""Running the server process, and the admin actions that work on its data directory directly."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import FrameType

import uvicorn

from .app import create_app
from .config import ServerConfig, redact_url
from .store.db import open_database
from .store.metadata import MetadataStore


class _Server(uvicorn.Server):
    """uvicorn's server, ending open long-polls as soon as it is asked to stop (they would otherwise hold
    their connections until the graceful-shutdown timeout, so every stop took that long)."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


class StartupError(RuntimeError):
    """The server cannot start with this configuration (unreachable database or store, bad URL, ...)."""


def serve(config: ServerConfig, log_level: str = "info") -> None:
    """Run the API until interrupted. Access logs stay off: blob URLs carry signatures in their query."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = create_app(config)
    except Exception as e:
        raise StartupError(f"cannot start the server: {type(e).__name__}: {e}") from e
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level, access_log=False,
                        timeout_graceful_shutdown=3, lifespan="on")
    server = _Server(uv, on_exit=app.state.services.notifier.close)
    logging.getLogger("drivefs.server").info(
        "serving %s on http://%s:%d (metadata: %s; blobs: %s)", config.data_dir, config.host, config.port,
        redact_url(config.database_url) or "SQLite in the data directory", config.blob_url or "the data directory")
    server.run()


def open_store(config: ServerConfig) -> MetadataStore:
    """The metadata store a configuration names, for admin commands run beside (or without) the server."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = MetadataStore(open_database(config.database_url, config.data_dir))
    store.init_schema()
    return store
