"""Cross-replica coordination through one row per job in `job_runs`."""

from __future__ import annotations

import os
import socket
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import JobRun

WHO = f"{socket.gethostname()}:{os.getpid()}"
_PG_MIGRATION_LOCK = 0x05714279  # the pg_advisory_xact_lock key of migrations


def _ensure_row(db: Session, name: str) -> None:
    dialect = postgresql if db.get_bind().dialect.name == "postgresql" else sqlite
    db.execute(dialect.insert(JobRun).values(name=name, last_run_at=0).on_conflict_do_nothing())


def lock(db: Session, name: str) -> None:
    """Hold the job's lock until the surrounding transaction ends (other replicas wait)."""
    _ensure_row(db, name)
    db.execute(update(JobRun).where(JobRun.name == name).values(last_run_by=WHO))


def claim(db: Session, name: str, interval: int) -> bool:
    """Take this run of a periodic job if no replica ran it in the last `interval` seconds."""
    _ensure_row(db, name)
    t = now()
    result = db.execute(
        update(JobRun).where(JobRun.name == name, JobRun.last_run_at <= t - interval).values(last_run_at=t, last_run_by=WHO)
    )
    return cast(CursorResult[Any], result).rowcount == 1


def lock_migrations(conn: Connection) -> None:
    """PostgreSQL: hold the migration lock until the connection's transaction ends. (The
    job_runs table may not exist yet, so this is an advisory lock, not a row.)"""
    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
