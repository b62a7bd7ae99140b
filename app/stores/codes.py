from __future__ import annotations

from functools import cache
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from app.infra.db import Detached, Prepared
from app.models import AuthorizationCode, User

_CODES = cast(Table, AuthorizationCode.__table__)  # declarative types __table__ as any FromClause

_USERS = cast(Table, User.__table__)
_CODE = Detached(AuthorizationCode)
_USER = Detached(User)

# Built once and run on the driver: the code exchange's statements
# (docs/decisions.md#hot-statements-are-built-once, docs/decisions.md#the-hottest-statements-run-on-the-driver).
_REDEEM = Prepared(
    update(_CODES)
    .where(_CODES.c.code_hash == bindparam("b_code_hash"), _CODES.c.consumed_at.is_(None), _CODES.c.expires_at > bindparam("at"))
    .values(consumed_at=bindparam("at"), access_jti=bindparam("b_access_jti"), access_expires_at=bindparam("b_access_expires_at"))
)


@cache
def _find_with_user(hashes: int) -> Prepared:
    """The code with one of `hashes` hashes (one per key of the keyring) and its user."""
    return Prepared(
        select(*_CODE.columns, *_USER.columns)
        .join_from(_CODES, _USERS, _USERS.c.id == _CODES.c.user_id)
        .where(_CODES.c.code_hash.in_([bindparam(f"h{i}") for i in range(hashes)]))
    )


_INSERT = Prepared(_CODES.insert())


def add(db: Session, values: dict[str, Any]) -> None:
    """INSERT a new code (on the driver: the request never reads it back)."""
    _INSERT.rowcount(db, values)


def redeem(db: Session, code_hash: str, *, at: int, access_jti: str, access_expires_at: int) -> bool:
    """Mark the code used (and the access token it issues), in one conditional UPDATE: of two
    concurrent redemptions exactly one wins (RFC 6749 §4.1.2: "MUST NOT be used more than once")."""
    params = {"b_code_hash": code_hash, "at": at, "b_access_jti": access_jti, "b_access_expires_at": access_expires_at}
    return _REDEEM.rowcount(db, params) == 1


def find_with_user(db: Session, hashes: list[str]) -> tuple[AuthorizationCode, User] | None:
    """The code and its user in one round trip (the code exchange's read), as read-only copies
    outside the session."""
    row = _find_with_user(len(hashes)).first(db, {f"h{i}": h for i, h in enumerate(hashes)})
    if row is None:
        return None
    split = len(_CODE.columns)
    return _CODE(row[:split]), _USER(row[split:])


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
