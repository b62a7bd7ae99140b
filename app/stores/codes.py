from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.models import AuthorizationCode


def add(db: Session, code: AuthorizationCode) -> None:
    db.add(code)


def consume(
    db: Session, hashes: list[str], client_id: str, at: int, access_jti: str, access_expires_at: int
) -> AuthorizationCode | None:
    """Mark the code used and return it, in one conditional UPDATE: of two concurrent
    redemptions exactly one gets the row (RFC 6749 §4.1.2: "MUST NOT be used more than once")."""
    result = db.execute(
        update(AuthorizationCode)
        .where(
            AuthorizationCode.code_hash.in_(hashes),
            AuthorizationCode.client_id == client_id,
            AuthorizationCode.consumed_at.is_(None),
            AuthorizationCode.expires_at > at,
        )
        .values(consumed_at=at, access_jti=access_jti, access_expires_at=access_expires_at)
        .returning(AuthorizationCode),
        execution_options={"synchronize_session": False},
    )
    return result.scalars().first()


def find(db: Session, hashes: list[str]) -> AuthorizationCode | None:
    return db.scalar(
        select(AuthorizationCode).where(AuthorizationCode.code_hash.in_(hashes)),
        execution_options={"populate_existing": True},
    )


def expire_unredeemed(db: Session, *, user_id: str, client_id: str, resource_id: int, at: int) -> None:
    """Codes not yet redeemed under a revoked grant (user x client x resource) can no longer be
    redeemed."""
    db.execute(
        update(AuthorizationCode)
        .where(
            AuthorizationCode.user_id == user_id,
            AuthorizationCode.client_id == client_id,
            AuthorizationCode.resource_id == resource_id,
            AuthorizationCode.consumed_at.is_(None),
            AuthorizationCode.expires_at > at,
        )
        .values(expires_at=at),
        execution_options={"synchronize_session": False},
    )
