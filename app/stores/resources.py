from __future__ import annotations

from typing import Any

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


def save(
    db: Session, resource: Resource, *, uri: str, name: str, token_ttl: int | None, scopes: list[dict[str, Any]]
) -> Resource:
    """Update a resource and its scopes in place. `scopes` are dicts of ResourceScope fields in
    catalogue order; a scope keeps its row when its name stays, others are added or deleted."""
    resource.uri, resource.name, resource.token_ttl = uri, name, token_ttl
    existing = {s.name: s for s in resource.scopes}
    rows = []
    for position, spec in enumerate(scopes):
        row = existing.get(spec["name"]) or ResourceScope(name=spec["name"])
        row.description = spec["description"]
        row.is_default = spec["is_default"]
        row.allowed_groups = spec["allowed_groups"]
        row.implies = spec.get("implies")
        row.position = position
        rows.append(row)
    resource.scopes = rows  # delete-orphan removes the scopes left out
    db.add(resource)
    db.flush()
    return resource
