from __future__ import annotations

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.infra.db import Base


class JobRun(Base):
    """One row per scheduled job. Updating a row is the lock that lets one replica run the job:
    a row lock on PostgreSQL, the single writer on SQLite."""

    __tablename__ = "job_runs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_run_at: Mapped[int] = mapped_column(BigInteger, default=0)
    last_run_by: Mapped[str | None] = mapped_column(String(200))
