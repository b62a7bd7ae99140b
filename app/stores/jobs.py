"""Cross-replica coordination through one row per job in `job_runs`."""

from __future__ import annotations

import os
import socket

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import JobRun

WHO = f"{socket.gethostname()}:{os.getpid()}"


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
    return result.rowcount == 1
