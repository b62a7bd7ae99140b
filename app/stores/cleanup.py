"""Deleting expired rows in bounded batches (the cleanup job, app/cleanup.py).

Each call deletes at most `limit` rows by primary key, so one batch holds its locks briefly and
a large backlog drains over several batches instead of one long transaction.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, delete, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.infra.db import Base
from app.models import (
    AuditEvent,
    AuthorizationCode,
    AuthorizationRequest,
    BrowserSession,
    InitialAccessToken,
    PasswordSetupToken,
    RefreshToken,
    RevokedAccessToken,
    UsedAssertion,
)


def _delete_batch(
    db: Session, model: type[Base], key: InstrumentedAttribute[Any], condition: ColumnElement[bool], limit: int
) -> int:
    ids = select(key).where(condition).limit(limit).scalar_subquery()
    result = db.execute(delete(model).where(key.in_(ids)), execution_options={"synchronize_session": False})
    return cast(CursorResult[Any], result).rowcount or 0


def expired_requests(db: Session, t: int, limit: int) -> int:
    return _delete_batch(db, AuthorizationRequest, AuthorizationRequest.id_hash, AuthorizationRequest.expires_at < t, limit)


def expired_codes(db: Session, before: int, limit: int) -> int:
    return _delete_batch(db, AuthorizationCode, AuthorizationCode.code_hash, AuthorizationCode.expires_at < before, limit)


def expired_sessions(db: Session, t: int, idle_since: int, limit: int) -> int:
    condition = or_(BrowserSession.expires_at < t, BrowserSession.last_seen_at < idle_since)
    return _delete_batch(db, BrowserSession, BrowserSession.id_hash, condition, limit)


def expired_refresh_tokens(db: Session, t: int, revoked_before: int, limit: int) -> int:
    """Expired tokens, and revoked ones after a while (a used but live token is kept: a later
    use of it is reuse, which must still be detected)."""
    condition = or_(RefreshToken.expires_at < t, RefreshToken.revoked_at < revoked_before)
    return _delete_batch(db, RefreshToken, RefreshToken.id, condition, limit)


def sealed_successors(db: Session, used_before: int, limit: int) -> int:
    """Forget the sealed successor of every token rotated before `used_before`: the grace window
    is over, so nothing may hand it out again."""
    ids = (
        select(RefreshToken.id)
        .where(RefreshToken.used_at < used_before, RefreshToken.successor_enc.is_not(None))
        .limit(limit)
        .scalar_subquery()
    )
    result = db.execute(
        update(RefreshToken).where(RefreshToken.id.in_(ids)).values(successor_enc=None),
        execution_options={"synchronize_session": False},
    )
    return cast(CursorResult[Any], result).rowcount or 0


def expired_revoked_access_tokens(db: Session, t: int, limit: int) -> int:
    return _delete_batch(db, RevokedAccessToken, RevokedAccessToken.jti, RevokedAccessToken.expires_at < t, limit)


def expired_assertions(db: Session, t: int, limit: int) -> int:
    return _delete_batch(db, UsedAssertion, UsedAssertion.jti_hash, UsedAssertion.expires_at < t, limit)


def spent_initial_tokens(db: Session, t: int, limit: int) -> int:
    condition = or_(InitialAccessToken.expires_at < t, InitialAccessToken.uses_left <= 0)
    return _delete_batch(db, InitialAccessToken, InitialAccessToken.token_hash, condition, limit)


def expired_password_links(db: Session, t: int, limit: int) -> int:
    return _delete_batch(db, PasswordSetupToken, PasswordSetupToken.token_hash, PasswordSetupToken.expires_at < t, limit)


def old_audit_events(db: Session, before: int, limit: int) -> int:
    return _delete_batch(db, AuditEvent, AuditEvent.id, AuditEvent.at < before, limit)
