"""Token revocation (RFC 7009) on authlib's RevocationEndpoint.

A refresh token revokes its whole family; an access token (a JWT) is recorded by jti so that
introspection reports it inactive until it expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint

from app.infra.db import now
from app.models import RefreshToken
from app.oauth import jwt_access
from app.oauth.clients import OAuthClient
from app.oauth.server import OstiaryServer, Request, current_db
from app.services import audit
from app.stores import tokens as store


@dataclass
class RefreshHandle:
    row: RefreshToken

    def check_client(self, client: OAuthClient) -> bool:
        return self.row.client_id == client.client_id


@dataclass
class AccessHandle:
    claims: dict[str, Any]

    def check_client(self, client: OAuthClient) -> bool:
        return self.claims.get("client_id") == client.client_id


def find_token(server: OstiaryServer, token: str, hint: str | None) -> RefreshHandle | AccessHandle | None:
    """Look the token up as the hint says first, then as the other type (RFC 7009 §2.1)."""
    if not isinstance(token, str) or not token or len(token) > 8192:
        return None
    lookups = [_refresh, _access] if hint != "access_token" else [_access, _refresh]
    for lookup in lookups:
        found = lookup(server, token)
        if found is not None:
            return found
    return None


def _refresh(server: OstiaryServer, token: str) -> RefreshHandle | None:
    if len(token) > 200 or token.count(".") == 2:
        return None
    row = store.find_refresh(current_db(), server.keyring.hashes(token))
    return RefreshHandle(row) if row is not None else None


def _access(server: OstiaryServer, token: str) -> AccessHandle | None:
    claims = jwt_access.decode(server.keys, server.issuer, token)
    return AccessHandle(claims) if claims is not None else None


class RevocationEndpoint(_RevocationEndpoint):
    # OAuth 2.1 §2.4: public clients revoke their own tokens with client_id alone.
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> RefreshHandle | AccessHandle | None:
        return find_token(self.server, token_string, token_type_hint)

    def authenticate_token(self, request: Request, client: OAuthClient) -> RefreshHandle | AccessHandle | None:
        self.check_params(request, client)
        token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        # RFC 7009 §2.2: a token of another client is treated as invalid: answer 200, do nothing.
        return token if token is not None and token.check_client(client) else None

    def revoke_token(self, token: RefreshHandle | AccessHandle, request: Request) -> None:
        db = current_db()
        if isinstance(token, RefreshHandle):
            count = store.revoke(db, at=now(), reason="revoked", family_id=token.row.family_id)
            audit.record(
                db,
                "token.revoked",
                client_id=token.row.client_id,
                user_id=token.row.user_id,
                kind="refresh_token",
                family=token.row.family_id,
                access_tokens=count,
            )
        else:
            store.revoke_access_tokens(db, [(token.claims["jti"], token.claims["exp"])], now(), "revoked")
            audit.record(
                db,
                "token.revoked",
                client_id=token.claims.get("client_id"),
                user_id=token.claims.get("sub"),
                kind="access_token",
                jti=token.claims["jti"],
            )
