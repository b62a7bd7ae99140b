"""Clients as authlib sees them, and creating clients.

`OAuthClient` adapts a `clients` row to authlib's ClientMixin, with the stricter OAuth 2.1 rules:
redirect URIs match exactly except the loopback port, secrets compare as HMACs.
"""

from __future__ import annotations

import secrets as _secrets

from authlib.oauth2.rfc6749 import ClientMixin
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import Client
from app.models.client import KIND_ADMIN
from app.oauth.redirect_uris import matches
from app.security.secrets import Keyring, new_token
from app.services import audit
from app.stores import clients as store

SECRET_PREFIX = "ostcs_"


def new_client_id() -> str:
    return _secrets.token_urlsafe(18)


class OAuthClient(ClientMixin):
    def __init__(self, row: Client, keyring: Keyring):
        self.row = row
        self._keyring = keyring

    @property
    def client_id(self) -> str:
        return self.row.id

    def get_client_id(self) -> str:
        return self.row.id

    def get_default_redirect_uri(self) -> str | None:
        # OAuth 2.1 §4.1.1: redirect_uri may be omitted only when exactly one is registered.
        uris = self.row.redirect_uris or []
        return uris[0] if len(uris) == 1 else None

    def get_allowed_scope(self, scope: str) -> str:
        # Scopes are resolved against the resource's catalogue, not capped by the client's
        # registered `scope`: MCP clients step up to scopes they did not register (DESIGN).
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return matches(self.row.redirect_uris or [], redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return self._keyring.verify(client_secret, self.row.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.row.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type in (self.row.response_types or ["code"])

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in (self.row.grant_types or [])


def create_admin_client(
    db: Session, keyring: Keyring, *, name: str, redirect_uris: list[str], confidential: bool, actor_id: str | None = None
) -> tuple[Client, str | None]:
    """A client registered by an operator. Returns it and, if confidential, its secret (once)."""
    secret = new_token(SECRET_PREFIX) if confidential else None
    client = store.add(
        db,
        Client(
            id=new_client_id(),
            kind=KIND_ADMIN,
            name=name,
            token_endpoint_auth_method="client_secret_basic" if confidential else "none",
            secret_hash=keyring.hash(secret) if secret else None,
            redirect_uris=redirect_uris,
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            application_type="web" if confidential else "native",
            client_metadata={"client_name": name, "redirect_uris": redirect_uris},
        ),
    )
    audit.record(db, "client.created", client_id=client.id, actor_id=actor_id, kind=KIND_ADMIN, confidential=confidential)
    return client, secret


def delete_client(db: Session, row: Client, *, reason: str, actor_id: str | None = None) -> None:
    """Delete a client and revoke everything issued to it (its access tokens become inactive at
    introspection until they expire; its refresh tokens, codes and grants go with the row)."""
    from app.models import AuthorizationCode, RefreshToken
    from app.oauth import tokens
    from app.stores import tokens as tokens_store

    t = now()
    access = tokens_store.revoke_where(db, RefreshToken.client_id == row.id, t, "client_deleted")
    access += tokens_store.live_code_access_tokens(db, AuthorizationCode.client_id == row.id, t)
    tokens_store.revoke_access_tokens(db, tokens.unique_jtis(access), t, "client_deleted")
    store.remove(db, row.id)
    audit.record(db, "client.deleted", client_id=row.id, actor_id=actor_id, kind=row.kind, client_name=row.name, reason=reason)


def prune(db: Session, settings) -> list[str]:
    """Registration hygiene: delete dynamically registered clients never used within a day of
    registering, and those idle for 90 days with no live refresh token (settings)."""
    from app.models.client import KIND_DYNAMIC

    t = now()
    doomed = store.prunable(
        db,
        kind=KIND_DYNAMIC,
        unused_before=t - settings.prune_unused_clients_after,
        idle_before=t - settings.prune_idle_clients_after,
        now_=t,
    )
    for row in doomed:
        delete_client(db, row, reason="never_used" if row.last_used_at is None else "idle")
    if doomed:
        audit.record(db, "client.pruned", count=len(doomed))
    return [row.id for row in doomed]
