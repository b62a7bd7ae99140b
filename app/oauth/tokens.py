"""Issuing tokens: RFC 9068 JWT access tokens, OIDC id_tokens, opaque rotating refresh tokens,
and the sealed successor of a rotated refresh token. (Revocation is app/stores/tokens.revoke.)"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import InvalidGrantError
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import AuthorizationCode, Client, RefreshToken, User
from app.oauth.catalogue import Catalogue, ResourceInfo
from app.oauth.errors import InvalidTargetError
from app.oauth.resource_indicators import InvalidResource, canonical_resource
from app.oauth.scopes import OPENID, join
from app.security.secrets import Keyring, new_token
from app.stores import clients as clients_store
from app.stores import consents as consents_store

REFRESH_PREFIX = "ostrt_"
TOUCH_EVERY = 3600  # how stale a client's last_used_at may get before a token request writes it
CONSENT_TOUCH_EVERY = 300  # the same for a consent's

if TYPE_CHECKING:
    from app.oauth.server import OstiaryServer


def new_jti() -> str:
    return uuid.uuid4().hex


def access_token_claims(
    *,
    issuer: str,
    user_id: str,
    client_id: str,
    audience: str,
    scope: str,
    auth_time: int | None,
    jti: str,
    iat: int,
    ttl: int,
    jkt: str | None = None,
) -> dict[str, Any]:
    """RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat, jti (+ scope, auth_time when a user
    signed in, and the DPoP key's thumbprint when the token is bound to one)."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": user_id,
        # RFC 8707 §2 / MCP: the audience is the resource (the MCP server), never the client.
        "aud": audience,
        "client_id": client_id,
        "scope": scope,
        "iat": iat,
        "exp": iat + ttl,
        "jti": jti,
    }
    if auth_time is not None:
        claims["auth_time"] = auth_time
    if jkt is not None:
        claims["cnf"] = {"jkt": jkt}  # RFC 9449 §6.1
    return claims


def mint_for_client(
    server: OstiaryServer, *, client_id: str, resource: ResourceInfo, scope: list[str], jkt: str | None = None
) -> tuple[dict[str, Any], str]:
    """A machine client's token (client_credentials): RFC 9068 §2.2 with `sub` = the client
    (no user signed in, so no auth_time), `aud` = the MCP server; no refresh token (RFC 6749
    §4.4.3). Returns the body and the jti."""
    jti = new_jti()
    body, _ = _access_token(
        server, subject=client_id, client_id=client_id, resource=resource, scope=scope, auth_time=None, jti=jti, jkt=jkt
    )
    return body, jti


def _access_token(
    server: OstiaryServer,
    *,
    subject: str,
    client_id: str,
    resource: ResourceInfo,
    scope: list[str],
    auth_time: int | None,
    jti: str,
    jkt: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The token response body for an access token (RFC 6749 §5.1) and the token's claims."""
    scope_str = join(scope)
    claims = access_token_claims(
        issuer=server.settings.issuer,
        user_id=subject,
        client_id=client_id,
        audience=resource.uri,
        scope=scope_str,
        auth_time=auth_time,
        jti=jti,
        iat=now(),
        ttl=resource.token_ttl,
        jkt=jkt,
    )
    body = {
        "access_token": server.keys.sign(claims, typ="at+jwt"),  # RFC 9068 §2.1
        "token_type": "Bearer" if jkt is None else "DPoP",  # RFC 9449 §5.1
        "expires_in": resource.token_ttl,
        "scope": scope_str,
    }
    return body, claims


def id_token_claims(
    *, issuer: str, user: User, client_id: str, auth_time: int, nonce: str | None, iat: int, ttl: int
) -> dict[str, Any]:
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
    server: OstiaryServer,
    *,
    client_id: str,
    user: User,
    resource: ResourceInfo,
    scope: list[str],
    auth_time: int,
    nonce: str | None = None,
    jti: str | None = None,
    jkt: str | None = None,
) -> tuple[dict[str, Any], str, int]:
    """The token response body without a refresh token, the access token's jti and expiry."""
    jti = jti or new_jti()
    body, claims = _access_token(
        server, subject=user.id, client_id=client_id, resource=resource, scope=scope, auth_time=auth_time, jti=jti, jkt=jkt
    )
    t = claims["iat"]
    if OPENID in scope:
        body["id_token"] = server.keys.sign(
            id_token_claims(
                issuer=server.settings.issuer,
                user=user,
                client_id=client_id,
                auth_time=auth_time,
                nonce=nonce,
                iat=t,
                ttl=server.settings.id_token_ttl,
            )
        )
    return body, jti, claims["exp"]


def new_refresh_token(
    server: OstiaryServer,
    source: AuthorizationCode | RefreshToken,
    *,
    access_jti: str,
    access_expires_at: int,
    jkt: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """A new refresh token issued from a code or rotated from a refresh token: the raw value
    (returned once) and the row to insert (its HMAC). It keeps the client, user, consent,
    resource, granted scope (RFC 6749 §6), auth_time and family of what it came from, and is
    bound to `jkt`, the DPoP key of a public client (RFC 9449 §5)."""
    raw = new_token(REFRESH_PREFIX)
    t = now()
    row = {
        "token_hash": server.keyring.hash(raw),
        "family_id": source.family_id,
        "parent_id": source.id if isinstance(source, RefreshToken) else None,
        "client_id": source.client_id,
        "user_id": source.user_id,
        "grant_id": source.grant_id,
        "resource_id": source.resource_id,
        "scope": source.scope,
        "auth_time": source.auth_time,
        "created_at": t,
        "expires_at": t + server.settings.refresh_token_ttl,
        "access_jti": access_jti,
        "access_expires_at": access_expires_at,
        "jkt": jkt,
    }
    return raw, row


# -- the cached successor of a rotated refresh token -----------------------------------------


def seal_response(keyring: Keyring, body: dict[str, Any], access_expires_at: int, parent_id: int) -> str:
    payload = json.dumps({"body": body, "exp": access_expires_at}, separators=(",", ":")).encode()
    return keyring.encrypt(payload, b"refresh-successor:%d" % parent_id)


def open_response(keyring: Keyring, sealed: str, parent_id: int) -> dict[str, Any]:
    payload = json.loads(keyring.decrypt(sealed, b"refresh-successor:%d" % parent_id))
    body: dict[str, Any] = payload["body"]
    body["expires_in"] = max(0, payload["exp"] - now())
    return body


# -- what both token grants check and record ------------------------------------------------


def bound_resource(catalogue: Catalogue, resource_id: int, sent: list[str], what: str) -> ResourceInfo:
    """The resource a code or refresh token is bound to. RFC 8707 §2.2: a `resource` sent at the
    token endpoint must be that one (MCP tokens have one audience)."""
    resource = catalogue.by_id(resource_id)
    if resource is None:
        raise InvalidGrantError(f"The resource of this {what} no longer exists.")
    if sent:
        try:
            same = len(sent) == 1 and canonical_resource(sent[0]) == resource.uri
        except InvalidResource:
            same = False
        if not same:
            raise InvalidTargetError(f"The resource does not match the one this {what} was issued for.")
    return resource


def touch_usage(server: OstiaryServer, db: Session, client: Client, consent_id: int | None) -> None:
    """last_used_at of the client (the console, pruning) and of the consent, written at most every
    TOUCH_EVERY / CONSENT_TOUCH_EVERY seconds (docs/decisions.md#usage-timestamps-are-written-lazily).
    A consent this process touched less than that ago is not even asked about: no statement."""
    t = now()
    if (client.last_used_at or 0) < t - TOUCH_EVERY:
        clients_store.mark_used(db, client.id, t)
    if consent_id is not None and server.consents_touched.get(consent_id, 0) < t - CONSENT_TOUCH_EVERY:
        consents_store.touch(db, consent_id, t, every=CONSENT_TOUCH_EVERY)
        if len(server.consents_touched) >= 100_000:  # bounded: forget them all, they are written again
            server.consents_touched.clear()
        server.consents_touched[consent_id] = t
