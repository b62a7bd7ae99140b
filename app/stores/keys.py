from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.models.key import ACTIVE, NEXT, RETIRED, SigningKey

# Rotation reads again after taking the lock: populate_existing makes those reads see what
# another replica committed meanwhile instead of this session's cached objects.
_FRESH = {"populate_existing": True}


def all_keys(db: Session) -> list[SigningKey]:
    return list(db.scalars(select(SigningKey).order_by(SigningKey.created_at, SigningKey.kid), execution_options=_FRESH))


def by_state(db: Session, state: str) -> list[SigningKey]:
    query = select(SigningKey).where(SigningKey.state == state).order_by(SigningKey.created_at)
    return list(db.scalars(query, execution_options=_FRESH))


def published(db: Session) -> list[SigningKey]:
    return list(
        db.scalars(select(SigningKey).where(SigningKey.state.in_((NEXT, ACTIVE, RETIRED))).order_by(SigningKey.created_at))
    )


def add(db: Session, key: SigningKey) -> SigningKey:
    db.add(key)
    db.flush()
    return key


def delete_retired_before(db: Session, retired_before: int) -> list[str]:
    doomed = list(db.scalars(select(SigningKey.kid).where(SigningKey.state == RETIRED, SigningKey.retired_at < retired_before)))
    if doomed:
        db.execute(delete(SigningKey).where(SigningKey.kid.in_(doomed)))
    return doomed
