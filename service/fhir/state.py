"""The CDS service's state in a database: the cards it issued, the feedback on them and the JWT ``jti`` replay
entries. One small schema, two engines:

- **PostgreSQL** (``GSHAP_DATABASE_URL=postgresql://...``): shared by every replica (a token replayed against
  another replica is refused there; feedback outlives the pod). psycopg 3 with a ``psycopg_pool`` pool; a broken
  connection is dropped by the pool and replaced by a new one, so the service reconnects by itself.
- **SQLite** (the default): one file on this machine (WAL mode, ``synchronous=FULL``), shared by the workers of one
  machine, not by replicas.

Migrations (:data:`MIGRATIONS`) run at start-up or by ``gshap db upgrade``, in one transaction under a lock
(PostgreSQL: an advisory lock; SQLite: ``BEGIN IMMEDIATE``), so replicas starting together migrate once. Version 1 is
the old SQLite feedback table; version 2 moves its rows into the new tables (reason by code only, no display text).

A failure to reach the database raises :class:`StoreUnavailableError` (the web layer answers 503), never a silent
success: a write is acknowledged only after its transaction committed. No patient value is ever written here:
cards are kept by uuid, model version, time and the override codes they offered.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "TABLES",
    "CleanupLimits",
    "Database",
    "ReplayStore",
    "StateDatabase",
    "StoreFullError",
    "StoreUnavailableError",
    "Tx",
    "cleanup",
    "migrate",
    "open_database",
    "schema_version",
]

SCHEMA_VERSION = 2
# pg_advisory_xact_lock's key for migrations ("gshapdb" in ASCII, fits a signed bigint)
MIGRATION_LOCK_KEY = 0x67736861706462
TABLES = ("gshap_schema", "gshap_counters", "cds_cards", "cds_feedback", "cds_jti")
FEEDBACK_ROWS = "feedback_rows"
CARDS = "cards"


class StoreUnavailableError(Exception):
    """The database cannot be reached or failed mid-call; nothing was written (or nothing acknowledged)."""


class StoreFullError(Exception):
    """A cap is reached (feedback rows): refused until retention frees room, in ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Tx:
    """One transaction's statements, written with ``?`` placeholders for both engines."""

    def __init__(self, raw: Any, dialect: str) -> None:
        self._raw = raw
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a statement; its rows (``RETURNING`` included)."""
        cur = self._raw.execute(self._sql(sql), tuple(params))
        if cur.description is None:
            return []
        return [tuple(r) for r in cur.fetchall()]

    def run(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        cur = self._raw.execute(self._sql(sql), tuple(params))
        return int(cur.rowcount)

    def many(self, sql: str, params: Sequence[Sequence[Any]]) -> None:
        if self.dialect == "postgresql":
            with self._raw.cursor() as cur:
                cur.executemany(self._sql(sql), [tuple(p) for p in params])
        else:
            self._raw.executemany(sql, [tuple(p) for p in params])

    def stream(self, sql: str, params: Sequence[Any] = (), size: int = 500) -> Iterator[tuple[Any, ...]]:
        """A statement's rows, fetched ``size`` at a time (a large table is never held whole)."""
        cur = self._raw.execute(self._sql(sql), tuple(params))
        while chunk := cur.fetchmany(size):
            yield from (tuple(r) for r in chunk)

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        got = self.rows(sql, params)
        return got[0][0] if got else None


class Database:
    """A PostgreSQL pool or an SQLite file behind one interface: :meth:`transaction`."""

    def __init__(self, dialect: str, *, describe: str) -> None:
        self.dialect = dialect
        self.describe = describe  # for logs and messages: never a password

    @contextmanager
    def transaction(self) -> Iterator[Tx]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    def close(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class _SqliteDatabase(Database):
    def __init__(self, path: Path, *, timeout: float) -> None:
        super().__init__("sqlite", describe=f"sqlite:{path}")
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=timeout)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreUnavailableError(f"{self.describe}: {exc}") from None
            try:
                yield Tx(self._conn, "sqlite")
                self._conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._rollback()
                raise StoreUnavailableError(f"{self.describe}: {exc}") from None
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        with suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _PostgresDatabase(Database):
    def __init__(self, url: str, *, pool_size: int, timeout: float) -> None:
        import psycopg
        import psycopg_pool
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(url)
        where = f"{info.get('host', '')}:{info.get('port', '')}/{info.get('dbname', '')}"
        super().__init__("postgresql", describe=f"postgresql://{where}")
        self.timeout = timeout
        self._unavailable: tuple[type[BaseException], ...] = (
            psycopg.OperationalError,
            psycopg.InterfaceError,
            psycopg_pool.PoolTimeout,
            psycopg_pool.PoolClosed,
        )
        # statement_timeout: a statement stuck on a lock or a dying server ends in a 503, not a hung request
        kwargs = {
            "connect_timeout": max(1, round(timeout)),
            "options": f"-c statement_timeout={int(timeout * 1000)}",
            "application_name": "gshap-service",
        }
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            open=False,
            timeout=timeout,
            # a connection is checked as it leaves the pool: one broken while the server was down is replaced
            check=psycopg_pool.ConnectionPool.check_connection,
            # keep trying to reconnect for as long as it takes (the default gives up after 5 minutes)
            reconnect_timeout=365 * 86400.0,
            name="gshap-state",
        )
        self._pool.open(wait=False)

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        try:
            with self._pool.connection(timeout=self.timeout) as conn, conn.transaction():
                yield Tx(conn, "postgresql")
        except self._unavailable as exc:
            raise StoreUnavailableError(f"{self.describe}: {type(exc).__name__}: {str(exc)[:200]}") from None

    def close(self) -> None:
        self._pool.close(timeout=2.0)


def open_database(url: str | None, sqlite_path: Path, *, pool_size: int = 4, timeout: float = 3.0) -> Database:
    """PostgreSQL when ``url`` is given (``postgresql://`` or ``postgres://``), else the SQLite file."""
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("GSHAP_DATABASE_URL must be a postgresql:// URL")
        return _PostgresDatabase(url, pool_size=pool_size, timeout=timeout)
    try:
        return _SqliteDatabase(sqlite_path, timeout=timeout)
    except (OSError, sqlite3.Error) as exc:
        raise StoreUnavailableError(f"sqlite:{sqlite_path}: {exc}") from None


# ---- schema --------------------------------------------------------------------------------------------------------


def _legacy_table(tx: Tx) -> None:
    """Version 1: the feedback table of the first SQLite store (kept so that old files migrate like new ones)."""
    if tx.dialect == "sqlite":
        tx.run(
            "CREATE TABLE IF NOT EXISTS feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at TEXT NOT NULL, "
            "service_id TEXT NOT NULL, card_uuid TEXT NOT NULL, outcome TEXT NOT NULL, outcome_timestamp TEXT NOT "
            "NULL, accepted_suggestions TEXT, override_system TEXT, override_code TEXT, override_display TEXT, "
            "has_user_comment INTEGER NOT NULL DEFAULT 0)"
        )


def _tables(tx: Tx) -> None:
    """Version 2: issued cards, feedback by code, jti replay entries, counters; the legacy rows moved over."""
    ident = (
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
        if tx.dialect == "postgresql"
        else "INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    for sql in (
        "CREATE TABLE gshap_counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        "CREATE TABLE cds_cards (uuid TEXT PRIMARY KEY, service_id TEXT NOT NULL, model_version TEXT NOT NULL, "
        "issued_at DOUBLE PRECISION NOT NULL, reason_system TEXT, reason_codes TEXT NOT NULL, "
        "feedback_rows INTEGER NOT NULL DEFAULT 0)",
        "CREATE INDEX cds_cards_issued_at ON cds_cards (issued_at)",
        f"CREATE TABLE cds_feedback (id {ident}, received_at DOUBLE PRECISION NOT NULL, service_id TEXT NOT NULL, "
        "card_uuid TEXT NOT NULL, model_version TEXT, "
        "outcome TEXT NOT NULL CHECK (outcome IN ('accepted', 'overridden')), outcome_at TEXT NOT NULL, "
        "outcome_week TEXT NOT NULL, accepted_suggestions INTEGER NOT NULL DEFAULT 0, override_code TEXT, "
        "has_user_comment SMALLINT NOT NULL DEFAULT 0)",
        "CREATE INDEX cds_feedback_received_at ON cds_feedback (received_at)",
        "CREATE TABLE cds_jti (key TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX cds_jti_expires_at ON cds_jti (expires_at)",
    ):
        tx.run(sql)
    tx.run("INSERT INTO gshap_counters (name, value) VALUES (?, 0), (?, 0)", (FEEDBACK_ROWS, CARDS))
    if tx.dialect == "sqlite":
        from service.fhir.feedback import copy_legacy_rows

        # a second cursor on the same connection reads while the copy inserts (SQLite allows it in one transaction)
        rows = list(tx.stream(LEGACY_SELECT))
        copy_legacy_rows(tx, rows)
        tx.run("DROP TABLE feedback")


LEGACY_SELECT = (
    "SELECT substr(received_at, 1, 64), substr(service_id, 1, 64), substr(card_uuid, 1, 300), substr(outcome, 1, 16), "
    "substr(outcome_timestamp, 1, 64), CASE WHEN json_valid(accepted_suggestions) THEN "
    "json_array_length(accepted_suggestions) ELSE 0 END, substr(override_system, 1, 300), "
    "substr(override_code, 1, 64), has_user_comment FROM feedback ORDER BY id"
)
"""The old store's rows as :func:`service.fhir.feedback.copy_legacy_rows` reads them (display text never read)."""

MIGRATIONS: tuple[Callable[[Tx], None], ...] = (_legacy_table, _tables)
"""Migration n+1 is ``MIGRATIONS[n]``; the schema's version is the number applied."""


def schema_version(tx: Tx) -> int:
    if tx.dialect == "postgresql":
        exists = tx.scalar("SELECT to_regclass('gshap_schema') IS NOT NULL")
    else:
        exists = tx.scalar("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'gshap_schema'")
    if not exists:
        return 0
    return int(tx.scalar("SELECT max(version) FROM gshap_schema") or 0)


def migrate(db: Database) -> tuple[int, int]:
    """Bring the schema to :data:`SCHEMA_VERSION` under the migration lock; (version before, version after)."""
    with db.transaction() as tx:
        if tx.dialect == "postgresql":
            tx.rows("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))
        before = schema_version(tx)
        if before > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database's schema is version {before}, newer than this service's {SCHEMA_VERSION}: "
                "upgrade the service"
            )
        if before == 0:
            tx.run("CREATE TABLE gshap_schema (version INTEGER NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
        for version in range(before + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version - 1](tx)
            tx.run("INSERT INTO gshap_schema (version, applied_at) VALUES (?, ?)", (version, time.time()))
        return before, SCHEMA_VERSION


# ---- the jti replay cache -------------------------------------------------------------------------------------------


def jti_key(issuer: str, jti: str) -> str:
    """The stored key of an (issuer, jti) pair: a SHA-256, so that a row has a fixed size whatever the token."""
    return hashlib.sha256(f"{issuer}\x00{jti}".encode("utf-8", "surrogateescape")).hexdigest()


class ReplayStore:
    """The JWT ``jti`` replay cache in the database: shared by every process that uses the same database."""

    def __init__(self, db: Callable[[], Database]) -> None:
        self._db = db

    def remember(self, issuer: str, jti: str, expires_at: float, *, now: float | None = None) -> bool:
        """Record the pair until ``expires_at``; False when it is already recorded and not yet expired (a replay).
        :class:`StoreUnavailableError` when it cannot be checked (the caller fails closed)."""
        now = time.time() if now is None else now
        with self._db().transaction() as tx:
            got = tx.rows(
                "INSERT INTO cds_jti (key, expires_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET expires_at = "
                "excluded.expires_at WHERE cds_jti.expires_at < ? RETURNING key",
                (jti_key(issuer, jti), expires_at, now),
            )
        return bool(got)


# ---- retention ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CleanupLimits:
    """What one cleanup round deletes at most (rows of each table), and the retention ages in seconds."""

    card_retention_s: float
    feedback_retention_s: float
    batch: int = 5000


def _delete_batch(tx: Tx, table: str, key: str, column: str, before: float, batch: int) -> int:
    return tx.run(
        f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {column} < ? LIMIT ?)",
        (before, batch),
    )


def cleanup(db: Database, limits: CleanupLimits, *, now: float | None = None) -> dict[str, int]:
    """One bounded round: expired jti entries, cards and feedback past their retention (at most ``limits.batch``
    rows of each, each table in its own short transaction). The counts deleted, by table."""
    now = time.time() if now is None else now
    out: dict[str, int] = {}
    with db.transaction() as tx:
        out["cds_jti"] = _delete_batch(tx, "cds_jti", "key", "expires_at", now, limits.batch)
    with db.transaction() as tx:
        n = _delete_batch(tx, "cds_cards", "uuid", "issued_at", now - limits.card_retention_s, limits.batch)
        tx.run("UPDATE gshap_counters SET value = value - ? WHERE name = ?", (n, CARDS))
        out["cds_cards"] = n
    with db.transaction() as tx:
        n = _delete_batch(tx, "cds_feedback", "id", "received_at", now - limits.feedback_retention_s, limits.batch)
        tx.run("UPDATE gshap_counters SET value = value - ? WHERE name = ?", (n, FEEDBACK_ROWS))
        out["cds_feedback"] = n
    return out


def iso_week(timestamp: str) -> str:
    """``2026-W48`` for an RFC 3339 UTC time."""
    year, week, _ = dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).isocalendar()
    return f"{year}-W{week:02d}"


class StateDatabase:
    """The service's database, opened and migrated on first use. After a failure (the server down, the file not
    writable) each later use tries again, at most every :attr:`RETRY_S` seconds, and meanwhile raises
    :class:`StoreUnavailableError` at once; so the service starts without its database and picks it up when it
    comes. Called, it returns the open, migrated :class:`Database`."""

    RETRY_S = 1.0

    def __init__(self, url: str | None, sqlite_path: Path, *, pool_size: int = 4, timeout: float = 3.0) -> None:
        self.url = url
        self.sqlite_path = sqlite_path
        self.pool_size = pool_size
        self.timeout = timeout
        self._db: Database | None = None
        self._ready: Database | None = None
        self._lock = threading.Lock()
        self._next_try = 0.0
        self._error = ""

    @property
    def dialect(self) -> str:
        return "postgresql" if self.url else "sqlite"

    def __call__(self) -> Database:
        ready = self._ready
        if ready is not None:
            return ready
        with self._lock:
            if self._ready is not None:
                return self._ready
            if time.monotonic() < self._next_try:
                raise StoreUnavailableError(self._error)
            try:
                if self._db is None:
                    self._db = open_database(self.url, self.sqlite_path, pool_size=self.pool_size, timeout=self.timeout)
                migrate(self._db)
            except StoreUnavailableError as exc:
                self._error = str(exc)
                self._next_try = time.monotonic() + self.RETRY_S
                raise
            self._ready = self._db
            return self._ready

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
            self._db = self._ready = None
