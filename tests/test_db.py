"""The SQLite engine: WAL, a busy timeout, and writers queued in-process (app/db.py WriterGate)
instead of in SQLite's sleeping busy handler."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import text

from app.infra.db import WriterGate, make_engine


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
