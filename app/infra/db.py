"""Engine, sessions and the declarative base.

SQLite (the embedded default) runs in WAL mode with a busy timeout, so readers never wait for the
writer and writers queue instead of failing. PostgreSQL is the production store; its pool is sized
to FastAPI's thread pool, because authlib is synchronous and protocol routes run in threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, MetaData, create_engine, event
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor, ExecutionContext
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def now() -> int:
    """Timestamps are integer seconds since the epoch (UTC) in every table."""
    return int(time.time())


SQLITE_BUSY_TIMEOUT_MS = 10_000
POOL_SIZE = 40  # FastAPI's default thread-pool size


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=POOL_SIZE,
            max_overflow=10,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
            cur = dbapi_conn.cursor()
            if not url.endswith(":memory:") and url != "sqlite://":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        _serialize_writers(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_size=POOL_SIZE, max_overflow=10, pool_pre_ping=True, pool_timeout=10)


class WriterGate:
    """One writing transaction at a time per process, queued in Python.

    SQLite has one writer; a second one waits in SQLite's busy handler, which polls with sleeps
    of up to 100 ms, so under concurrent writes most of the time goes to sleeping. The gate is
    taken before a transaction's first write and left when its connection goes back to the
    pool (after the commit or rollback), so writers wake the moment the previous one is done.
    Re-entrant per thread (a request may open a second session); left from any thread. Other
    processes on the same file still meet SQLite's busy timeout.
    """

    def __init__(self, timeout: float):
        self._cond = threading.Condition()
        self._owner: int | None = None
        self._depth = 0
        self._timeout = timeout

    def enter(self) -> bool:
        me = threading.get_ident()
        with self._cond:
            deadline = time.monotonic() + self._timeout
            while self._owner not in (None, me):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False  # let SQLite's busy timeout decide, rather than wait forever
                self._cond.wait(left)
            self._owner = me
            self._depth += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._depth -= 1
            if self._depth <= 0:
                self._owner, self._depth = None, 0
                self._cond.notify()


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "SAVEPOINT", "CREATE", "DROP", "ALTER")


def _serialize_writers(engine: Engine) -> None:
    gate = WriterGate(SQLITE_BUSY_TIMEOUT_MS / 1000)

    @event.listens_for(engine, "before_cursor_execute")
    def _enter(
        conn: Connection,
        cursor: DBAPICursor,
        statement: str,
        parameters: Any,
        context: ExecutionContext | None,
        executemany: bool,
    ) -> None:
        info = conn.info
        if not info.get("writer_gate") and statement.lstrip()[:9].upper().startswith(_WRITES):
            info["writer_gate"] = gate.enter()

    @event.listens_for(engine, "checkin")
    def _leave(dbapi_conn: DBAPIConnection | None, record: ConnectionPoolEntry) -> None:
        if record.info.pop("writer_gate", False):
            gate.leave()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception."""
    with factory() as session, session.begin():
        yield session


def is_unavailable(exc: BaseException) -> bool:
    """True when the database cannot be reached (answer 503, not 500)."""
    if isinstance(exc, OperationalError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated
