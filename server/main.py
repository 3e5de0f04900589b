"""Running the server process, and the admin actions that work on its data directory directly."""

from __future__ import annotations

import logging

import uvicorn

from .app import create_app
from .config import ServerConfig
from .store.db import SqliteDatabase
from .store.metadata import MetadataStore


def serve(config: ServerConfig, log_level: str = "info") -> None:
    """Run the API until interrupted. Access logs stay off: blob URLs carry signatures in their query."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config)
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level, access_log=False,
                        timeout_graceful_shutdown=3, lifespan="on")
    server = uvicorn.Server(uv)
    logging.getLogger("drivefs.server").info("serving %s on http://%s:%d", config.data_dir, config.host, config.port)
    server.run()


def open_store(config: ServerConfig) -> MetadataStore:
    """The metadata store of a data directory, for admin commands run beside (or without) the server."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = MetadataStore(SqliteDatabase(config.db_path))
    store.init_schema()
    return store
