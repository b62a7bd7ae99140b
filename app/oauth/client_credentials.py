"""The client credentials grant (RFC 6749 §4.4) for machine clients: the MCP extension
io.modelcontextprotocol/oauth-client-credentials.

Only clients an admin created for it (`ostiary clients add --client-credentials`) may use it,
never a dynamically registered or metadata-document client. Each such client is bound to one
MCP server and a set of allowed scopes; it authenticates with a secret (client_secret_basic or
_post) or a signed assertion (private_key_jwt, app/oauth/client_assertion.py). The token has
`sub` = the client and `aud` = the MCP server, and there is no refresh token (RFC 6749 §4.4.3).
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749 import InvalidScopeError, UnauthorizedClientError, grants

from app.oauth import tokens
from app.oauth.authorization_code import resolve_resource
from app.oauth.client_assertion import METHOD as PRIVATE_KEY_JWT
from app.oauth.errors import InvalidTargetError, safe_description
from app.oauth.server import Request, current_db
from app.services import audit

GRANT_TYPE = "client_credentials"


def allowed_scopes(requested: str | None, allowed: list[str], catalogue: set[str]) -> list[str]:
    """RFC 6749 §3.3 / §4.4.2: what the client asked for, each within what the admin allowed
    it (and the MCP server still offers); nothing asked means everything allowed."""
    wanted = (requested or "").split()
    usable = [s for s in allowed if s in catalogue]
    if not wanted:
        return usable
    refused = [s for s in wanted if s not in usable]
    if refused:
        raise InvalidScopeError(safe_description(f"Scope not allowed for this client: {' '.join(refused)}."))
    return list(dict.fromkeys(wanted))


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    request: Request
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", PRIVATE_KEY_JWT]

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(GRANT_TYPE) or client.row.grant_resource_id is None:
            raise UnauthorizedClientError("This client may not use the client_credentials grant.")
        self.request.client = client
        catalogue = self.server.catalogue
        own = catalogue.by_id(client.row.grant_resource_id)
        if own is None:
            raise InvalidTargetError("The MCP server of this client no longer exists.")
        # RFC 8707 §2: the token is for one MCP server, the one this client is bound to.
        asked = self.request.payload.datalist.get("resource", [])
        resource = resolve_resource(self.request.payload.datalist, catalogue, own.uri) if asked else own
        if resource.id != own.id:
            raise InvalidTargetError("This client may get tokens only for its own MCP server.")
        self.request.resource = resource
        self.request.scopes = allowed_scopes(
            self.request.payload.scope, (client.row.scope or "").split(), set(resource.catalogue())
        )

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        client, resource = self.request.client, self.request.resource
        proof = self.request.dpop
        body, jti = tokens.mint_for_client(
            self.server,
            client_id=client.client_id,
            resource=resource,
            scope=self.request.scopes,
            jkt=proof.jkt if proof else None,
        )
        db = current_db()
        tokens.touch_usage(self.server, db, client.row, None)
        audit.record(
            db,
            "token.issued",
            client_id=client.client_id,
            resource=resource.uri,
            grant_type=GRANT_TYPE,
            scope=body["scope"],
            auth_method=getattr(self.request, "auth_method", None),
            jti=jti,
        )
        return 200, body, self.TOKEN_RESPONSE_HEADER
