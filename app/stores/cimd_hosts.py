"""The console's rules for metadata-document client hosts: one row per host pattern, `allow` or
`deny` (docs/decisions.md#cimd-client-host-trust-policy)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import CimdHostRule


def all_rules(db: Session) -> list[CimdHostRule]:
    return list(db.scalars(select(CimdHostRule).order_by(CimdHostRule.rule, CimdHostRule.host)))


def get(db: Session, host: str) -> CimdHostRule | None:
    return db.get(CimdHostRule, host)


def add(db: Session, host: str, rule: str, note: str, at: int) -> bool:
    """False if the host has a rule already (one INSERT: of two concurrent adds one wins)."""
    try:
        with db.begin_nested():
            db.add(CimdHostRule(host=host, rule=rule, note=note, created_at=at))
    except IntegrityError:
        return False
    return True


def remove(db: Session, host: str) -> bool:
    result = db.execute(delete(CimdHostRule).where(CimdHostRule.host == host))
    return cast(CursorResult[Any], result).rowcount == 1
