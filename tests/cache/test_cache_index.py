"""Index: pragmas, schema versioning, kv and resumable-upload records that survive reopening."""

import apsw
import pytest

from cache.index import SCHEMA_VERSION, Index, IndexVersionError, create_tables

@pytest.fixture
def index_path(tmp_path):
    return tmp_path / "index.sqlite"


def test_pragmas_and_schema_version(index_path):
    index = Index(index_path)
    conn = index.conn
    assert conn.execute("PRAGMA journal_mode").get == "wal"
    assert conn.execute("PRAGMA synchronous").get == 1  # NORMAL
    assert conn.execute("PRAGMA busy_timeout").get > 0
    assert conn.execute("PRAGMA user_version").get == SCHEMA_VERSION
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"cached_chunks", "chunk_pins", "kv", "upload_state"} <= tables
    index.close()


def test_create_tables_is_idempotent(index_path):
    index = Index(index_path)
    index.set_kv("k", "v")
    create_tables(index.conn)
    index.close()
    index = Index(index_path)
    assert index.get_kv("k") == "v"
    index.close()


def test_an_index_from_a_newer_client_is_refused(index_path):
    Index(index_path).close()
    conn = apsw.Connection(str(index_path))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(IndexVersionError):
        Index(index_path)


def test_kv_round_trip_and_persistence(index_path):
    index = Index(index_path)
    assert index.get_kv("feed_cursor") is None
    assert index.get_kv("feed_cursor", "0") == "0"
    index.set_kv("feed_cursor", "41")
    index.set_kv("feed_cursor", "42")
    index.set_kv("device", "laptop")
    index.delete_kv("device")
    index.close()

    index = Index(index_path)
    assert index.get_kv("feed_cursor") == "42"
    assert index.get_kv("device") is None
    index.close()


def test_upload_state_round_trip_and_persistence(index_path):
    index = Index(index_path)
    assert index.load_upload("file:7") is None
    index.save_upload("file:7", None)
    index.save_upload("file:8", "sess-8")
    assert index.load_upload("file:7").session_id is None
    index.save_upload("file:7", "sess-7")
    index.close()

    index = Index(index_path)
    state = index.load_upload("file:7")
    assert state.upload_key == "file:7"
    assert state.session_id == "sess-7"
    assert state.updated > 0
    assert sorted(index.list_uploads()) == ["file:7", "file:8"]

    index.drop_upload("file:7")
    assert index.load_upload("file:7") is None
    assert index.list_uploads() == ["file:8"]
    index.close()


def test_version_1_index_is_migrated_keeping_everything_but_upload_progress(index_path):
    conn = apsw.Connection(str(index_path))
    conn.execute("CREATE TABLE upload_state (upload_key TEXT PRIMARY KEY, session_id TEXT,"
                 " manifest TEXT NOT NULL, done_hashes TEXT NOT NULL, updated INTEGER NOT NULL)")
    conn.execute("INSERT INTO upload_state VALUES ('file:1', 's1', '[]', '[]', 1)")
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO kv VALUES ('feed_cursor', '99')")
    conn.execute("PRAGMA user_version = 1")
    conn.close()

    index = Index(index_path)
    assert index.get_kv("feed_cursor") == "99"
    assert index.list_uploads() == []
    index.save_upload("file:2", "s2")
    assert index.load_upload("file:2").session_id == "s2"
    assert index.conn.execute("PRAGMA user_version").get == SCHEMA_VERSION
    index.close()


@pytest.mark.parametrize("version, table, row", [
    (2, "pinned", "(5)"),  # version 3 added the pinned table
    (3, "holes", "(5, 0, 10, 'h', 1, 1)"),  # version 4 added the holes table
])
def test_an_older_index_gains_the_tables_added_since(index_path, version, table, row):
    index = Index(index_path)
    index.set_kv("feed_cursor", "7")
    index.conn.execute(f"DROP TABLE {table}")
    index.conn.execute(f"PRAGMA user_version = {version}")
    index.close()

    index = Index(index_path)
    assert index.get_kv("feed_cursor") == "7"
    index.conn.execute(f"INSERT INTO {table} VALUES {row}")
    assert index.conn.execute(f"SELECT count(*) FROM {table}").get == 1
    assert index.conn.execute("PRAGMA user_version").get == SCHEMA_VERSION == 4
    index.close()


def test_transaction_rolls_back_on_error(index_path):
    index = Index(index_path)
    index.set_kv("k", "before")
    with pytest.raises(RuntimeError):
        with index.transaction() as conn:
            conn.execute("UPDATE kv SET value = 'during' WHERE key = 'k'")
            index.set_kv("other", "nested")  # nested: a savepoint inside the outer transaction
            raise RuntimeError("boom")
    assert index.get_kv("k") == "before"
    assert index.get_kv("other") is None
    index.close()


def test_a_second_connection_sees_committed_writes(index_path):
    index = Index(index_path)
    index.set_kv("k", "v")
    reader = apsw.Connection(str(index_path))
    assert reader.execute("SELECT value FROM kv WHERE key = 'k'").get == "v"
    reader.close()
    index.close()
