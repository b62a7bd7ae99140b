from __future__ import annotations

from functools import cache
from typing import Any, cast

from sqlalchemy import CursorResult, Table, bindparam, delete, select, update
from sqlalchemy.orm import Session

from app.infra.db import Detached, Prepared
from app.models import BrowserSession, User

# Built once (docs/decisions.md#hot-statements-are-built-once): every /authorize reads the session.
_FIND = (
    select(BrowserSession, User)
    .join(User, User.id == BrowserSession.user_id)
    .where(BrowserSession.id_hash.in_(bindparam("hashes", expanding=True)))
)


_SESSIONS = cast(Table, BrowserSession.__table__)  # declarative types __table__ as any FromClause
_USERS = cast(Table, User.__table__)
_SESSION = Detached(BrowserSession)
_USER = Detached(User)


@cache
def _find_read_only(hashes: int) -> Prepared:
    """The authorization endpoint's read of the browser session and its user, run on the driver
    (docs/decisions.md#the-hottest-statements-run-on-the-driver): one statement per keyring size."""
    return Prepared(
        select(*_SESSION.columns, *_USER.columns)
        .join_from(_SESSIONS, _USERS, _USERS.c.id == _SESSIONS.c.user_id)
        .where(_SESSIONS.c.id_hash.in_([bindparam(f"h{i}") for i in range(hashes)]))
    )


def add(db: Session, session: BrowserSession) -> None:
    db.add(session)


def find(db: Session, id_hashes: list[str]) -> tuple[BrowserSession, User] | None:
    """The session with one of these hashes and its user, in one round trip."""
    found = db.execute(_FIND, {"hashes": id_hashes}).first()
    return (found[0], found[1]) if found is not None else None


def find_read_only(db: Session, id_hashes: list[str]) -> tuple[BrowserSession, User] | None:
    """As `find`, as read-only copies outside the session (pages that change the user or the
    session use `find`)."""
    row = _find_read_only(len(id_hashes)).first(db, {f"h{i}": h for i, h in enumerate(id_hashes)})
    if row is None:
        return None
    split = len(_SESSION.columns)
    return _SESSION(row[:split]), _USER(row[split:])


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
