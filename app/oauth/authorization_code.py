"""The authorization code grant (RFC 6749 §4.1, OAuth 2.1 §4.1) with MCP's rules on top:
PKCE S256 for everyone, a `resource` bound to the code, scopes from the resource's catalogue,
codes stored hashed and consumed with one conditional UPDATE, and RFC 9207 `iss`."""

from __future__ import annotations

import logging
import uuid

from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    grants,
)

from app.infra.db import now
from app.models import AuthorizationCode
from app.oauth import scopes as scope_policy
from app.oauth import tokens
from app.oauth.catalogue import ResourceInfo
from app.oauth.resource_indicators import InvalidResource, canonical_resource
from app.oauth.server import add_query, current_db, repeated_parameter, safe_description
from app.security.secrets import new_token
from app.services import audit
from app.stores import clients as clients_store
from app.stores import codes as codes_store
from app.stores import grants as grants_store
from app.stores import tokens as tokens_store
from app.stores import users as users_store

log = logging.getLogger("ostiary.oauth")

CODE_TTL = 60  # seconds (DESIGN; OAuth 2.1 §4.1.2 recommends a short lifetime)
CODE_PREFIX = "ostac_"
MAX_STATE = 4096
MAX_NONCE = 512
PROMPTS = {"none", "login", "consent", "select_account"}
TOUCH_EVERY = 3600  # how stale last_used_at may get before a token request writes it


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: the requested resource is invalid, unknown or malformed."""

    error = "invalid_target"


# -- authorization request policy, one small function per rule -------------------------------


def resolve_resource(datalist: dict, catalogue, default_resource: str | None) -> ResourceInfo:
    values = datalist.get("resource", [])
    if len(values) > 1:
        # RFC 8707 allows several; an MCP token has one audience, so we ask for one.
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


def parse_prompt(value: str | None) -> set[str]:
    prompts = set((value or "").split())
    if prompts - PROMPTS:
        raise InvalidRequestError("Unsupported 'prompt' value.")
    # OIDC Core §3.1.2.1: "none" must not be combined with any other value.
    if "none" in prompts and len(prompts) > 1:
        raise InvalidRequestError("'prompt=none' cannot be combined with other values.")
    return prompts


def check_lengths(data: dict) -> None:
    if len(data.get("state") or "") > MAX_STATE:
        raise InvalidRequestError("'state' is too long.")
    if len(data.get("nonce") or "") > MAX_NONCE:
        raise InvalidRequestError("'nonce' is too long.")


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    # OAuth 2.1 §2.4 / MCP: public clients (auth method `none`) use this grant too.
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    # -- /authorize ---------------------------------------------------------------------------

    @staticmethod
    def validate_authorization_redirect_uri(request, client):
        # authlib echoes the redirect_uri in error_description, whose constructor refuses `"`
        # and `\` (RFC 6749 5.2) with a ValueError: a 500 instead of the error page.
        if request.payload.redirect_uri and not client.check_redirect_uri(request.payload.redirect_uri):
            raise InvalidRequestError("The redirect_uri is not registered for this client.")
        return grants.AuthorizationCodeGrant.validate_authorization_redirect_uri(request, client)

    def validate_authorization_request(self):
        # authlib checks client, redirect URI (error page until both are trusted), response
        # type and PKCE (S256CodeChallenge); then come the MCP rules, reported by redirect.
        redirect_uri = super().validate_authorization_request()
        request = self.request
        runtime = self.server
        try:
            # RFC 6749 §3.1: authlib refused its five repeated parameters before the redirect URI
            # was trusted; any other one (code_challenge, nonce, prompt ...) is refused here.
            repeated = repeated_parameter([(k, v) for k, values in request.payload.datalist.items() for v in values])
            if repeated is not None:
                raise InvalidRequestError(safe_description(f"Parameter '{repeated}' is repeated."))
            check_lengths(request.payload.data)
            request.resource = resolve_resource(request.payload.datalist, runtime.catalogue, runtime.settings.default_resource)
            request.scopes = resolve_scopes(request.payload.scope, request.resource)
            request.prompts = parse_prompt(request.payload.data.get("prompt"))
        except OAuth2Error as error:
            error.redirect_uri = redirect_uri
            error.state = request.payload.state
            raise
        return redirect_uri

    def create_authorization_response(self, redirect_uri: str, grant_user):
        status, body, headers = super().create_authorization_response(redirect_uri, grant_user)
        location = dict(headers)["Location"]
        # RFC 9207 §2: the issuer identifies who answered (mix-up defence).
        return status, body, [("Location", add_query(location, [("iss", self.server.issuer)]))]

    def generate_authorization_code(self):
        return new_token(CODE_PREFIX)  # 256 bits

    def save_authorization_code(self, code, request):
        runtime = self.server
        t = now()
        # The scopes the user granted (access policy, consent) — not request.scopes, which
        # authlib's second validate_authorization_request() resolved afresh from the request.
        granted = getattr(request, "granted_scopes", None)
        row = AuthorizationCode(
            code_hash=runtime.keyring.hash(code),
            client_id=request.client.client_id,
            user_id=request.user.id,
            grant_id=getattr(request, "grant_id", None),
            resource_id=request.resource.id,
            redirect_uri=request.payload.redirect_uri or request.client.get_default_redirect_uri(),
            redirect_uri_in_request=bool(request.payload.redirect_uri),
            scope=scope_policy.join(request.scopes if granted is None else granted),
            code_challenge=request.payload.data["code_challenge"],
            nonce=request.payload.data.get("nonce"),
            auth_time=getattr(request, "auth_time", None) or t,
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
            scope=row.scope,
        )

    # -- /token ----------------------------------------------------------------------------------

    def validate_token_request(self):
        super().validate_token_request()  # client auth, code, redirect_uri, PKCE verifier
        code: AuthorizationCode = self.request.authorization_code
        resource = self.server.catalogue.by_id(code.resource_id)
        if resource is None:
            raise InvalidGrantError("The resource of this code no longer exists.")
        sent = self.request.payload.datalist.get("resource", [])
        if sent:
            # RFC 8707 §2.2: a resource sent at the token endpoint must be the one granted.
            try:
                same = len(sent) == 1 and canonical_resource(sent[0]) == resource.uri
            except InvalidResource:
                same = False
            if not same:
                raise InvalidTargetError("The resource does not match the authorization request.")
        self.request.resource = resource

    def query_authorization_code(self, code, client):
        if not isinstance(code, str) or len(code) > 200:
            return None
        db = current_db()
        runtime = self.server
        hashes = runtime.keyring.hashes(code)
        t = now()
        self.request.access_jti = tokens.new_jti()
        row = codes_store.consume(db, hashes, client.client_id, t, self.request.access_jti, t + 3600)
        if row is not None:
            return row
        used = codes_store.find(db, hashes)
        if used is not None and used.consumed_at is not None and used.client_id == client.client_id:
            # RFC 6749 §4.1.2 / OAuth 2.1 §4.1.3: a code used twice revokes what it produced.
            count = tokens_store.revoke(db, at=t, reason="code_replay", family_id=used.family_id)
            audit.record(
                db, "code.replayed", user_id=used.user_id, client_id=used.client_id, family=used.family_id, revoked=count
            )
        return None

    def create_token_response(self):
        db = current_db()
        runtime = self.server
        code: AuthorizationCode = self.request.authorization_code
        client = self.request.client
        user = users_store.get(db, code.user_id)
        if user is None or user.disabled:
            raise InvalidGrantError("The user of this code cannot sign in.")
        resource: ResourceInfo = self.request.resource
        scope = code.scope.split()
        body, jti, exp = tokens.mint(
            runtime,
            client_id=client.client_id,
            user=user,
            resource=resource,
            scope=scope,
            auth_time=code.auth_time,
            nonce=code.nonce,
            jti=self.request.access_jti,
        )
        if client.check_grant_type("refresh_token"):
            raw, row = tokens.new_refresh_token(
                runtime,
                client_id=client.client_id,
                user_id=user.id,
                grant_id=code.grant_id,
                resource_id=resource.id,
                scope=code.scope,
                auth_time=code.auth_time,
                family_id=code.family_id,
                parent_id=None,
                access_jti=jti,
                access_expires_at=exp,
            )
            tokens_store.add_refresh(db, row)
            body["refresh_token"] = raw
        touch_usage(db, client.row, code.grant_id)
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


def touch_usage(db, client_row, grant_id: int | None) -> None:
    """last_used_at for the admin console and client pruning, written at most hourly."""
    t = now()
    if (client_row.last_used_at or 0) < t - TOUCH_EVERY:
        clients_store.mark_used(db, client_row.id, t)
    if grant_id is not None:
        grants_store.touch(db, grant_id, t)
