"""The refresh token grant (RFC 6749 §6) with rotation, an idempotent retry window and reuse
detection (OAuth 2.1 §4.3.1, RFC 9700 §4.14.2).

Every use returns a new refresh token and retires the old one. A retry of the same token within
the grace window (a lost response) returns the *same* successor, sealed on the parent row, as
long as that successor has not been used itself. Any other second use is reuse: the whole
family is revoked. Of concurrent uses exactly one wins the conditional UPDATE.
"""

from __future__ import annotations

import logging

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, InvalidScopeError, grants

from app.infra.db import now
from app.models import RefreshToken
from app.oauth import tokens
from app.oauth.authorization_code import InvalidTargetError, touch_usage
from app.oauth.catalogue import ResourceInfo
from app.oauth.resource_indicators import InvalidResource, canonical_resource
from app.oauth.scopes import PROTOCOL_SCOPES, InvalidScope, join, parse
from app.oauth.server import current_db, safe_description
from app.security.secrets import DecryptError
from app.services import audit
from app.stores import tokens as store
from app.stores import users as users_store

log = logging.getLogger("ostiary.oauth")


def narrowed_scope(requested: str | None, granted: str) -> list[str]:
    """RFC 6749 §6: the requested scope MUST NOT include any scope not originally granted; if
    omitted it is treated as equal to the original scope."""
    granted_set = granted.split()
    if requested is None:
        return granted_set
    try:
        wanted = parse(requested)
    except InvalidScope as exc:
        raise InvalidScopeError(safe_description(str(exc))) from None  # it quotes the request
    if not wanted:
        return granted_set
    if not set(wanted) <= set(granted_set):
        raise InvalidScopeError("The requested scope exceeds the scope originally granted.")
    return wanted


class RefreshTokenGrant(grants.RefreshTokenGrant):
    # OAuth 2.1 §4.3: public clients refresh too (they authenticate with `none`).
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    # OAuth 2.1 §4.3.1: refresh tokens of public clients MUST be sender-constrained or rotated.
    INCLUDE_NEW_REFRESH_TOKEN = True

    def validate_token_request(self):
        client = self._validate_request_client()
        self.request.client = client
        raw = self.request.form.get("refresh_token")
        if not raw:
            raise InvalidRequestError("Missing 'refresh_token' in request.")
        db = current_db()
        runtime = self.server
        row = store.find_refresh(db, runtime.keyring.hashes(raw)) if len(raw) <= 200 else None
        t = now()
        if row is None or row.client_id != client.client_id:
            raise InvalidGrantError("Invalid refresh token.")
        if row.revoked_at is not None:
            raise InvalidGrantError("The refresh token was revoked.")
        if row.expires_at <= t:
            raise InvalidGrantError("The refresh token has expired.")
        resource = runtime.catalogue.by_id(row.resource_id)
        if resource is None:
            raise InvalidGrantError("The resource of this refresh token no longer exists.")
        sent = self.request.payload.datalist.get("resource", [])
        if sent:
            # RFC 8707 §2.2: the resource stays bound to the refresh token.
            try:
                same = len(sent) == 1 and canonical_resource(sent[0]) == resource.uri
            except InvalidResource:
                same = False
            if not same:
                raise InvalidTargetError("The resource does not match the one this refresh token was issued for.")
        self.request.refresh_token = row
        self.request.resource = resource
        self.request.scopes = narrowed_scope(self.request.payload.data.get("scope"), row.scope)

    def create_token_response(self):
        db = current_db()
        runtime = self.server
        row: RefreshToken = self.request.refresh_token
        resource: ResourceInfo = self.request.resource
        client = self.request.client
        user = users_store.get(db, row.user_id)
        if user is None or user.disabled:
            raise InvalidGrantError("The user of this refresh token cannot sign in.")
        scope = self._permitted(user, resource, self.request.scopes)
        t = now()

        if row.used_at is None:
            body, jti, exp = tokens.mint(
                runtime, client_id=client.client_id, user=user, resource=resource, scope=scope, auth_time=row.auth_time
            )
            raw, successor = tokens.new_refresh_token(
                runtime,
                client_id=client.client_id,
                user_id=user.id,
                grant_id=row.grant_id,
                resource_id=row.resource_id,
                scope=row.scope,  # RFC 6749 §6: a new refresh token keeps the original scope
                auth_time=row.auth_time,
                family_id=row.family_id,
                parent_id=row.id,
                access_jti=jti,
                access_expires_at=exp,
            )
            body["refresh_token"] = raw
            if store.claim_refresh(db, row.id, t, tokens.seal_response(runtime, body, exp, row.id)):
                store.add_refresh(db, successor)
                touch_usage(db, client.row, row.grant_id)
                audit.record(db, "token.refreshed", user_id=user.id, client_id=client.client_id, resource=resource.uri, jti=jti)
                return 200, body, self.TOKEN_RESPONSE_HEADER
            row = store.get_refresh(db, row.id)  # another request won the race: read what it did

        replay = self._replay(row, t)
        if replay is not None:
            return 200, replay, self.TOKEN_RESPONSE_HEADER
        # Reuse: every refresh token of the grant (user x client x resource) is revoked, not
        # only this family (issue 3 §6; RFC 9700 §4.14.2 asks at least for the family).
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
        log.warning("refresh token reuse: family %s of client %s revoked", row.family_id, row.client_id)
        raise InvalidGrantError("The refresh token was already used.")

    def _replay(self, row: RefreshToken | None, t: int) -> dict | None:
        """The same successor for a retry inside the grace window, if it is still unused."""
        runtime = self.server
        if row is None or row.revoked_at is not None or row.used_at is None or not row.successor_enc:
            return None
        if t > row.used_at + runtime.settings.refresh_grace_period:
            return None
        successor = store.successor_of(current_db(), row.id)
        if successor is None or successor.used_at is not None or successor.revoked_at is not None:
            return None  # DESIGN: once the successor is used, any use of its parent is reuse
        try:
            return tokens.open_response(runtime, row.successor_enc, row.id)
        except DecryptError:
            return None

    def _permitted(self, user, resource: ResourceInfo, scope: list[str]) -> list[str]:
        """Access policy: never return a scope the user may no longer have (groups change) or
        that the MCP server no longer declares."""
        allowed = [s for s in scope if s in PROTOCOL_SCOPES or (s in resource.scopes and resource.scopes[s].permits(user.groups))]
        if scope and not [s for s in allowed if s not in PROTOCOL_SCOPES] and [s for s in scope if s not in PROTOCOL_SCOPES]:
            raise InvalidGrantError("The user may no longer use any scope of this grant.")
        return allowed


__all__ = ["RefreshTokenGrant", "join"]
