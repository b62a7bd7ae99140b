from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, delete, select, update
from sqlalchemy.orm import Session

from app.models import BrowserSession, User

# Built once (docs/decisions.md#hot-statements-are-built-once): every /authorize reads the session.
_FIND = (
    select(BrowserSession, User)
    .join(User, User.id == BrowserSession.user_id)
    .where(BrowserSession.id_hash.in_(bindparam("hashes", expanding=True)))
)


def add(db: Session, session: BrowserSession) -> None:
    db.add(session)


def find(db: Session, id_hashes: list[str]) -> tuple[BrowserSession, User] | None:
    """The session with one of these hashes and its user, in one round trip."""
    found = db.execute(_FIND, {"hashes": id_hashes}).first()
    return (found[0], found[1]) if found is not None else None


def touch(db: Session, id_hash: str, at: int) -> None:
    db.execute(update(BrowserSession).where(BrowserSession.id_hash == id_hash).values(last_seen_at=at))


def remove(db: Session, id_hash: str) -> None:
    db.execute(delete(BrowserSession).where(BrowserSession.id_hash == id_hash))


def remove_for_user(db: Session, user_id: str) -> int:
    return cast(CursorResult[Any], db.execute(delete(BrowserSession).where(BrowserSession.user_id == user_id))).rowcount


def promote(db: Session, id_hash: str, amr: list[str], at: int) -> None:
    db.execute(update(BrowserSession).where(BrowserSession.id_hash == id_hash).values(status="active", amr=amr, auth_time=at))


def remove_others(db: Session, user_id: str, keep_id_hash: str) -> int:
    """End every session of a user but this one (after a password change)."""
    result = db.execute(delete(BrowserSession).where(BrowserSession.user_id == user_id, BrowserSession.id_hash != keep_id_hash))
    return cast(CursorResult[Any], result).rowcount


def for_user(db: Session, user_id: str, *, seen_after: int, now_: int) -> list[BrowserSession]:
    """A user's signed-in browsers still alive (seen after `seen_after`, the idle limit, and not
    past their absolute expiry), most recently seen first."""
    query = select(BrowserSession).where(
        BrowserSession.user_id == user_id,
        BrowserSession.status == "active",
        BrowserSession.last_seen_at > seen_after,
        BrowserSession.expires_at > now_,
    )
    return list(db.scalars(query.order_by(BrowserSession.last_seen_at.desc()).limit(100)))
