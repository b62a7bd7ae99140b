from __future__ import annotations

from typing import Any, TypeVar, cast

from sqlalchemy import CursorResult, Select, Table, and_, bindparam, delete, exists, func, or_, select, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.infra.db import Detached, Prepared
from app.models import BlockedClient, Client, InitialAccessToken, RefreshToken, UsedAssertion

_Query = TypeVar("_Query", bound=Select[*tuple[Any, ...]])
_BY_ID = select(Client).where(Client.id == bindparam("id"))  # the console's and the CLI's read
_CLIENT = Detached(Client)
# Built once, run on the driver (docs/decisions.md#the-hottest-statements-run-on-the-driver).
_DETACHED_BY_ID = Prepared(select(*_CLIENT.columns).where(Client.id == bindparam("id")))


def get(db: Session, client_id: str) -> Client | None:
    return db.scalar(_BY_ID, {"id": client_id})


def get_detached(db: Session, client_id: str) -> Client | None:
    """The client as a read-only copy outside the session: the protocol endpoints' read (a
    metadata document's client is updated through `get`, not through this copy)."""
    row = _DETACHED_BY_ID.first(db, {"id": client_id})
    return _CLIENT(row) if row is not None else None


def all_clients(db: Session) -> list[Client]:
    return list(db.scalars(select(Client).order_by(Client.created_at.desc(), Client.id)))


def add(db: Session, client: Client) -> Client:
    db.add(client)
    db.flush()
    return client


_CLIENTS = cast(Table, Client.__table__)  # declarative types __table__ as any FromClause
_INSERT = Prepared(_CLIENTS.insert())
_COLUMNS = [(attr.key, attr.columns[0].key) for attr in sa_inspect(Client).column_attrs]
_DEFAULTED = {c.key for c in _CLIENTS.columns if c.default is not None or c.server_default is not None}


def insert(db: Session, client: Client) -> Client:
    """INSERT a new client with one statement on the driver; `client` stays outside the session
    (dynamic registration writes the row once and reads nothing back: the ORM's unit of work cost
    a third of the request, docs/decisions.md#the-token-endpoint-writes-with-core-statements,
    docs/decisions.md#the-hottest-statements-run-on-the-driver). Unset attributes take the
    columns' defaults; only those columns are ever left out, so the statement has a bounded
    number of forms."""
    values = {c: v for attr, c in _COLUMNS if (v := getattr(client, attr)) is not None or c not in _DEFAULTED}
    _INSERT.rowcount(db, values)
    return client


def remove(db: Session, client_id: str) -> int:
    return cast(CursorResult[Any], db.execute(delete(Client).where(Client.id == client_id))).rowcount


def set_disabled(db: Session, client_id: str, disabled_at: int | None) -> bool:
    """Disable (a time) or enable (None) a client; False if it already was."""
    changed = Client.disabled_at.is_(None) if disabled_at is not None else Client.disabled_at.is_not(None)
    result = db.execute(update(Client).where(Client.id == client_id, changed).values(disabled_at=disabled_at))
    return cast(CursorResult[Any], result).rowcount == 1


def names(db: Session, client_ids: list[str]) -> dict[str, str]:
    """{client_id: name} of the clients that exist among these ids."""
    if not client_ids:
        return {}
    return {cid: name for cid, name in db.execute(select(Client.id, Client.name).where(Client.id.in_(client_ids)))}


def count_for_resource(db: Session, resource_id: int) -> int:
    """Clients bound to an MCP server: its credentials, or machine clients for it."""
    query = select(func.count()).select_from(Client)
    return db.scalar(query.where(or_(Client.resource_id == resource_id, Client.grant_resource_id == resource_id))) or 0


def mark_used(db: Session, client_id: str, at: int) -> None:
    db.execute(update(Client).where(Client.id == client_id).values(last_used_at=at))


def by_registration_token(db: Session, hashes: list[str]) -> Client | None:
    return db.scalar(select(Client).where(Client.registration_token_hash.in_(hashes)))


def prunable(db: Session, *, kind: str, unused_before: int, idle_before: int, now_: int) -> list[Client]:
    """Dynamic clients never used and registered before `unused_before`, or last used before
    `idle_before` with no refresh token still alive."""

    live_token = exists().where(
        RefreshToken.client_id == Client.id, RefreshToken.revoked_at.is_(None), RefreshToken.expires_at > now_
    )
    query = select(Client).where(
        Client.kind == kind,
        or_(
            and_(Client.last_used_at.is_(None), Client.created_at < unused_before),
            and_(Client.last_used_at.is_not(None), Client.last_used_at < idle_before, ~live_token),
        ),
    )
    return list(db.scalars(query.limit(1000)))


def add_initial_token(db: Session, token: InitialAccessToken) -> None:
    db.add(token)


def use_initial_token(db: Session, hashes: list[str], at: int) -> bool:
    """Spend one use of an initial access token, in one conditional UPDATE."""

    result = db.execute(
        update(InitialAccessToken)
        .where(InitialAccessToken.token_hash.in_(hashes), InitialAccessToken.expires_at > at, InitialAccessToken.uses_left > 0)
        .values(uses_left=InitialAccessToken.uses_left - 1)
    )
    return cast(CursorResult[Any], result).rowcount == 1


# -- the admin console ------------------------------------------------------------------------


def _console_filter(query: _Query, *, kind: str | None, never_used: bool, search: str | None) -> _Query:

    if kind:
        query = query.where(Client.kind == kind)
    if never_used:
        query = query.where(Client.last_used_at.is_(None))
    if search:
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.where(or_(Client.name.ilike(pattern, escape="\\"), Client.id.ilike(pattern, escape="\\")))
    return query


def search(
    db: Session, *, kind: str | None = None, never_used: bool = False, search: str | None = None, limit: int = 50, offset: int = 0
) -> list[Client]:
    query = _console_filter(select(Client), kind=kind, never_used=never_used, search=search)
    return list(db.scalars(query.order_by(Client.created_at.desc(), Client.id).limit(limit).offset(offset)))


def count(db: Session, *, kind: str | None = None, never_used: bool = False, search: str | None = None) -> int:

    query = _console_filter(select(func.count()).select_from(Client), kind=kind, never_used=never_used, search=search)
    return db.scalar(query) or 0


def counts_by_kind(db: Session) -> dict[str, int]:

    return {kind: n for kind, n in db.execute(select(Client.kind, func.count()).group_by(Client.kind))}


# -- the block list ---------------------------------------------------------------------------


def is_blocked(db: Session, client_id: str) -> bool:
    return db.scalar(select(BlockedClient.id).where(BlockedClient.id == client_id)) is not None


def block(db: Session, client_id: str, reason: str, at: int) -> bool:
    """False if it was blocked already."""
    if db.get(BlockedClient, client_id) is not None:
        return False
    db.add(BlockedClient(id=client_id, reason=reason, created_at=at))
    db.flush()
    return True


def unblock(db: Session, client_id: str) -> bool:
    result = db.execute(delete(BlockedClient).where(BlockedClient.id == client_id))
    return cast(CursorResult[Any], result).rowcount == 1


def blocked(db: Session) -> list[BlockedClient]:
    return list(db.scalars(select(BlockedClient).order_by(BlockedClient.created_at.desc(), BlockedClient.id)))


def use_assertion(db: Session, jti_hash: str, expires_at: int) -> bool:
    """Remember a client assertion's jti; False if it was seen before (one INSERT: of two
    concurrent uses one wins)."""
    try:
        with db.begin_nested():
            db.add(UsedAssertion(jti_hash=jti_hash, expires_at=expires_at))
    except IntegrityError:
        return False
    return True
