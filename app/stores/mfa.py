"""TOTP secrets, the replay guard and recovery codes (RFC 6238). Columns on `users` plus the
`recovery_codes` table; every one-time use is a single conditional statement."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import RecoveryCode, User


def set_pending_secret(db: Session, user_id: str, secret_enc: str) -> None:
    """An enrolment in progress: the secret is kept, TOTP is not enabled until confirmed."""
    db.execute(
        update(User)
        .where(User.id == user_id, User.totp_enabled_at.is_(None))
        .values(totp_secret_enc=secret_enc, updated_at=now())
    )


def enable(db: Session, user_id: str, at: int, step: int) -> bool:
    result = db.execute(
        update(User)
        .where(User.id == user_id, User.totp_enabled_at.is_(None), User.totp_secret_enc.is_not(None))
        .values(totp_enabled_at=at, totp_last_step=step, updated_at=at)
    )
    return cast(CursorResult[Any], result).rowcount == 1


def use_step(db: Session, user_id: str, step: int) -> bool:
    """Accept a TOTP time step once: only a step later than the last accepted one wins
    (RFC 6238 §5.2: "MUST NOT accept the second attempt of the OTP")."""
    result = db.execute(
        update(User)
        .where(User.id == user_id, or_(User.totp_last_step.is_(None), User.totp_last_step < step))
        .values(totp_last_step=step),
        execution_options={"synchronize_session": False},
    )
    return cast(CursorResult[Any], result).rowcount == 1


def attempt_state(db: Session, user_id: str) -> tuple[int, int | None, int | None]:
    """(consecutive failures, earliest next attempt, locked at), read from the database (not
    the session's copy of the row): concurrent attempts change them."""
    row = db.execute(select(User.mfa_failures, User.mfa_retry_at, User.locked_at).where(User.id == user_id)).one()
    return int(row[0] or 0), row[1], row[2]


def reserve_attempt(db: Session, user_id: str, failures: int, at: int, retry_at: int) -> bool:
    """Count the attempt as a failure before checking it, if nobody else changed the count since
    it was read: of concurrent attempts one wins, the others are refused, so the cap holds."""
    result = db.execute(
        update(User)
        .where(
            User.id == user_id,
            User.mfa_failures == failures,
            User.locked_at.is_(None),
            or_(User.mfa_retry_at.is_(None), User.mfa_retry_at <= at),
        )
        .values(mfa_failures=failures + 1, mfa_retry_at=retry_at),
        execution_options={"synchronize_session": False},
    )
    return cast(CursorResult[Any], result).rowcount == 1


def clear_failures(db: Session, user_id: str) -> None:
    db.execute(
        update(User).where(User.id == user_id).values(mfa_failures=0, mfa_retry_at=None),
        execution_options={"synchronize_session": False},
    )


def replace_recovery_codes(db: Session, user_id: str, hashes: list[str]) -> None:
    db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    t = now()
    db.add_all([RecoveryCode(user_id=user_id, code_hash=h, created_at=t) for h in hashes])
    db.flush()


def use_recovery_code(db: Session, user_id: str, hashes: list[str]) -> bool:
    """Spend a recovery code: of two concurrent uses exactly one deletes the row."""
    result = db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id, RecoveryCode.code_hash.in_(hashes)))
    return cast(CursorResult[Any], result).rowcount == 1


def recovery_codes_left(db: Session, user_id: str) -> int:
    return db.scalar(select(func.count()).select_from(RecoveryCode).where(RecoveryCode.user_id == user_id)) or 0


def reset(db: Session, user_id: str) -> None:
    db.execute(delete(RecoveryCode).where(RecoveryCode.user_id == user_id))
    db.execute(
        update(User)
        .where(User.id == user_id)
        .values(totp_secret_enc=None, totp_enabled_at=None, totp_last_step=None, updated_at=now())
    )
