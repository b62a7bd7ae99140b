"""Issuing tokens: RFC 9068 JWT access tokens, OIDC id_tokens, opaque rotating refresh tokens;
and revoking what was issued (a refresh-token family, a grant, an access token by jti)."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

from sqlalchemy import and_
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import AuthorizationCode, RefreshToken, User
from app.oauth.catalogue import ResourceInfo
from app.oauth.scopes import OPENID, join
from app.security.secrets import new_token
from app.stores import tokens as store

REFRESH_PREFIX = "ostrt_"

if TYPE_CHECKING:
    from app.runtime import Runtime


def new_jti() -> str:
    return uuid.uuid4().hex


def access_token_claims(
    *, issuer: str, user_id: str, client_id: str, audience: str, scope: str, auth_time: int, jti: str, iat: int, ttl: int
) -> dict:
    """RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat, jti (+ scope, auth_time)."""
    return {
        "iss": issuer,
        "sub": user_id,
        # RFC 8707 §2 / MCP: the audience is the resource (the MCP server), never the client.
        "aud": audience,
        "client_id": client_id,
        "scope": scope,
        "iat": iat,
        "exp": iat + ttl,
        "jti": jti,
        "auth_time": auth_time,
    }


def id_token_claims(*, issuer: str, user: User, client_id: str, auth_time: int, nonce: str | None, iat: int, ttl: int) -> dict:
    claims = {
        "iss": issuer,
        "sub": user.id,
        "aud": client_id,
        "iat": iat,
        "exp": iat + ttl,
        "auth_time": auth_time,
        "preferred_username": user.username,
    }
    if nonce:
        claims["nonce"] = nonce  # OIDC Core §2: echoed when the authorization request had one
    return claims


def mint(
    runtime: Runtime,
    *,
    client_id: str,
    user: User,
    resource: ResourceInfo,
    scope: list[str],
    auth_time: int,
    nonce: str | None = None,
    jti: str | None = None,
) -> tuple[dict, str, int]:
    """The token response body without a refresh token, the access token's jti and expiry."""
    t = now()
    jti = jti or new_jti()
    scope_str = join(scope)
    claims = access_token_claims(
        issuer=runtime.settings.issuer,
        user_id=user.id,
        client_id=client_id,
        audience=resource.uri,
        scope=scope_str,
        auth_time=auth_time,
        jti=jti,
        iat=t,
        ttl=resource.token_ttl,
    )
    body = {
        "access_token": runtime.keys.sign(claims, typ="at+jwt"),  # RFC 9068 §2.1
        "token_type": "Bearer",
        "expires_in": resource.token_ttl,
        "scope": scope_str,
    }
    if OPENID in scope:
        body["id_token"] = runtime.keys.sign(
            id_token_claims(
                issuer=runtime.settings.issuer,
                user=user,
                client_id=client_id,
                auth_time=auth_time,
                nonce=nonce,
                iat=t,
                ttl=runtime.settings.id_token_ttl,
            )
        )
    return body, jti, claims["exp"]


def new_refresh_token(
    runtime: Runtime,
    *,
    client_id: str,
    user_id: str,
    grant_id: int | None,
    resource_id: int,
    scope: str,
    auth_time: int,
    family_id: str,
    parent_id: int | None,
    access_jti: str,
    access_expires_at: int,
) -> tuple[str, dict]:
    """A new refresh token: the raw value (returned once) and the row to insert (its HMAC)."""
    raw = new_token(REFRESH_PREFIX)
    t = now()
    row = dict(
        token_hash=runtime.keyring.hash(raw),
        family_id=family_id,
        parent_id=parent_id,
        client_id=client_id,
        user_id=user_id,
        grant_id=grant_id,
        resource_id=resource_id,
        scope=scope,
        auth_time=auth_time,
        created_at=t,
        expires_at=t + runtime.settings.refresh_token_ttl,
        access_jti=access_jti,
        access_expires_at=access_expires_at,
    )
    return raw, row


# -- the cached successor of a rotated refresh token -----------------------------------------


def seal_response(runtime: Runtime, body: dict, access_expires_at: int, parent_id: int) -> str:
    payload = json.dumps({"body": body, "exp": access_expires_at}, separators=(",", ":")).encode()
    return runtime.keyring.encrypt(payload, b"refresh-successor:%d" % parent_id)


def open_response(runtime: Runtime, sealed: str, parent_id: int) -> dict:
    payload = json.loads(runtime.keyring.decrypt(sealed, b"refresh-successor:%d" % parent_id))
    body = payload["body"]
    body["expires_in"] = max(0, payload["exp"] - now())
    return body


# -- revocation -------------------------------------------------------------------------------


def revoke_family(db: Session, family_id: str, reason: str) -> int:
    """Revoke every refresh token of a family and the live access tokens issued with them."""
    t = now()
    access = store.revoke_where(db, _family(family_id), t, reason)
    access += store.live_code_access_tokens(db, AuthorizationCode.family_id == family_id, t)
    store.revoke_access_tokens(db, unique_jtis(access), t, reason)
    return len(access)


def revoke_grant(db: Session, *, user_id: str, client_id: str, resource_id: int, reason: str) -> int:
    """Revoke every refresh token, and the live access tokens, of a grant (user x client x
    resource): a consent revoked, or a refresh token reused.

    Matched by the grant's triple, not its id: a refresh rotating at the same moment may insert a
    successor the id-based UPDATE would not see, and deleting the grant nulls the id."""
    t = now()
    access = store.revoke_where(db, _of_grant(RefreshToken, user_id, client_id, resource_id), t, reason)
    access += store.live_code_access_tokens(db, _of_grant(AuthorizationCode, user_id, client_id, resource_id), t)
    store.revoke_access_tokens(db, unique_jtis(access), t, reason)
    return len(access)


def _of_grant(model, user_id: str, client_id: str, resource_id: int):
    return and_(model.user_id == user_id, model.client_id == client_id, model.resource_id == resource_id)


def _family(family_id: str):
    return RefreshToken.family_id == family_id


def unique_jtis(items: list[tuple[str, int]]) -> list[tuple[str, int]]:
    seen: dict[str, int] = {}
    for jti, exp in items:
        seen[jti] = max(seen.get(jti, 0), exp)
    return list(seen.items())
