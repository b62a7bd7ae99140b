from __future__ import annotations

from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Select, Table, bindparam, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.infra.db import Detached, Prepared, now
from app.models import Client, Consent, Resource, User

FRESH = {"populate_existing": True}
_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])


def get(db: Session, user_id: str, client_id: str, resource_id: int) -> Consent | None:
    return db.scalar(
        select(Consent).where(Consent.user_id == user_id, Consent.client_id == client_id, Consent.resource_id == resource_id),
        execution_options=FRESH,
    )


_CONSENT = Detached(Consent)
# The authorization endpoint's read (docs/decisions.md#the-hottest-statements-run-on-the-driver).
_FIND = Prepared(
    select(*_CONSENT.columns).where(
        Consent.user_id == bindparam("user_id"),
        Consent.client_id == bindparam("client_id"),
        Consent.resource_id == bindparam("resource_id"),
    )
)


def get_detached(db: Session, user_id: str, client_id: str, resource_id: int) -> Consent | None:
    """The consent as a read-only copy outside the session."""
    row = _FIND.first(db, {"user_id": user_id, "client_id": client_id, "resource_id": resource_id})
    return _CONSENT(row) if row is not None else None


def by_id(db: Session, grant_id: int) -> Consent | None:
    return db.get(Consent, grant_id)


def merge(
    db: Session,
    user_id: str,
    client_id: str,
    resource_id: int,
    scopes: set[str],
    *,
    client_name: str,
    redirect_hosts: list[str],
    replace: bool = False,
) -> Consent:
    """Add scopes to the user's grant for this client and resource (incremental consent), or
    with `replace` set them (the client changed since the earlier consent), and record what the
    user saw: the client's name and redirect hosts.

    Compare-and-set on the scope string: two consents landing together (two tabs) both count."""
    seen = {"client_name": client_name, "redirect_hosts": redirect_hosts}
    for _ in range(5):
        grant = get(db, user_id, client_id, resource_id)
        if grant is not None:
            merged = " ".join(sorted(scopes if replace else set(grant.scope.split()) | scopes))
            if merged == grant.scope and grant.client_name == client_name and grant.redirect_hosts == redirect_hosts:
                return grant
            result = db.execute(
                update(Consent)
                .where(Consent.id == grant.id, Consent.scope == grant.scope)
                .values(scope=merged, updated_at=now(), **seen),
                execution_options={"synchronize_session": False},
            )
            if cast(CursorResult[Any], result).rowcount == 1:
                grant.scope, grant.client_name, grant.redirect_hosts = merged, client_name, redirect_hosts
                return grant
            continue  # another consent changed the scopes meanwhile: merge into what it wrote
        try:
            with db.begin_nested():
                grant = Consent(
                    user_id=user_id, client_id=client_id, resource_id=resource_id, scope=" ".join(sorted(scopes)), **seen
                )
                db.add(grant)
            return grant
        except IntegrityError:  # another consent for the same triple just landed: merge into it
            continue
    raise RuntimeError("could not merge the grant")


_CONSENTS = cast(Table, Consent.__table__)  # declarative types __table__ as any FromClause
# Built once (docs/decisions.md#hot-statements-are-built-once): token requests touch consents.
_TOUCH = (
    update(_CONSENTS)
    .where(
        _CONSENTS.c.id == bindparam("grant_id"),
        or_(_CONSENTS.c.last_used_at.is_(None), _CONSENTS.c.last_used_at < bindparam("stale_before")),
    )
    .values(last_used_at=bindparam("at"))
)


def touch(db: Session, grant_id: int, at: int, every: int = 300) -> None:
    """Record use, writing only when the recorded time is older than `every` seconds (a Core
    statement: it runs on token requests)."""
    db.execute(_TOUCH, {"grant_id": grant_id, "stale_before": at - every, "at": at})


def remove(db: Session, grant_id: int) -> int:
    return cast(CursorResult[Any], db.execute(delete(Consent).where(Consent.id == grant_id))).rowcount


# -- listing (admin console, account page) ----------------------------------------------------


def _filtered(
    query: _Query, *, user_id: str | None, client_id: str | None, resource_id: int | None, client_search: str | None
) -> _Query:

    if user_id is not None:
        query = query.where(Consent.user_id == user_id)
    if client_id is not None:
        query = query.where(Consent.client_id == client_id)
    if resource_id is not None:
        query = query.where(Consent.resource_id == resource_id)
    if client_search:
        query = query.where(
            or_(Consent.client_id == client_search, Client.name.ilike("%" + _escape(client_search) + "%", escape="\\"))
        )
    return query


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def search(
    db: Session,
    *,
    user_id: str | None = None,
    client_id: str | None = None,
    resource_id: int | None = None,
    client_search: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[tuple[Consent, User, Client, Resource]]:
    """(grant, user, client, resource) rows, most recently changed first."""

    query = (
        select(Consent, User, Client, Resource)
        .join(User, User.id == Consent.user_id)
        .join(Client, Client.id == Consent.client_id)
        .join(Resource, Resource.id == Consent.resource_id)
    )
    query = _filtered(query, user_id=user_id, client_id=client_id, resource_id=resource_id, client_search=client_search)
    query = query.order_by(Consent.updated_at.desc(), Consent.id.desc()).limit(limit).offset(offset)
    return [(grant, user, client, resource) for grant, user, client, resource in db.execute(query)]


def count(
    db: Session,
    *,
    user_id: str | None = None,
    client_id: str | None = None,
    resource_id: int | None = None,
    client_search: str | None = None,
) -> int:

    query = select(func.count()).select_from(Consent).join(Client, Client.id == Consent.client_id)
    query = _filtered(query, user_id=user_id, client_id=client_id, resource_id=resource_id, client_search=client_search)
    return db.scalar(query) or 0


def ids_for(
    db: Session, *, user_id: str | None = None, client_id: str | None = None, resource_id: int | None = None
) -> list[int]:
    query = select(Consent.id)
    if user_id is not None:
        query = query.where(Consent.user_id == user_id)
    if client_id is not None:
        query = query.where(Consent.client_id == client_id)
    if resource_id is not None:
        query = query.where(Consent.resource_id == resource_id)
    return list(db.scalars(query.order_by(Consent.id)))


def scope_rows(db: Session) -> list[tuple[int, str, str, str]]:
    """(resource_id, scope, user_id, client_id) of every grant, for the scope-usage summary."""
    query = select(Consent.resource_id, Consent.scope, Consent.user_id, Consent.client_id)
    return [(resource_id, scope, user_id, client_id) for resource_id, scope, user_id, client_id in db.execute(query)]
