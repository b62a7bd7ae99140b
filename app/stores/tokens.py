from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.models import AuthorizationCode, RefreshToken, RevokedAccessToken

FRESH = {"populate_existing": True}


_REFRESH = RefreshToken.__table__


def add_refresh(db: Session, values: dict) -> None:
    """INSERT a new refresh token (a Core statement on the table: this request never reads the
    row back, so the ORM's unit of work would only cost time on the hot path)."""
    db.execute(_REFRESH.insert(), [values])


def find_refresh(db: Session, hashes: list[str]) -> RefreshToken | None:
    return db.scalar(select(RefreshToken).where(RefreshToken.token_hash.in_(hashes)), execution_options=FRESH)


def get_refresh(db: Session, token_id: int) -> RefreshToken | None:
    return db.scalar(select(RefreshToken).where(RefreshToken.id == token_id), execution_options=FRESH)


def claim_refresh(db: Session, token_id: int, at: int, successor_enc: str) -> bool:
    """Mark a refresh token used, in one conditional UPDATE: of concurrent refreshes with the same
    token exactly one wins (on PostgreSQL the others wait for its row lock, then match nothing)."""
    c = _REFRESH.c
    result = db.execute(
        update(_REFRESH)
        .where(c.id == token_id, c.used_at.is_(None), c.revoked_at.is_(None))
        .values(used_at=at, successor_enc=successor_enc)
    )
    return result.rowcount == 1


def successor_of(db: Session, token_id: int) -> RefreshToken | None:
    return db.scalar(select(RefreshToken).where(RefreshToken.parent_id == token_id), execution_options=FRESH)


def revoke_where(db: Session, condition, at: int, reason: str) -> list[tuple[str, int]]:
    """Revoke matching refresh tokens; return the (jti, exp) of access tokens issued with them
    that are still alive, so the caller can revoke those too."""
    db.execute(
        update(RefreshToken)
        .where(condition, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=at, revoked_reason=reason, successor_enc=None),
        execution_options={"synchronize_session": False},
    )
    rows = db.execute(
        select(RefreshToken.access_jti, RefreshToken.access_expires_at).where(
            condition, RefreshToken.access_jti.is_not(None), RefreshToken.access_expires_at > at
        )
    )
    return [(jti, exp) for jti, exp in rows]


def live_code_access_tokens(db: Session, condition, at: int) -> list[tuple[str, int]]:
    rows = db.execute(
        select(AuthorizationCode.access_jti, AuthorizationCode.access_expires_at).where(
            condition, AuthorizationCode.access_jti.is_not(None), AuthorizationCode.access_expires_at > at
        )
    )
    return [(jti, exp) for jti, exp in rows]


def revoke_access_tokens(db: Session, items: list[tuple[str, int]], at: int, reason: str) -> None:
    if not items:
        return
    dialect = postgresql if db.get_bind().dialect.name == "postgresql" else sqlite
    db.execute(
        dialect.insert(RevokedAccessToken)
        .values([{"jti": jti, "expires_at": exp, "revoked_at": at, "reason": reason} for jti, exp in items])
        .on_conflict_do_nothing()
    )


def is_access_token_revoked(db: Session, jti: str) -> bool:
    return db.scalar(select(RevokedAccessToken.jti).where(RevokedAccessToken.jti == jti)) is not None
