"""The refresh token grant (RFC 6749 §6) with rotation, an idempotent retry window and reuse
detection (OAuth 2.1 §4.3.1, RFC 9700 §4.14.2).

Every use returns a new refresh token and retires the old one. A retry of the same token within
the grace window (a lost response) returns the *same* successor, sealed on the parent row, as
long as that successor has not been used itself
(docs/decisions.md#a-retry-within-the-grace-window-gets-the-same-successor). Any other second
use is reuse: every refresh token of the grant is revoked
(docs/decisions.md#refresh-token-reuse-revokes-the-whole-consent). Of concurrent uses exactly one
wins the conditional UPDATE.

The states of a refresh token: live (unused) -> used (successor sealed on it, grace window) ->
used (window over) ; live/used -> revoked ; any -> expired.
"""

from __future__ import annotations

import logging
from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, InvalidScopeError, grants
from authlib.oauth2.rfc6749.hooks import hooked

from app.infra.db import now
from app.models import RefreshToken
from app.oauth import dpop, tokens
from app.oauth import scopes as scope_policy
from app.oauth.errors import safe_description
from app.oauth.server import Request, current_db
from app.security.secrets import DecryptError
from app.services import audit
from app.stores import tokens as store

log = logging.getLogger("ostiary.oauth")

MAX_TOKEN = 200


def narrowed_scope(requested: str | None, granted: str) -> list[str]:
    """RFC 6749 §6: the requested scope MUST NOT include any scope not originally granted; if
    omitted it is treated as equal to the original scope."""
    granted_set = granted.split()
    if requested is None:
        return granted_set
    try:
        wanted = scope_policy.parse(requested)
    except scope_policy.InvalidScope as exc:
        raise InvalidScopeError(safe_description(str(exc))) from None  # it quotes the request
    if not wanted:
        return granted_set
    if not set(wanted) <= set(granted_set):
        raise InvalidScopeError("The requested scope exceeds the scope originally granted.")
    return wanted


class RefreshTokenGrant(grants.RefreshTokenGrant):
    request: Request
    # OAuth 2.1 §4.3: public clients refresh too (they authenticate with `none`).
    # private_key_jwt: metadata-document clients that publish keys (app/oauth/client_assertion.py).
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none", "private_key_jwt"]

    @hooked  # type: ignore[untyped-decorator]  # authlib ships no type information
    def validate_token_request(self) -> None:
        # authlib's version answers one invalid_grant for unknown, revoked and expired tokens and
        # does not check the scope's syntax; this one says which, and binds the resource.
        client = self._validate_request_client()
        self.request.client = client
        raw = self.request.form.get("refresh_token")
        if not raw:
            raise InvalidRequestError("Missing 'refresh_token' in request.")
        found = store.find_refresh_and_user(current_db(), self.server.keyring.hashes(raw)) if len(raw) <= MAX_TOKEN else None
        if found is None or found[0].client_id != client.client_id:
            raise InvalidGrantError("Invalid refresh token.")
        row, self.request.user = found
        if row.revoked_at is not None:
            raise InvalidGrantError("The refresh token was revoked.")
        if row.expires_at <= now():
            raise InvalidGrantError("The refresh token has expired.")
        sent = self.request.payload.datalist.get("resource", [])
        self.request.resource = tokens.bound_resource(self.server.catalogue, row.resource_id, sent, "refresh token")
        dpop.check_refresh_binding(row.jkt, self.request.dpop)  # RFC 9449 §5
        self.request.refresh_token = row
        self.request.scopes = narrowed_scope(self.request.payload.data.get("scope"), row.scope)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        db = current_db()
        row: RefreshToken | None  # None if it vanished after a lost race (below)
        row = self.request.refresh_token
        resource = self.request.resource
        client = self.request.client
        user = self.request.user
        if user is None or user.disabled:
            raise InvalidGrantError("The user of this refresh token cannot sign in.")
        # Never a scope the user may no longer have (groups change) or the MCP server dropped.
        scope = scope_policy.permitted(self.request.scopes, resource, user.groups)
        if scope_policy.refuses_all(self.request.scopes, scope):
            raise InvalidGrantError("The user may no longer use any scope of this grant.")
        t = now()

        if row.used_at is None:
            proof = self.request.dpop
            body, jti, exp = tokens.mint(
                self.server,
                client_id=client.client_id,
                user=user,
                resource=resource,
                scope=scope,
                auth_time=row.auth_time,
                jkt=proof.jkt if proof else None,
            )
            raw, successor = tokens.new_refresh_token(
                self.server, row, access_jti=jti, access_expires_at=exp, jkt=dpop.refresh_jkt(proof, client.row.is_public)
            )
            body["refresh_token"] = raw
            if store.claim_refresh(db, row.id, t, tokens.seal_response(self.server.keyring, body, exp, row.id)):
                store.add_refresh(db, successor)
                tokens.touch_usage(self.server, db, client.row, row.grant_id)
                audit.record(db, "token.refreshed", user_id=user.id, client_id=client.client_id, resource=resource.uri, jti=jti)
                return 200, body, self.TOKEN_RESPONSE_HEADER
            row = store.get_refresh(db, row.id)  # another request won the race: read what it did

        replay = self._replay(row, t)
        if replay is not None:
            return 200, replay, self.TOKEN_RESPONSE_HEADER
        assert row is not None
        count = store.revoke(db, at=t, reason="reuse", user_id=row.user_id, client_id=row.client_id, resource_id=row.resource_id)
        audit.record(
            db,
            "token.reuse_detected",
            user_id=row.user_id,
            client_id=row.client_id,
            resource=resource.uri,
            family=row.family_id,
            revoked=count,
        )
        log.warning("refresh token reuse: the grant of family %s of client %s revoked", row.family_id, row.client_id)
        raise InvalidGrantError("The refresh token was already used.")

    def _replay(self, row: RefreshToken | None, t: int) -> dict[str, Any] | None:
        """The same successor for a retry inside the grace window, if it is still unused."""
        if row is None or row.revoked_at is not None or row.used_at is None or not row.successor_enc:
            return None
        if t > row.used_at + self.server.settings.refresh_grace_period:
            return None
        successor = store.successor_of(current_db(), row.id)
        if successor is None or successor.used_at is not None or successor.revoked_at is not None:
            return None  # once the successor is used, any use of its parent is reuse
        try:
            return tokens.open_response(self.server.keyring, row.successor_enc, row.id)
        except DecryptError:
            return None
