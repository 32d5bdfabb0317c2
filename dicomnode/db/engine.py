"""Engine and session factory: SQLite (WAL, FULL sync, busy timeout, BEGIN IMMEDIATE) or PostgreSQL (psycopg).

SQLite transactions start with ``BEGIN IMMEDIATE`` so concurrent writers queue on the busy timeout instead of
failing on a read-to-write upgrade; ``synchronous=FULL`` makes each commit durable before it returns.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_S = 60.0


def is_sqlite(url: str | Engine) -> bool:
    name = url.dialect.name if isinstance(url, Engine) else make_url(url).get_backend_name()
    return name == "sqlite"


def error_summary(exc: BaseException | None) -> str:
    """One line naming a database error without the SQL or its parameters (which may hold patient data)."""
    if exc is None:
        return "unknown error"
    orig = getattr(exc, "orig", None)
    inner = orig if isinstance(orig, BaseException) else exc
    text = str(inner).strip().splitlines()[0] if str(inner).strip() else ""
    if isinstance(exc, SQLAlchemyError) and inner is exc:
        text = text.split("[SQL:")[0].strip()
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite files get their parent directory created and the pragmas above.

    SQL parameters are left out of error messages and logs (``hide_parameters``): they may be patient data.
    """
    kwargs.setdefault("hide_parameters", True)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql":
        # never hang on an unreachable server: fail fast, the caller answers 0xA700 / retries later
        kwargs.setdefault("connect_args", {"connect_timeout": 10})
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_timeout", 30)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    return create_engine(url, **kwargs)


def make_session_factory(engine_or_url: Engine | str) -> sessionmaker[Session]:
    """A ``sessionmaker`` (``expire_on_commit=False``) bound to an engine or a URL."""
    engine = make_engine(engine_or_url) if isinstance(engine_or_url, str) else engine_or_url
    return sessionmaker(engine, expire_on_commit=False)



def presize_sqlite_wal(engine: Engine, megabytes: int = 8) -> None:
    """Grow an SQLite WAL once and restart it, so later commits overwrite it in place.

    An appending WAL needs a file-system journal commit on every durable commit (measured ~4-8 ms); a WAL
    rewritten in place needs only a data flush (~0.2 ms). The WAL lives as long as a connection is open (the
    engine's pool keeps one). No-op for other databases; best effort (a busy checkpoint is simply skipped).
    """
    if engine.dialect.name != "sqlite" or not engine.url.database or engine.url.database == ":memory:":
        return
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("BEGIN IMMEDIATE")
        cur.execute("CREATE TABLE IF NOT EXISTS _wal_presize (b BLOB)")
        cur.execute("INSERT INTO _wal_presize VALUES (zeroblob(?))", (megabytes << 20,))
        cur.execute("COMMIT")
        cur.execute("BEGIN IMMEDIATE")
        cur.execute("DROP TABLE _wal_presize")
        cur.execute("COMMIT")
        cur.execute("PRAGMA wal_checkpoint(RESTART)")
        cur.fetchall()
        cur.close()
    finally:
        raw.close()


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched (``Session.execute`` returns a ``CursorResult`` for them, typed as
    ``Result``): what decides who won a conditional update."""
    return int(cast(CursorResult[Any], result).rowcount)
