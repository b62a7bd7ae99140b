from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.models import Resource, ResourceScope


def all_resources(db: Session) -> list[Resource]:
    return list(db.scalars(select(Resource).order_by(Resource.uri)))


def by_uri(db: Session, uri: str) -> Resource | None:
    return db.scalar(select(Resource).where(Resource.uri == uri))


def get(db: Session, resource_id: int) -> Resource | None:
    return db.get(Resource, resource_id)


def all_scope_names(db: Session) -> list[str]:
    return sorted(set(db.scalars(select(ResourceScope.name))))


def add(db: Session, resource: Resource) -> Resource:
    db.add(resource)
    db.flush()
    return resource


def remove(db: Session, resource: Resource) -> None:
    db.execute(delete(Resource).where(Resource.id == resource.id))
