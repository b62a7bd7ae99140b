from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, select, update
from sqlalchemy.orm import Session

from app.models import AuthorizationCode, User

_CODES = cast(Table, AuthorizationCode.__table__)  # declarative types __table__ as any FromClause

# Built once: the token endpoint's statements skip construction and cache-key work per call
# (docs/decisions.md#hot-statements-are-built-once).
_REDEEM = (
    update(_CODES)
    .where(_CODES.c.code_hash == bindparam("b_code_hash"), _CODES.c.consumed_at.is_(None), _CODES.c.expires_at > bindparam("at"))
    .values(consumed_at=bindparam("at"), access_jti=bindparam("b_access_jti"), access_expires_at=bindparam("b_access_expires_at"))
)
_FIND_WITH_USER = (
    select(AuthorizationCode, User)
    .join(User, User.id == AuthorizationCode.user_id)
    .where(AuthorizationCode.code_hash.in_(bindparam("hashes", expanding=True)))
)


def add(db: Session, code: AuthorizationCode) -> None:
    db.add(code)


def redeem(db: Session, code_hash: str, *, at: int, access_jti: str, access_expires_at: int) -> bool:
    """Mark the code used (and the access token it issues), in one conditional UPDATE: of two
    concurrent redemptions exactly one wins (RFC 6749 §4.1.2: "MUST NOT be used more than once")."""
    params = {"b_code_hash": code_hash, "at": at, "b_access_jti": access_jti, "b_access_expires_at": access_expires_at}
    result = db.execute(_REDEEM, params)
    return cast(CursorResult[Any], result).rowcount == 1


def find_with_user(db: Session, hashes: list[str]) -> tuple[AuthorizationCode, User] | None:
    """The code and its user in one round trip (the code exchange's read)."""
    found = db.execute(_FIND_WITH_USER, {"hashes": hashes}, execution_options={"populate_existing": True}).first()
    return (found[0], found[1]) if found is not None else None


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
