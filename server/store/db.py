"""A minimal database adapter so the metadata store's SQL runs unchanged on SQLite and PostgreSQL.

The store writes `?` placeholders and portable SQL (RETURNING, ON CONFLICT, recursive CTEs); an adapter
only opens connections, runs transactions and translates placeholders for its driver. An adapter also
carries "these users' feeds changed" between server processes that share the database (PostgreSQL's
LISTEN/NOTIFY; nothing to do for SQLite, which one process owns).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from ..config import redact_url
from ..errors import BadRequest

log = logging.getLogger("drivefs.server")

Row = tuple[Any, ...]


class Tx(Protocol):
    """One open transaction."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None: ...
    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...
    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...


class Database(Protocol):
    """A place to run transactions; `write=True` takes the write lock up front."""

    dialect: str

    def transaction(self, write: bool = False) -> Any: ...
    def publish(self, users: set[int]) -> None: ...
    def subscribe(self, callback: Callable[[set[int] | None], None]) -> None: ...
    def close(self) -> None: ...


class _SqliteTx:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(sql, params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self._conn.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)


class SqliteDatabase:
    """SQLite in WAL mode, one connection per thread; writers serialise on BEGIN IMMEDIATE."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self._path = str(path)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode is durable against process crashes; FULL adds power-loss safety.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Tx]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield _SqliteTx(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def script(self, sql: str) -> None:
        self._conn().executescript(sql)

    def publish(self, users: set[int]) -> None:
        """One process owns a SQLite database: its in-process notifier already heard of the change."""

    def subscribe(self, callback: Callable[[set[int] | None], None]) -> None:
        """Nothing to listen to: see publish."""

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()


# ---- PostgreSQL ---------------------------------------------------------------------------------------

# The one advisory lock every write transaction takes first: writers run one at a time, as with SQLite's
# BEGIN IMMEDIATE, across every server process sharing the database. ("driv" in ASCII.)
WRITE_LOCK_KEY = 0x64726976
# The LISTEN/NOTIFY channel that carries "these users' feeds changed" between server processes.
CHANGES_CHANNEL = "drivefs_changes"
# A NOTIFY payload must stay under 8000 bytes; longer user lists go out as several notifications.
_MAX_PAYLOAD = 7000


@lru_cache(maxsize=1024)
def pg_sql(sql: str) -> str:
    """`sql` with `?` placeholders turned into psycopg's `%s`, and literal `%` doubled.

    Quoted text ('...', "...") keeps its `?` as is. SQL comments are not understood: the store writes none.
    """
    out: list[str] = []
    quote = ""
    for ch in sql:
        if ch == "%":
            out.append("%%")
        elif quote:
            out.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        else:
            out.append(ch)
    return "".join(out)


def _pg_params(params: Sequence[Any]) -> tuple[Any, ...]:
    """The parameters as a tuple, refusing text PostgreSQL cannot hold (SQLite can): NUL characters, and
    lone surrogates (not UTF-8). A client error, not a server failure."""
    for p in params:
        if isinstance(p, str):
            if "\x00" in p:
                raise BadRequest("text with NUL characters is not accepted")
            try:
                p.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest("text must be valid Unicode (no lone surrogates)") from None
    return tuple(params)


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._conn.execute(pg_sql(sql), _pg_params(params))

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return self._conn.execute(pg_sql(sql), _pg_params(params)).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._conn.execute(pg_sql(sql), _pg_params(params)).fetchall()

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._conn.cursor() as cur:
            cur.executemany(pg_sql(sql), [_pg_params(r) for r in rows])


class PostgresDatabase:
    """PostgreSQL through psycopg 3, one connection per thread.

    Write transactions are READ COMMITTED and take one advisory lock first, so writers are serialised across
    all server processes and each sees every commit made before it got the lock (which also keeps the
    journal's seq committed in order). Read transactions are REPEATABLE READ READ ONLY: one consistent
    snapshot, never a serialisation failure. Changes fan out between processes over LISTEN/NOTIFY:
    `publish` after a commit, `subscribe` in each process.
    """

    dialect = "postgresql"

    def __init__(self, url: str, connect_timeout: float = 10.0) -> None:
        import psycopg  # only servers that use PostgreSQL need it loaded

        self._psycopg = psycopg
        self._url = url
        self._connect_timeout = connect_timeout
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"PostgresDatabase({redact_url(self._url)!r})"

    def _connect(self) -> Any:
        return self._psycopg.connect(self._url, autocommit=True, connect_timeout=int(self._connect_timeout),
                                     application_name="drivefs-server")

    def _conn(self, fresh: bool = False) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and (fresh or conn.closed or conn.broken):
            self._drop(conn)
            conn = None
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _drop(self, conn: Any) -> None:
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)
        self._local.conn = None
        try:
            conn.close()
        except Exception:
            pass

    def _begin(self, write: bool) -> Any:
        """A connection with a transaction open; a connection that died while idle (a database restart)
        is replaced once, since nothing was sent on it yet."""
        for attempt in (1, 2):
            conn = self._conn(fresh=attempt == 2)
            try:
                conn.execute("BEGIN ISOLATION LEVEL " + ("READ COMMITTED" if write else "REPEATABLE READ READ ONLY"))
            except self._psycopg.OperationalError:
                if attempt == 2 or not conn.broken:
                    raise
                continue
            if write:
                try:
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                except BaseException:
                    self._rollback(conn)
                    raise
            return conn
        raise AssertionError("unreachable")

    def _rollback(self, conn: Any) -> None:
        try:
            conn.execute("ROLLBACK")
        except self._psycopg.Error:
            self._drop(conn)  # lost mid-transaction: the next transaction gets a new connection

    @contextmanager
    def transaction(self, write: bool = False) -> Iterator[Tx]:
        conn = self._begin(write)
        try:
            yield _PgTx(conn)
        except BaseException:
            self._rollback(conn)
            raise
        conn.execute("COMMIT")

    # ---- change fan-out ----

    def publish(self, users: set[int]) -> None:
        """Tell every server process (this one included) that these users' feeds changed."""
        try:
            conn = self._conn()
            for payload in _payloads(users):
                conn.execute("SELECT pg_notify(%s, %s)", (CHANGES_CHANNEL, payload))
        except self._psycopg.Error as e:
            # The change is committed; readers still find it on their next poll.
            log.warning("could not announce a change to other server processes: %s", e)

    def subscribe(self, callback: Callable[[set[int] | None], None], ready_timeout: float = 10.0) -> None:
        """Call `callback(users)` from a thread for each change published by any process, and
        `callback(None)` after reconnecting (changes may have been missed). Returns once listening."""
        if self._listener is not None:
            raise RuntimeError("already subscribed")
        ready = threading.Event()
        self._listener = threading.Thread(target=self._listen, args=(callback, ready), daemon=True,
                                          name="drivefs-pg-listener")
        self._listener.start()
        if not ready.wait(ready_timeout):
            log.warning("not yet listening for changes of other server processes; retrying in the background")

    def _listen(self, callback: Callable[[set[int] | None], None], ready: threading.Event) -> None:
        delay = 0.1
        while not self._stopping.is_set():
            try:
                with self._connect() as conn:
                    conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    if ready.is_set():
                        callback(None)
                    ready.set()
                    delay = 0.1
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=0.5):
                            users = _parse_payload(note.payload)
                            if users:
                                callback(users)
            except self._psycopg.Error as e:
                if self._stopping.is_set():
                    return
                log.warning("change listener lost its database connection (%s); reconnecting in %.1f s", e, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)
            except Exception:
                log.exception("change listener failed; restarting it")
                self._stopping.wait(1.0)

    def close(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.join(timeout=2.0)
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except Exception:
                pass


def _payloads(users: Iterable[int]) -> Iterator[str]:
    part: list[str] = []
    length = 0
    for uid in sorted(users):
        s = str(uid)
        if part and length + len(s) + 1 > _MAX_PAYLOAD:
            yield ",".join(part)
            part, length = [], 0
        part.append(s)
        length += len(s) + 1
    if part:
        yield ",".join(part)


def _parse_payload(payload: str) -> set[int]:
    out = set()
    for s in payload.split(","):
        if s.isdigit():
            out.add(int(s))
    return out


def open_database(url: str, data_dir: Path) -> SqliteDatabase | PostgresDatabase:
    """The database a URL names: '' (SQLite at data_dir/meta.db), a SQLite path or 'sqlite:///path', or
    'postgresql://...' / 'postgres://...'."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    if not url:
        return SqliteDatabase(data_dir / "meta.db")
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.startswith("/"):
            raise ValueError("a SQLite URL names an absolute path: sqlite:///var/lib/drivefs/meta.db")
        return SqliteDatabase(Path(path))
    if "://" in url:
        raise ValueError(f"unsupported database URL scheme {url.split('://', 1)[0]!r} (postgresql or sqlite)")
    return SqliteDatabase(Path(url).expanduser())
