from __future__ import annotations

import unicodedata

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db import now
from app.models import User


def normalize_username(username: str) -> str:
    """Usernames compare case-insensitively and after Unicode normalisation (NFKC casefold),
    so that look-alike spellings cannot be two accounts."""
    return unicodedata.normalize("NFKC", username).casefold().strip()


def by_username(db: Session, username: str) -> User | None:
    return db.scalar(select(User).where(User.username == normalize_username(username)))


def get(db: Session, user_id: str) -> User | None:
    return db.get(User, user_id)


def add(db: Session, user: User) -> User:
    user.username = normalize_username(user.username)
    db.add(user)
    db.flush()
    return user


def all_users(db: Session, search: str | None = None, limit: int = 1000, offset: int = 0) -> list[User]:
    query = select(User).order_by(User.username)
    if search:
        query = query.where(User.username.contains(normalize_username(search), autoescape=True))
    return list(db.scalars(query.limit(limit).offset(offset)))


def count(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(User)) or 0


def count_active_admins(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(User).where(User.is_admin.is_(True), User.disabled_at.is_(None))) or 0


def set_password_hash(db: Session, user_id: str, password_hash: str) -> None:
    db.execute(update(User).where(User.id == user_id).values(password_hash=password_hash, updated_at=now()))


def mark_login(db: Session, user_id: str) -> None:
    db.execute(update(User).where(User.id == user_id).values(last_login_at=now()))


def any_admin(db: Session) -> bool:
    return db.scalar(select(User.id).where(User.is_admin.is_(True)).limit(1)) is not None
