"""The engine: on SQLite WAL, a busy timeout, and writers queued in-process (WriterGate in
app/infra/db.py) instead of in SQLite's sleeping busy handler; on both databases, the
statements run on the driver (Prepared)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest
from sqlalchemy import Table, event, func, select, text
from sqlalchemy.exc import IntegrityError

from app.infra.db import Prepared, WriterGate, make_engine, now
from app.models import RevokedAccessToken, User
from app.stores import tokens as tokens_store


def test_the_gate_admits_one_writer_at_a_time_and_is_reentrant():
    gate = WriterGate(timeout=5)
    assert gate.enter() and gate.enter()  # the same thread twice (a second session)
    admitted = threading.Event()

    def other():
        assert gate.enter()
        admitted.set()
        gate.leave()

    thread = threading.Thread(target=other)
    thread.start()
    time.sleep(0.1)
    assert not admitted.is_set()
    gate.leave()
    time.sleep(0.05)
    assert not admitted.is_set()  # still held once
    gate.leave()
    assert admitted.wait(2)
    thread.join(2)


def test_the_gate_never_waits_forever():
    gate = WriterGate(timeout=0.2)
    assert gate.enter()
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(gate.enter()))
    started = time.monotonic()
    thread.start()
    thread.join(2)
    assert result == [False] and 0.15 < time.monotonic() - started < 1.5


def test_concurrent_writers_on_sqlite_all_commit(tmp_path):
    """32 threads x 20 write transactions (read, then write, then commit) on one SQLite file:
    every one commits, none meets `database is locked`, and reads still run alongside."""
    engine = make_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER)"))
        conn.execute(text("CREATE TABLE c (k INTEGER PRIMARY KEY, v INTEGER)"))
        conn.execute(text("INSERT INTO c VALUES (1, 0)"))

    def work(i: int) -> None:
        for j in range(20):
            with engine.connect() as conn:
                conn.execute(text("SELECT v FROM c WHERE k = 1")).scalar()
                conn.execute(text("INSERT INTO t (n) VALUES (:n)"), {"n": i * 100 + j})
                conn.execute(text("UPDATE c SET v = v + 1 WHERE k = 1"))
                conn.commit()

    try:
        with ThreadPoolExecutor(32) as pool:
            list(pool.map(work, range(32)))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 640
            assert conn.execute(text("SELECT v FROM c")).scalar() == 640
    finally:
        engine.dispose()


# -- statements on the driver (docs/decisions.md#the-hottest-statements-run-on-the-driver) ------


def test_a_driver_statement_fails_as_sqlalchemy_would_with_its_parameters_hidden(db):
    """A duplicate key raises SQLAlchemy's IntegrityError (callers and the 503 mapping rely on
    SQLAlchemy's exception types), the message does not list the bound values, and the session
    rolls back and goes on. (The database's own message may quote the duplicate key: only hashes
    and ids are ever stored, never a bearer secret, docs/decisions.md#bearer-secrets-are-stored-as-keyed-hmacs.)"""
    insert = Prepared(cast(Table, RevokedAccessToken.__table__).insert())
    expires = now() + 987_654
    insert.rowcount(db, {"jti": "jti-dup", "expires_at": expires})
    with pytest.raises(IntegrityError) as raised:
        insert.rowcount(db, {"jti": "jti-dup", "expires_at": expires})
    assert str(expires) not in str(raised.value) and "parameters hidden" in str(raised.value)
    db.rollback()
    assert db.scalar(select(func.count()).select_from(RevokedAccessToken)) == 0


def test_a_driver_statement_keeps_types_defaults_and_listeners(db, runtime):
    """JSON and boolean columns read back as Python values, an INSERT gets its columns' Python
    defaults (revoked_at=now), and the engine's listeners see the statement (the SQLite writer
    gate and the query-plan test depend on it)."""
    seen: list[str] = []
    event.listen(runtime.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    user = User(username="driver-types", is_admin=True, groups=["ops", "dev"])
    db.add(user)
    db.commit()
    found = tokens_store.access_token_user(db, "jti-1", user.id)
    assert found is not None
    copy, revoked = found
    assert (copy.groups, copy.is_admin, revoked) == (["ops", "dev"], True, False)
    assert copy not in db  # a read-only copy, outside the session
    Prepared(cast(Table, RevokedAccessToken.__table__).insert()).rowcount(db, {"jti": "jti-1", "expires_at": now() + 60})
    db.commit()
    assert tokens_store.access_token_user(db, "jti-1", user.id)[1] is True
    assert now() - 5 <= db.scalar(select(RevokedAccessToken.revoked_at)) <= now()
    assert any(s.lstrip().upper().startswith("INSERT INTO REVOKED_ACCESS_TOKENS") for s in seen)
    assert tokens_store.access_token_user(db, "jti-1", "no-such-user") is None
