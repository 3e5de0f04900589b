"""The PostgreSQL adapter under the metadata store: versioned, idempotent schema; writers serialised across
connections (as they would be across server processes); changes announced over LISTEN/NOTIFY."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from server import models
from server.store.db import PostgresDatabase, _payloads
from server.store.metadata import MetadataStore
from server.store.schema import SCHEMA_VERSION, SchemaTooNew

pytestmark = pytest.mark.needs_scaled


@pytest.fixture
def pg_url(scaled_backend) -> str:
    scaled_backend.start()
    return scaled_backend.pg.create_database()


def _store(url: str) -> MetadataStore:
    db = PostgresDatabase(url)
    store = MetadataStore(db, on_change=db.publish)
    store.init_schema()
    return store


def test_schema_is_versioned_and_init_is_idempotent(pg_url):
    stores = []
    with ThreadPoolExecutor(4) as ex:  # several servers starting at once on an empty database
        stores = list(ex.map(lambda _: _store(pg_url), range(4)))
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        conn.execute("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(SchemaTooNew):
        stores[0].init_schema()
    for s in stores:
        s.db.close()


def test_writers_are_serialised_across_connections(pg_url):
    store = _store(pg_url)
    user, _ = store.add_user("w")
    # many threads (= many connections) create folders at once: every one lands, names stay unique,
    # and the journal's sequence numbers come out gap-free in commit order
    def mk(i: int) -> int:
        return store.create_folder(user, models.FolderCreate(parent_id=user.root_id, name=f"d{i}")).id

    with ThreadPoolExecutor(16) as ex:
        ids = list(ex.map(mk, range(64)))
    assert len(set(ids)) == 64
    page = store.changes(user, 0, 1000)
    seqs = [c.seq for c in page.changes]
    assert seqs == sorted(seqs) and len(seqs) == 64
    listing = store.list_children(user, user.root_id, None, 1000)
    assert sorted(e.name for e in listing.entries) == sorted(f"d{i}" for i in range(64))
    store.db.close()


def test_changes_are_announced_to_every_listener(pg_url):
    a, b = _store(pg_url), _store(pg_url)
    heard: list = []
    got = threading.Event()

    def on_change(users):
        heard.append(users)
        got.set()

    b.db.subscribe(on_change)
    user, _ = a.add_user("n")
    a.create_folder(user, models.FolderCreate(parent_id=user.root_id, name="x"))
    assert got.wait(5) and heard == [{user.id}]
    a.db.publish(set(range(1, 5000)))  # more ids than one NOTIFY payload holds
    deadline = time.monotonic() + 5
    while sum(len(h) for h in heard) < 1 + 4999 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set().union(*heard[1:]) == set(range(1, 5000))
    a.db.close()
    b.db.close()


def test_payloads_stay_under_the_notify_limit():
    parts = list(_payloads(range(10**6, 10**6 + 3000)))
    assert len(parts) > 1 and all(len(p) < 8000 for p in parts)
    assert sorted(int(x) for p in parts for x in p.split(",")) == list(range(10**6, 10**6 + 3000))


def test_text_postgres_cannot_hold_is_a_client_error(pg_url):
    from server.errors import BadRequest

    store = _store(pg_url)
    user, _ = store.add_user("t")
    for path in ("a\x00b", "\udcff"):
        with pytest.raises(BadRequest):
            store.node_by_path(user, path)
    store.db.close()
