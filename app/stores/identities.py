"""Identity providers and the upstream identities of users."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import IdentityProvider, User, UserIdentity


def all_providers(db: Session) -> list[IdentityProvider]:
    return list(db.scalars(select(IdentityProvider).order_by(IdentityProvider.name)))


def sign_in_providers(db: Session) -> list[IdentityProvider]:
    """Providers users may sign in through (enabled, with Ostiary's client credentials there)."""
    query = select(IdentityProvider).where(IdentityProvider.enabled.is_(True), IdentityProvider.client_id.is_not(None))
    return list(db.scalars(query.order_by(IdentityProvider.name)))


def get(db: Session, name: str) -> IdentityProvider | None:
    return db.get(IdentityProvider, name)


def by_issuer(db: Session, issuer: str) -> IdentityProvider | None:
    return db.scalar(select(IdentityProvider).where(IdentityProvider.issuer == issuer))


def add(db: Session, provider: IdentityProvider) -> bool:
    """False if the name or the issuer is taken."""
    try:
        with db.begin_nested():
            db.add(provider)
    except IntegrityError:
        return False
    return True


def remove(db: Session, name: str) -> bool:
    return cast(CursorResult[Any], db.execute(delete(IdentityProvider).where(IdentityProvider.name == name))).rowcount == 1


def linked_user(db: Session, issuer: str, subject: str) -> User | None:
    return db.scalar(
        select(User)
        .join(UserIdentity, UserIdentity.user_id == User.id)
        .where(UserIdentity.issuer == issuer, UserIdentity.subject == subject)
    )


def link(db: Session, identity: UserIdentity) -> bool:
    """False if (issuer, subject) is linked already (to anyone)."""
    try:
        with db.begin_nested():
            db.add(identity)
    except IntegrityError:
        return False
    return True


def seen(db: Session, issuer: str, subject: str, at: int) -> None:
    db.execute(
        update(UserIdentity).where(UserIdentity.issuer == issuer, UserIdentity.subject == subject).values(last_seen_at=at),
        execution_options={"synchronize_session": False},
    )


def identities_of(db: Session, user_id: str) -> list[UserIdentity]:
    return list(db.scalars(select(UserIdentity).where(UserIdentity.user_id == user_id)))


def identities_with_providers(db: Session, user_id: str) -> list[tuple[str, str]]:
    """(provider name, subject) for each upstream identity of a user ("?" for a provider since
    removed)."""
    rows = db.execute(
        select(IdentityProvider.name, UserIdentity.subject)
        .select_from(UserIdentity)
        .outerjoin(IdentityProvider, IdentityProvider.issuer == UserIdentity.issuer)
        .where(UserIdentity.user_id == user_id)
    )
    return [(name or "?", subject) for name, subject in rows]
