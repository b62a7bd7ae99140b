from __future__ import annotations

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import now
from app.models import Grant

FRESH = {"populate_existing": True}


def get(db: Session, user_id: str, client_id: str, resource_id: int) -> Grant | None:
    return db.scalar(
        select(Grant).where(Grant.user_id == user_id, Grant.client_id == client_id, Grant.resource_id == resource_id),
        execution_options=FRESH,
    )


def by_id(db: Session, grant_id: int) -> Grant | None:
    return db.get(Grant, grant_id)


def merge(db: Session, user_id: str, client_id: str, resource_id: int, scopes: set[str]) -> Grant:
    """Add scopes to the user's grant for this client and resource (incremental consent)."""
    for _ in range(3):
        grant = get(db, user_id, client_id, resource_id)
        if grant is not None:
            merged = " ".join(sorted(set(grant.scope.split()) | scopes))
            if merged != grant.scope:
                db.execute(update(Grant).where(Grant.id == grant.id).values(scope=merged, updated_at=now()))
                grant.scope = merged
            return grant
        try:
            with db.begin_nested():
                grant = Grant(user_id=user_id, client_id=client_id, resource_id=resource_id, scope=" ".join(sorted(scopes)))
                db.add(grant)
            return grant
        except IntegrityError:  # another consent for the same triple just landed: merge into it
            continue
    raise RuntimeError("could not merge the grant")


def touch(db: Session, grant_id: int, at: int, every: int = 300) -> None:
    """Record use, writing only when the recorded time is older than `every` seconds."""
    db.execute(
        update(Grant)
        .where(Grant.id == grant_id, or_(Grant.last_used_at.is_(None), Grant.last_used_at < at - every))
        .values(last_used_at=at),
        execution_options={"synchronize_session": False},
    )


def remove(db: Session, grant_id: int) -> int:
    return db.execute(delete(Grant).where(Grant.id == grant_id)).rowcount
