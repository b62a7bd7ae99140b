"""Issuing tokens: RFC 9068 JWT access tokens, OIDC id_tokens, opaque rotating refresh tokens,
and the sealed successor of a rotated refresh token. (Revocation is app/stores/tokens.revoke.)"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

from app.infra.db import now
from app.models import User
from app.oauth.catalogue import ResourceInfo
from app.oauth.scopes import OPENID, join
from app.security.secrets import new_token

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
