from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sqlalchemy import ColumnElement, Select, Table, func, literal_column, or_, select
from sqlalchemy.orm import Session

from app.infra.db import Prepared
from app.models import AuditEvent

DAY = 86400


_TABLE = cast(Table, AuditEvent.__table__)  # declarative types __table__ as any FromClause
_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])


# Every token request writes one (docs/decisions.md#the-hottest-statements-run-on-the-driver).
_INSERT = Prepared(_TABLE.insert())


def add(db: Session, **values: Any) -> None:
    # An audit row is written once and never read back in the same request: no ORM unit of work.
    _INSERT.rowcount(db, values)


def recent(db: Session, limit: int = 50) -> list[AuditEvent]:
    return list(db.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)))


@dataclass(frozen=True)
class Filter:
    event: str | None = None
    events: tuple[str, ...] | None = None  # any of these (the security events)
    user_id: str | None = None  # the subject or the acting admin
    username: str | None = None
    client_id: str | None = None
    since: int | None = None
    until: int | None = None
    grant_type: str | None = None  # token.issued by grant: client_credentials, jwt-bearer ...

    def apply(self, query: _Query) -> _Query:
        if self.event:
            query = query.where(AuditEvent.event == self.event)
        if self.events:
            query = query.where(AuditEvent.event.in_(self.events))
        if self.grant_type:
            query = query.where(AuditEvent.details["grant_type"].as_string() == self.grant_type)
        if self.user_id or self.username:
            who: list[ColumnElement[bool]] = []
            if self.user_id:
                who += [AuditEvent.user_id == self.user_id, AuditEvent.actor_id == self.user_id]
            if self.username:
                who.append(AuditEvent.username == self.username)
            query = query.where(or_(*who))
        if self.client_id:
            query = query.where(AuditEvent.client_id == self.client_id)
        if self.since is not None:
            query = query.where(AuditEvent.at >= self.since)
        if self.until is not None:
            query = query.where(AuditEvent.at < self.until)
        return query


def search(db: Session, where: Filter, limit: int = 50, offset: int = 0) -> list[AuditEvent]:
    query = where.apply(select(AuditEvent)).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
    return list(db.scalars(query.limit(limit).offset(offset)))


def count(db: Session, where: Filter) -> int:
    return db.scalar(where.apply(select(func.count()).select_from(AuditEvent))) or 0


def event_names(db: Session) -> list[str]:
    return list(db.scalars(select(AuditEvent.event).distinct().order_by(AuditEvent.event)))


def count_since(db: Session, events: tuple[str, ...], since: int, *, user_id: str | None = None) -> int:
    query = select(func.count()).select_from(AuditEvent).where(AuditEvent.event.in_(events), AuditEvent.at >= since)
    if user_id is not None:
        query = query.where(AuditEvent.user_id == user_id)
    return db.scalar(query) or 0


def daily_counts(db: Session, events: tuple[str, ...], since: int) -> dict[int, int]:
    """{day number (epoch seconds // 86400): count} of these events since `since`."""
    day = (AuditEvent.at // literal_column(str(DAY))).label("day")  # integer division on both databases
    query = select(day, func.count()).where(AuditEvent.event.in_(events), AuditEvent.at >= since).group_by(day)
    return {int(d): n for d, n in db.execute(query)}
