"""Engine, sessions and the declarative base.

SQLite (the embedded default) runs in WAL mode with a busy timeout, so readers never wait for the
writer and writers queue instead of failing. PostgreSQL is the production store; its pool is sized
to FastAPI's thread pool, because authlib is synchronous and protocol routes run in threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Generic, TypeVar

from sqlalchemy import ClauseElement, Connection, Engine, Insert, MetaData, Table, create_engine, event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine.interfaces import DBAPIConnection, DBAPICursor, Dialect, ExecutionContext
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.compiler import SQLCompiler

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


class _Compiled:
    """A statement compiled for one dialect (and, for an INSERT, one set of given columns)."""

    __slots__ = ("binds", "defaults", "positions", "results", "sql")

    def __init__(self, statement: ClauseElement, dialect: Dialect, keys: tuple[str, ...] | None):
        compiled = statement.compile(dialect=dialect, column_keys=list(keys) if keys is not None else None)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self.positions = tuple(compiled.positiontup or ()) if dialect.positional else None
        # Python-side defaults of the INSERT's columns not given (created_at=now ...).
        self.defaults = [(c.key, c.default) for c in compiled.insert_prefetch if c.default is not None]
        self.binds = [
            (name, process)
            for name, bind in compiled.binds.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        ]
        self.results = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in getattr(statement, "selected_columns", ())
        ]


class Prepared:
    """One of the hottest statements, compiled once per dialect and run on the session's DB-API
    connection, in its transaction: a call costs the driver's execute and none of SQLAlchemy's
    per-execution work (docs/decisions.md#the-hottest-statements-run-on-the-driver). What
    SQLAlchemy would do is kept: bind and result values go through their types; pending ORM
    changes are flushed first; an INSERT gets its columns' Python defaults (callables that take
    no context); the engine's before_cursor_execute listeners run (the SQLite writer gate);
    driver errors are raised as SQLAlchemy's exceptions, parameters hidden, and a lost connection
    is invalidated. No expanding (IN list) parameters: build one statement per length instead.
    """

    __slots__ = ("_compiled", "statement")

    def __init__(self, statement: ClauseElement):
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...] | None], _Compiled] = {}

    def _run(self, db: Session, params: dict[str, Any]) -> tuple[DBAPICursor, _Compiled]:
        if db.new or db.deleted or db.dirty:
            db.flush()  # as SQLAlchemy's autoflush would: the statement sees, and follows, them
        conn = db.connection()
        dialect = conn.dialect
        key = (dialect.name, tuple(params) if isinstance(self.statement, Insert) else None)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = _Compiled(self.statement, dialect, key[1])
        if compiled.defaults or compiled.binds:
            params = dict(params)
            for column, default in compiled.defaults:
                params[column] = default.arg(None) if default.is_callable else default.arg  # type: ignore[attr-defined]
            for name, process in compiled.binds:
                params[name] = process(params[name])
        args: Any = params if compiled.positions is None else [params[name] for name in compiled.positions]
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None
        cursor = dbapi_conn.cursor()
        # The engine's listeners see the statement as they would from SQLAlchemy (the SQLite
        # writer gate above all).
        for listener in conn.dispatch.before_cursor_execute:
            listener(conn, cursor, compiled.sql, args, None, False)
        try:
            cursor.execute(compiled.sql, args)
        except dialect.loaded_dbapi.Error as exc:
            cursor.close()
            disconnected = dialect.is_disconnect(exc, dbapi_conn, cursor)
            if disconnected:
                conn.invalidate(exc)
            raise DBAPIError.instance(
                compiled.sql,
                args,
                exc,
                dialect.loaded_dbapi.Error,
                hide_parameters=True,
                connection_invalidated=disconnected,
                dialect=dialect,
            ) from exc
        return cursor, compiled

    def rowcount(self, db: Session, params: dict[str, Any]) -> int:
        """Run a write; the number of rows it matched."""
        cursor, _ = self._run(db, params)
        count: int = cursor.rowcount
        cursor.close()
        return count

    def first(self, db: Session, params: dict[str, Any]) -> list[Any] | None:
        """Run a SELECT; its first row, each value processed by its column's type."""
        cursor, compiled = self._run(db, params)
        row = cursor.fetchone()
        cursor.close()
        if row is None:
            return None
        return [value if process is None else process(value) for value, process in zip(row, compiled.results, strict=True)]


_Model = TypeVar("_Model", bound=Base)


class Detached(Generic[_Model]):
    """Objects of a mapped class built from the values of a Prepared row, outside any session:
    read-only copies (nothing set on them is written)."""

    __slots__ = ("_attrs", "_model", "columns")

    def __init__(self, model: type[_Model]):
        table = model.__table__
        assert isinstance(table, Table)
        self._model = model
        self.columns = list(table.columns)
        mapper = sa_inspect(model)
        self._attrs = [mapper.get_property_by_column(column).key for column in self.columns]

    def __call__(self, values: Sequence[Any]) -> _Model:
        return self._model(**dict(zip(self._attrs, values, strict=True)))


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
