from __future__ import annotations

import unicodedata
from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Select, bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import User

_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])
# Built once: the token endpoint's statements skip construction and cache-key work per call
# (docs/decisions.md#hot-statements-are-built-once).
_BY_ID = select(User).where(User.id == bindparam("id"))


def normalize_username(username: str) -> str:
    """Usernames compare case-insensitively and after Unicode normalisation (NFKC casefold),
    so that look-alike spellings cannot be two accounts."""
    return unicodedata.normalize("NFKC", username).casefold().strip()


def by_username(db: Session, username: str) -> User | None:
    return db.scalar(select(User).where(User.username == normalize_username(username)))


def get(db: Session, user_id: str) -> User | None:
    return db.scalar(_BY_ID, {"id": user_id})


def add(db: Session, user: User) -> User:
    user.username = normalize_username(user.username)
    db.add(user)
    db.flush()
    return user


def _search(query: _Query, search: str | None) -> _Query:
    if search:
        query = query.where(User.username.contains(normalize_username(search), autoescape=True))
    return query


def all_users(db: Session, search: str | None = None, limit: int = 1000, offset: int = 0) -> list[User]:
    query = _search(select(User).order_by(User.username), search)
    return list(db.scalars(query.limit(limit).offset(offset)))


def count(db: Session, search: str | None = None) -> int:
    return db.scalar(_search(select(func.count()).select_from(User), search)) or 0


def counts(db: Session) -> dict[str, int]:
    """For the admin overview: all users, admins, disabled."""
    row = db.execute(
        select(
            func.count(),
            func.count().filter(User.is_admin.is_(True)),
            func.count().filter(User.disabled_at.is_not(None)),
            func.count().filter(User.locked_at.is_not(None)),
        ).select_from(User)
    ).one()
    return {"users": row[0], "admins": row[1], "disabled": row[2], "locked": row[3]}


def remove(db: Session, user_id: str) -> int:
    """Delete a user; their sessions, consents, tokens, codes, links and identities go with the
    row (ON DELETE CASCADE)."""
    return cast(CursorResult[Any], db.execute(delete(User).where(User.id == user_id))).rowcount


def names(db: Session, user_ids: list[str]) -> dict[str, str]:
    """{user_id: username} of the users that exist among these ids."""
    if not user_ids:
        return {}
    return {uid: name for uid, name in db.execute(select(User.id, User.username).where(User.id.in_(user_ids)))}


def set_disabled(db: Session, user_id: str, disabled_at: int | None) -> None:
    db.execute(update(User).where(User.id == user_id).values(disabled_at=disabled_at, updated_at=now()))


def set_admin(db: Session, user_id: str, is_admin: bool) -> None:
    db.execute(update(User).where(User.id == user_id).values(is_admin=is_admin, updated_at=now()))


def set_groups(db: Session, user_id: str, groups: list[str]) -> None:
    db.execute(update(User).where(User.id == user_id).values(groups=groups, updated_at=now()))


def lock(db: Session, user_id: str, at: int) -> bool:
    result = db.execute(
        update(User).where(User.id == user_id, User.locked_at.is_(None)).values(locked_at=at),
        execution_options={"synchronize_session": False},
    )
    return cast(CursorResult[Any], result).rowcount == 1


def unlock(db: Session, user_id: str) -> bool:
    """Lift the lock and forget the failures; False if the account was not locked."""
    result = db.execute(
        update(User).where(User.id == user_id, User.locked_at.is_not(None)).values(locked_at=None, updated_at=now()),
        execution_options={"synchronize_session": False},
    )
    db.execute(
        update(User).where(User.id == user_id).values(mfa_failures=0, mfa_retry_at=None),
        execution_options={"synchronize_session": False},
    )
    return cast(CursorResult[Any], result).rowcount == 1


def count_active_admins(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(User).where(User.is_admin.is_(True), User.disabled_at.is_(None))) or 0


def set_password_hash(db: Session, user_id: str, password_hash: str) -> None:
    db.execute(update(User).where(User.id == user_id).values(password_hash=password_hash, updated_at=now()))


def mark_login(db: Session, user_id: str) -> None:
    db.execute(update(User).where(User.id == user_id).values(last_login_at=now()))


def any_admin(db: Session) -> bool:
    return db.scalar(select(User.id).where(User.is_admin.is_(True)).limit(1)) is not None
