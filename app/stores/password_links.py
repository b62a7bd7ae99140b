"""One-time links to set a password (created by an admin). Only the HMAC of the link's token
is stored; using the link deletes its row in one conditional DELETE."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, select
from sqlalchemy.orm import Session

from app.models import PasswordSetupToken


def replace(db: Session, row: PasswordSetupToken) -> None:
    """A new link for a user replaces any earlier one."""
    db.execute(delete(PasswordSetupToken).where(PasswordSetupToken.user_id == row.user_id))
    db.add(row)
    db.flush()


def find(db: Session, hashes: list[str], at: int) -> PasswordSetupToken | None:
    return db.scalar(
        select(PasswordSetupToken).where(PasswordSetupToken.token_hash.in_(hashes), PasswordSetupToken.expires_at > at)
    )


def take(db: Session, row: PasswordSetupToken, at: int) -> bool:
    result = db.execute(
        delete(PasswordSetupToken).where(PasswordSetupToken.token_hash == row.token_hash, PasswordSetupToken.expires_at > at)
    )
    return cast(CursorResult[Any], result).rowcount == 1


def remove_for_user(db: Session, user_id: str) -> None:
    db.execute(delete(PasswordSetupToken).where(PasswordSetupToken.user_id == user_id))


def remove_expired(db: Session, at: int) -> int:
    result = db.execute(delete(PasswordSetupToken).where(PasswordSetupToken.expires_at <= at))
    return cast(CursorResult[Any], result).rowcount
