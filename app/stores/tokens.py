from __future__ import annotations

from functools import cache
from typing import Any, cast

from sqlalchemy import Table, bindparam, exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.infra.db import Detached, Prepared
from app.models import AuthorizationCode, RefreshToken, RevokedAccessToken, User

FRESH = {"populate_existing": True}


_REFRESH = cast(Table, RefreshToken.__table__)  # declarative types __table__ as any FromClause
_USERS = cast(Table, User.__table__)

# Built once: the token endpoint's statements skip construction and cache-key work per call
# (docs/decisions.md#hot-statements-are-built-once), and the refresh grant's run on the driver
# (docs/decisions.md#the-hottest-statements-run-on-the-driver).
_INSERT_REFRESH = Prepared(_REFRESH.insert())
_FIND_REFRESH = select(RefreshToken).where(RefreshToken.token_hash.in_(bindparam("hashes", expanding=True)))
_CLAIM_REFRESH = Prepared(
    update(_REFRESH)
    .where(_REFRESH.c.id == bindparam("token_id"), _REFRESH.c.used_at.is_(None), _REFRESH.c.revoked_at.is_(None))
    .values(used_at=bindparam("at"), successor_enc=bindparam("b_successor_enc"))
)
_TOKEN = Detached(RefreshToken)
_USER = Detached(User)


@cache
def _find_refresh_and_user(hashes: int) -> Prepared:
    """The token endpoint's read: the refresh token with one of `hashes` hashes (one per key of
    the keyring) and its user, in one round trip."""
    return Prepared(
        select(*_TOKEN.columns, *_USER.columns)
        .join_from(_REFRESH, _USERS, _USERS.c.id == _REFRESH.c.user_id)
        .where(_REFRESH.c.token_hash.in_([bindparam(f"h{i}") for i in range(hashes)]))
    )


def add_refresh(db: Session, values: dict[str, Any]) -> None:
    """INSERT a new refresh token (on the driver: this request never reads the row back)."""
    _INSERT_REFRESH.rowcount(db, values)


def find_refresh(db: Session, hashes: list[str]) -> RefreshToken | None:
    return db.scalar(_FIND_REFRESH, {"hashes": hashes}, execution_options=FRESH)


def find_refresh_and_user(db: Session, hashes: list[str]) -> tuple[RefreshToken, User] | None:
    """The refresh token with one of these hashes and its user (the user's row cascades with
    its tokens, so a token always has one), as objects outside the session: read-only here."""
    row = _find_refresh_and_user(len(hashes)).first(db, {f"h{i}": h for i, h in enumerate(hashes)})
    if row is None:
        return None
    split = len(_TOKEN.columns)
    return _TOKEN(row[:split]), _USER(row[split:])


def get_refresh(db: Session, token_id: int) -> RefreshToken | None:
    return db.scalar(select(RefreshToken).where(RefreshToken.id == token_id), execution_options=FRESH)


def claim_refresh(db: Session, token_id: int, at: int, successor_enc: str) -> bool:
    """Mark a refresh token used, in one conditional UPDATE: of concurrent refreshes with the same
    token exactly one wins (on PostgreSQL the others wait for its row lock, then match nothing)."""
    return _CLAIM_REFRESH.rowcount(db, {"token_id": token_id, "at": at, "b_successor_enc": successor_enc}) == 1


def successor_of(db: Session, token_id: int) -> RefreshToken | None:
    return db.scalar(select(RefreshToken).where(RefreshToken.parent_id == token_id), execution_options=FRESH)


def revoke(
    db: Session,
    *,
    at: int,
    reason: str,
    family_id: str | None = None,
    user_id: str | None = None,
    client_id: str | None = None,
    resource_id: int | None = None,
) -> int:
    """The one revocation: every refresh token that matches all the given ids (a family; a grant
    as user x client x resource; a client; a user) is revoked, and the live access tokens issued
    with them, or from the codes that match, are recorded as revoked by jti until they expire
    (RFC 7009 §2, RFC 7662 §2.2). Returns how many access tokens that was.

    Matched by ids, never by a grant row's id: a refresh rotating at the same moment may insert a
    successor an id-based UPDATE would not see, and deleting a grant nulls its id."""
    given = {"family_id": family_id, "user_id": user_id, "client_id": client_id, "resource_id": resource_id}
    match = {k: v for k, v in given.items() if v is not None}
    if not match:
        raise ValueError("revoke needs at least one id")
    refresh = [getattr(RefreshToken, k) == v for k, v in match.items()]
    codes = [getattr(AuthorizationCode, k) == v for k, v in match.items()]
    db.execute(
        update(RefreshToken)
        .where(*refresh, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=at, revoked_reason=reason, successor_enc=None),
        execution_options={"synchronize_session": False},
    )
    live: dict[str, int] = {}
    for jti_column, exp_column, where in (
        (RefreshToken.access_jti, RefreshToken.access_expires_at, refresh),
        (AuthorizationCode.access_jti, AuthorizationCode.access_expires_at, codes),
    ):
        for jti, exp in db.execute(select(jti_column, exp_column).where(*where, jti_column.is_not(None), exp_column > at)):
            assert jti is not None and exp is not None  # the WHERE clause excludes NULLs
            live[jti] = max(live.get(jti, 0), exp)
    revoke_access_tokens(db, list(live.items()), at, reason)
    return len(live)


def revoke_access_tokens(db: Session, items: list[tuple[str, int]], at: int, reason: str) -> None:
    """Record access tokens (jti, exp) as revoked until they expire."""
    if not items:
        return
    dialect = postgresql if db.get_bind().dialect.name == "postgresql" else sqlite
    db.execute(
        dialect.insert(RevokedAccessToken)
        .values([{"jti": jti, "expires_at": exp, "revoked_at": at, "reason": reason} for jti, exp in items])
        .on_conflict_do_nothing()
    )


def is_access_token_revoked(db: Session, jti: str) -> bool:
    return db.scalar(select(RevokedAccessToken.jti).where(RevokedAccessToken.jti == jti)) is not None


_REVOKED = cast(Table, RevokedAccessToken.__table__)
# Introspection's read (docs/decisions.md#the-hottest-statements-run-on-the-driver).
_USER_AND_REVOKED = Prepared(
    select(*_USER.columns, exists().where(_REVOKED.c.jti == bindparam("jti"))).where(_USERS.c.id == bindparam("user_id"))
)


def access_token_user(db: Session, jti: str, user_id: str) -> tuple[User, bool] | None:
    """The user of an access token and whether the token was revoked (RFC 7009), in one round
    trip; None if there is no such user. The user is a read-only copy outside the session."""
    row = _USER_AND_REVOKED.first(db, {"jti": jti, "user_id": user_id})
    return (_USER(row[:-1]), bool(row[-1])) if row is not None else None
