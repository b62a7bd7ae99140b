"""The authorization code grant (RFC 6749 §4.1, OAuth 2.1 §4.1) with MCP's rules on top:
PKCE S256 for everyone, a `resource` bound to the code, scopes from the resource's catalogue,
codes stored hashed and redeemed with one conditional UPDATE, and RFC 9207 `iss`.

authlib runs both halves (validate_authorization_request, validate_token_request) with our
hooks: the PKCE extension (app/oauth/pkce.py), `query_authorization_code` (a read), and the
checks below. Redeeming a code is the first thing `create_token_response` does.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError, InvalidScopeError, OAuth2Error, grants

from app.infra.db import now
from app.models import AuthorizationCode, User
from app.oauth import dpop, tokens
from app.oauth import scopes as scope_policy
from app.oauth.catalogue import Catalogue, ResourceInfo
from app.oauth.clients import OAuthClient
from app.oauth.errors import (
    InvalidTargetError,
    RequestNotSupportedError,
    RequestUriNotSupportedError,
    add_query,
    safe_description,
)
from app.oauth.resource_indicators import InvalidResource, canonical_resource
from app.oauth.server import Request, current_db, repeated_parameter
from app.security.secrets import new_token
from app.services import audit
from app.stores import codes as codes_store
from app.stores import tokens as tokens_store

log = logging.getLogger("ostiary.oauth")

# OAuth 2.1 §4.1.2: short-lived (docs/decisions.md#authorization-codes-live-60-seconds).
CODE_TTL = 60
CODE_PREFIX = "ostac_"
MAX_CODE = 200
MAX_STATE = 4096
MAX_NONCE = 512
PROMPTS = {"none", "login", "consent", "select_account"}


# -- authorization request policy, one small function per rule -------------------------------


def resolve_resource(datalist: dict[str, list[str]], catalogue: Catalogue, default_resource: str | None) -> ResourceInfo:
    values = datalist.get("resource", [])
    if len(values) > 1:
        # RFC 8707 allows several; an MCP token has one audience (docs/decisions.md#one-resource-per-request).
        raise InvalidTargetError("Request one resource at a time.")
    value = values[0] if values else default_resource
    if not value:
        raise InvalidTargetError("The 'resource' parameter is required (RFC 8707).")
    try:
        uri = canonical_resource(value)
    except InvalidResource as exc:
        raise InvalidTargetError(f"Invalid 'resource': {exc}.") from None
    info = catalogue.by_uri(uri)
    if info is None:
        raise InvalidTargetError("The resource is not registered on this server.")
    return info


def resolve_scopes(scope: str | None, resource: ResourceInfo) -> list[str]:
    try:
        return scope_policy.resolve(scope, resource.catalogue())
    except scope_policy.InvalidScope as exc:
        # The message quotes the client's scope: keep it within RFC 6749 5.2's characters.
        raise InvalidScopeError(safe_description(str(exc))) from None


def parse_prompt(value: str | None) -> frozenset[str]:
    prompts = frozenset((value or "").split())
    if prompts - PROMPTS:
        raise InvalidRequestError("Unsupported 'prompt' value.")
    # OIDC Core §3.1.2.1: "none" must not be combined with any other value.
    if "none" in prompts and len(prompts) > 1:
        raise InvalidRequestError("'prompt=none' cannot be combined with other values.")
    return prompts


def parse_max_age(value: str | None) -> int | None:
    """OIDC Core §3.1.2.1 max_age: a non-negative number of seconds."""
    if value is None or value == "":
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise InvalidRequestError("'max_age' must be a non-negative number of seconds.")
    return int(value)


def refuse_request_objects(data: dict[str, str]) -> None:
    """OIDC Core §6: request objects are optional; a server that does not support them says so
    instead of ignoring parameters the client may have moved into one."""
    if "request" in data:
        raise RequestNotSupportedError("Request objects ('request') are not supported.")
    if "request_uri" in data:
        raise RequestUriNotSupportedError("'request_uri' is not supported.")


def check_lengths(data: dict[str, str]) -> None:
    if len(data.get("state") or "") > MAX_STATE:
        raise InvalidRequestError("'state' is too long.")
    if len(data.get("nonce") or "") > MAX_NONCE:
        raise InvalidRequestError("'nonce' is too long.")


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    request: Request
    # OAuth 2.1 §2.4 / MCP: public clients (auth method `none`) use this grant too.
    # private_key_jwt: metadata-document clients that publish keys (app/oauth/client_assertion.py).
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none", "private_key_jwt"]

    # -- /authorize ---------------------------------------------------------------------------

    @staticmethod
    def validate_authorization_redirect_uri(request: Any, client: OAuthClient) -> str:
        # authlib echoes the redirect_uri in error_description, whose constructor refuses `"`
        # and `\` (RFC 6749 5.2) with a ValueError: a 500 instead of the error page.
        if request.payload.redirect_uri and not client.check_redirect_uri(request.payload.redirect_uri):
            raise InvalidRequestError("The redirect_uri is not registered for this client.")
        redirect_uri: str = grants.AuthorizationCodeGrant.validate_authorization_redirect_uri(request, client)
        # Known from here on, for errors redirected to it: whether the client is trusted decides
        # if an error may leave Ostiary before sign-in (app/oauth/authorize.py RedirectError).
        request.client = client
        return redirect_uri

    def validate_authorization_request(self) -> str:
        # authlib checks client, redirect URI (error page until both are trusted), response
        # type and PKCE (S256CodeChallenge); then come the MCP rules, reported by redirect.
        redirect_uri: str = super().validate_authorization_request()
        request = self.request
        settings = self.server.settings
        try:
            # RFC 6749 §3.1: authlib refused its five repeated parameters before the redirect URI
            # was trusted; any other one (code_challenge, nonce, prompt ...) is refused here.
            repeated = repeated_parameter([(k, v) for k, values in request.payload.datalist.items() for v in values])
            if repeated is not None:
                raise InvalidRequestError(safe_description(f"Parameter '{repeated}' is repeated."))
            check_lengths(request.payload.data)
            refuse_request_objects(request.payload.data)
            request.resource = resolve_resource(request.payload.datalist, self.server.catalogue, settings.default_resource)
            request.scopes = resolve_scopes(request.payload.scope, request.resource)
            request.prompts = parse_prompt(request.payload.data.get("prompt"))
            request.max_age = parse_max_age(request.payload.data.get("max_age"))
        except OAuth2Error as error:
            error.redirect_uri = redirect_uri
            error.state = request.payload.state
            raise
        return redirect_uri

    def create_authorization_response(self, redirect_uri: str, grant_user: User) -> tuple[int, str, list[tuple[str, str]]]:
        status, body, headers = super().create_authorization_response(redirect_uri, grant_user)
        location = dict(headers)["Location"]
        # RFC 9207 §2: the issuer identifies who answered (mix-up defence).
        return status, body, [("Location", add_query(location, [("iss", self.server.issuer)]))]

    def generate_authorization_code(self) -> str:
        return new_token(CODE_PREFIX)  # 256 bits

    def save_authorization_code(self, code: str, request: Request) -> None:
        t = now()
        scope = scope_policy.join(request.scopes)
        row = dict(
            code_hash=self.server.keyring.hash(code),
            client_id=request.client.client_id,
            user_id=request.user.id,
            grant_id=request.consent_id,
            resource_id=request.resource.id,
            redirect_uri=request.payload.redirect_uri or request.client.get_default_redirect_uri(),
            redirect_uri_in_request=bool(request.payload.redirect_uri),
            scope=scope,
            code_challenge=request.payload.data["code_challenge"],
            nonce=request.payload.data.get("nonce"),
            auth_time=request.auth_time,
            family_id=str(uuid.uuid4()),
            created_at=t,
            expires_at=t + CODE_TTL,
        )
        db = current_db()
        codes_store.add(db, row)
        audit.record(
            db,
            "code.issued",
            user_id=request.user.id,
            client_id=request.client.client_id,
            resource=request.resource.uri,
            scope=scope,
        )

    # -- /token ----------------------------------------------------------------------------------

    def query_authorization_code(self, code: str, client: OAuthClient) -> AuthorizationCode | None:
        """The code, if it was issued to this client (RFC 6749 §4.1.3); used or expired codes
        too, so that a replay is recognised once the request has proven the rest."""
        if not isinstance(code, str) or len(code) > MAX_CODE:
            return None
        found = codes_store.find_with_user(current_db(), self.server.keyring.hashes(code))
        if found is None or found[0].client_id != client.client_id:
            return None
        row, self.request.user = found
        return row

    def validate_token_request(self) -> None:
        super().validate_token_request()  # client auth, the code, redirect_uri, PKCE verifier
        code = self.request.authorization_code
        sent = self.request.payload.datalist.get("resource", [])
        self.request.resource = tokens.bound_resource(self.server.catalogue, code.resource_id, sent, "code")

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        db = current_db()
        code = self.request.authorization_code
        client = self.request.client
        jti, t = tokens.new_jti(), now()
        # RFC 6749 §4.1.2: used once. Of two concurrent redemptions one wins this UPDATE.
        if not codes_store.redeem(db, code.code_hash, at=t, access_jti=jti, access_expires_at=t + 3600):
            self._refuse_used_or_expired(code, t)
        user = self.request.user
        if user is None or user.disabled:
            raise InvalidGrantError("The user of this code cannot sign in.")
        resource = self.request.resource
        proof = self.request.dpop
        body, jti, exp = tokens.mint(
            self.server,
            client_id=client.client_id,
            user=user,
            resource=resource,
            scope=code.scope.split(),
            auth_time=code.auth_time,
            nonce=code.nonce,
            jti=jti,
            jkt=proof.jkt if proof else None,
        )
        if client.check_grant_type("refresh_token"):
            raw, row = tokens.new_refresh_token(
                self.server, code, access_jti=jti, access_expires_at=exp, jkt=dpop.refresh_jkt(proof, client.row.is_public)
            )
            tokens_store.add_refresh(db, row)
            body["refresh_token"] = raw
        tokens.touch_usage(self.server, db, client.row, code.grant_id)
        audit.record(
            db,
            "token.issued",
            user_id=user.id,
            client_id=client.client_id,
            resource=resource.uri,
            grant_type="authorization_code",
            jti=jti,
        )
        return 200, body, self.TOKEN_RESPONSE_HEADER

    def _refuse_used_or_expired(self, code: AuthorizationCode, t: int) -> None:
        if code.consumed_at is None and code.expires_at <= t:
            raise InvalidGrantError("The code has expired.")
        # Used before (or by a concurrent request). This request proved the client, the
        # redirect_uri and the PKCE verifier: it is the code's holder retrying, or a thief who has
        # all of that. RFC 6749 §4.1.2 / OAuth 2.1 §4.1.3: revoke what the code issued
        # (docs/decisions.md#a-replayed-code-revokes-what-it-issued-but-not-the-consent).
        db = current_db()
        count = tokens_store.revoke(db, at=t, reason="code_replay", family_id=code.family_id)
        audit.record(db, "code.replayed", user_id=code.user_id, client_id=code.client_id, family=code.family_id, revoked=count)
        raise InvalidGrantError("Invalid 'code' in request.")
