from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.orm import Session

from app.models import AuthorizationRequest


def add(db: Session, row: AuthorizationRequest) -> None:
    db.add(row)


def find(db: Session, hashes: list[str], at: int) -> AuthorizationRequest | None:
    return db.scalar(
        select(AuthorizationRequest).where(AuthorizationRequest.id_hash.in_(hashes), AuthorizationRequest.expires_at > at)
    )


def bind_user(db: Session, id_hash: str, user_id: str) -> None:
    db.execute(update(AuthorizationRequest).where(AuthorizationRequest.id_hash == id_hash).values(user_id=user_id))


def take(db: Session, hashes: list[str]) -> bool:
    """Finish the request once: of two submissions of the same consent form, one wins."""
    result = db.execute(delete(AuthorizationRequest).where(AuthorizationRequest.id_hash.in_(hashes)))
    return cast(CursorResult[Any], result).rowcount == 1
