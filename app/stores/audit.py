from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import AuditEvent


def add(db: Session, event: AuditEvent) -> None:
    db.add(event)


def recent(db: Session, limit: int = 50) -> list[AuditEvent]:
    return list(db.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)))
