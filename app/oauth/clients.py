"""Clients as authlib sees them (creating and deleting them is app/services/clients.py).

`OAuthClient` adapts a `clients` row to authlib's ClientMixin, with the stricter OAuth 2.1 rules:
redirect URIs match exactly except the loopback port, secrets compare as HMACs.
"""

from __future__ import annotations

from authlib.oauth2.rfc6749 import ClientMixin

from app.models import Client
from app.oauth.redirect_uris import matches
from app.security.secrets import Keyring


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
        # registered `scope`: MCP clients step up to scopes they did not register
        # (docs/decisions.md#a-clients-registered-scope-does-not-cap-its-requests).
        return scope or ""

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return matches(self.row.redirect_uris or [], redirect_uri)

    def check_client_secret(self, client_secret: str) -> bool:
        return self._keyring.verify(client_secret, self.row.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if method == self.row.token_endpoint_auth_method:
            return True
        # A machine client's secret may also come in the request content: the MCP
        # client-credentials extension sends it there (OAuth 2.1 §2.4.1 allows both).
        return (
            self.row.grant_resource_id is not None
            and self.row.token_endpoint_auth_method == "client_secret_basic"
            and method == "client_secret_post"
        )

    def check_response_type(self, response_type: str) -> bool:
        return response_type in (self.row.response_types or ["code"])

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in (self.row.grant_types or [])
