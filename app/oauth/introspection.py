"""Token introspection (RFC 7662) on authlib's IntrospectionEndpoint, for resource servers.

Callers authenticate as confidential clients. RFC 7662 §4 leaves to the server who may learn
what about which token (docs/decisions.md#introspection-is-for-the-tokens-mcp-server): a client
may introspect the tokens it holds itself, the tokens issued for the MCP server whose credentials
it is, and, if an admin allowed it, any token. Any other token is reported `{"active": false}`
(RFC 7662 §2.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint

from app.infra.db import now
from app.models import User
from app.oauth.clients import OAuthClient
from app.oauth.revocation import AccessHandle, RefreshHandle, find_token
from app.oauth.server import Request, current_db
from app.stores import clients as clients_store
from app.stores import tokens as store
from app.stores import users as users_store


def _is_machine_token(claims: dict[str, Any]) -> bool:
    """A client_credentials token: issued to a client for itself (sub = client_id, no sign-in)."""
    return claims.get("sub") == claims.get("client_id") and "auth_time" not in claims


@dataclass
class Introspected:
    handle: RefreshHandle | AccessHandle
    active: bool
    user: User | None = None  # the token's user, read once

    def is_expired(self) -> bool:
        return not self.active

    def is_revoked(self) -> bool:
        return not self.active


class IntrospectionEndpoint(_IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> Introspected | None:
        handle = find_token(self.server, token_string, token_type_hint)
        if handle is None:
            return None
        db = current_db()
        if isinstance(handle, RefreshHandle):
            row = handle.row
            active = row.revoked_at is None and row.used_at is None and row.expires_at > now()
            user = users_store.get(db, row.user_id) if active else None
        elif _is_machine_token(handle.claims):
            # client_credentials: the subject is the client, active while it exists.
            active = not store.is_access_token_revoked(db, handle.claims["jti"])
            return Introspected(handle, active and clients_store.get_detached(db, handle.claims["sub"]) is not None)
        else:
            # The user and the revocation list in one round trip.
            sub = handle.claims.get("sub")
            found = store.access_token_user(db, handle.claims["jti"], sub) if isinstance(sub, str) else None
            active = found is not None and not found[1]
            user = found[0] if found is not None else None
        return Introspected(handle, active and user is not None and not user.disabled, user)

    def check_permission(self, token: Introspected, client: OAuthClient, request: Request) -> bool:
        row = client.row
        if row.introspect_any or token.handle.check_client(client):
            return True
        return row.resource_id is not None and self._audience_id(token.handle) == row.resource_id

    def _audience_id(self, handle: RefreshHandle | AccessHandle) -> int | None:
        """The MCP server (resource) a token was issued for."""
        if isinstance(handle, RefreshHandle):
            return handle.row.resource_id
        aud = handle.claims.get("aud")
        info = self.server.catalogue.by_uri(aud) if isinstance(aud, str) else None
        return info.id if info is not None else None

    def introspect_token(self, token: Introspected) -> dict[str, Any]:
        handle = token.handle
        if isinstance(handle, AccessHandle):
            c = handle.claims
            user = None if _is_machine_token(c) else token.user
            bound = c.get("cnf") if isinstance(c.get("cnf"), dict) else None
            return {
                "active": True,
                # RFC 9449 §6.2: a DPoP-bound token says so, and names its key.
                "token_type": "DPoP" if bound else "Bearer",
                **({"cnf": {"jkt": bound.get("jkt")}} if bound else {}),
                "scope": c.get("scope", ""),
                "client_id": c.get("client_id"),
                "username": user.username if user else None,
                "sub": c["sub"],
                "aud": c.get("aud"),
                "iss": c.get("iss"),
                "exp": c["exp"],
                "iat": c.get("iat"),
                "jti": c["jti"],
            }
        row = handle.row
        return {
            "active": True,
            "token_type": "refresh_token",
            "scope": row.scope,
            "client_id": row.client_id,
            "sub": row.user_id,
            "exp": row.expires_at,
            "iat": row.created_at,
        }
