"""Enterprise-managed authorization (MCP extension
io.modelcontextprotocol/enterprise-managed-authorization): the JWT bearer grant (RFC 7523 §2.1)
with an Identity Assertion JWT Authorization Grant (ID-JAG) issued by a trusted enterprise IdP.

The client authenticates as an admin-created confidential client and presents the ID-JAG as
`assertion`. We check what the extension (§4.3, §5.1) and RFC 7521 §5.2 / RFC 7523 §3 require:
`typ` oauth-id-jag+jwt, a signature by the keys of an identity provider an admin trusts for
ID-JAGs (asymmetric algorithms only), `aud` = our issuer, `client_id` = the authenticated client,
`resource` = a registered MCP server, `iat`/`exp` within bounds, a `jti` never seen before (shared
by every replica). The subject is the user linked to (issuer, sub). Scopes: what was asked for
(or, if nothing, what the ID-JAG carries, or the MCP server's defaults), within what the ID-JAG
carries and what the user's groups permit. No refresh token: the client presents a new ID-JAG.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidScopeError, UnauthorizedClientError, grants
from joserfc import jwt
from joserfc.errors import JoseError

from app.infra.db import now
from app.models.client import KIND_ADMIN
from app.oauth import scopes as scope_policy
from app.oauth import tokens
from app.oauth.errors import InvalidTargetError, safe_description
from app.oauth.jwts import ALGORITHMS, split_jwt
from app.oauth.resource_indicators import InvalidResource, canonical_resource
from app.oauth.server import Request, current_db
from app.services import Refused, audit, identities
from app.stores import clients as clients_store
from app.stores import identities as idp_store

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
PROFILE = "urn:ietf:params:oauth:grant-profile:id-jag"
TYP = "oauth-id-jag+jwt"
MAX_LIFETIME = 3600  # an ID-JAG is short-lived; a longer one is refused
CLOCK_SKEW = 60
MAX_ASSERTION = 16384


class JwtBearerGrant(grants.BaseGrant, grants.TokenEndpointMixin):
    request: Request
    GRANT_TYPE = GRANT_TYPE
    # The extension: the client authenticates as registered with us (confidential).
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_token_request(self) -> None:
        client = self.authenticate_token_endpoint_client()
        # Only clients an operator created may present ID-JAGs, never a self-registered one.
        if client.row.kind != KIND_ADMIN or client.row.is_public or client.row.grant_resource_id is not None:
            raise UnauthorizedClientError("This client may not use the jwt-bearer grant.")
        self.request.client = client
        assertion = self.request.payload.data.get("assertion")
        if not isinstance(assertion, str) or not assertion or len(assertion) > MAX_ASSERTION:
            raise InvalidGrantError("Missing or malformed 'assertion'.")
        try:
            header, unverified = split_jwt(assertion)
        except ValueError:
            raise InvalidGrantError("The assertion is not a signed JWT.") from None
        # Extension §5.1 / RFC 8725 §3.11: the explicit type keeps other JWTs out.
        if header.get("typ") != TYP:
            raise InvalidGrantError(f"The assertion's typ must be {TYP}.")
        if header.get("alg") not in ALGORITHMS:
            raise InvalidGrantError("The assertion's algorithm is not accepted.")
        db = current_db()
        issuer = unverified.get("iss")
        provider = idp_store.by_issuer(db, issuer) if isinstance(issuer, str) else None
        if provider is None or not provider.id_jag or not provider.enabled:
            raise InvalidGrantError("The assertion's issuer is not trusted here.")
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        try:
            keys = self.server.upstreams.keys(provider.issuer, kid)
            claims = jwt.decode(assertion, keys, algorithms=ALGORITHMS).claims
        except (JoseError, ValueError, TypeError):
            raise InvalidGrantError("The assertion's signature is not valid.") from None
        self._check_claims(claims, client.client_id)
        self.request.resource = self._resource(claims)
        jti_hash = self.server.keyring.hash(f"id-jag {provider.issuer} {claims['jti']}")
        if not clients_store.use_assertion(db, jti_hash, int(claims["exp"])):
            raise InvalidGrantError("The assertion was already used.")
        try:
            user = identities.user_for(db, provider, claims)
        except Refused as exc:
            raise InvalidGrantError(safe_description(str(exc))) from None
        if user.disabled or user.locked_at is not None:
            raise InvalidGrantError("The user may not sign in.")
        self.request.user = user
        self.request.scopes = self._scopes(claims, user)
        self.request.provider_name = provider.name
        self.request.auth_time = int(claims["iat"])

    def _check_claims(self, claims: dict[str, Any], client_id: str) -> None:
        t = now()
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self.server.issuer not in audiences:
            raise InvalidGrantError("The assertion's aud must be this server's issuer.")
        if claims.get("client_id") != client_id:
            raise InvalidGrantError("The assertion was issued to another client.")
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            raise InvalidGrantError("The assertion needs exp and iat.")
        if exp <= t - CLOCK_SKEW:
            raise InvalidGrantError("The assertion has expired.")
        if iat > t + CLOCK_SKEW or exp - iat > MAX_LIFETIME or exp > t + MAX_LIFETIME:
            raise InvalidGrantError("The assertion's iat and exp are out of bounds.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise InvalidGrantError("The assertion needs a jti.")

    def _resource(self, claims: dict[str, Any]) -> Any:
        value = claims.get("resource")
        sent = self.request.payload.datalist.get("resource", [])
        try:
            uri = canonical_resource(value) if isinstance(value, str) else None
            asked = [canonical_resource(v) for v in sent]
        except InvalidResource:
            raise InvalidTargetError("Invalid resource.") from None
        info = self.server.catalogue.by_uri(uri) if uri else None
        if info is None:
            raise InvalidTargetError("The assertion's resource is not an MCP server registered here.")
        if any(a != info.uri for a in asked):
            raise InvalidTargetError("The 'resource' parameter differs from the assertion's.")
        return info

    def _scopes(self, claims: dict[str, Any], user: Any) -> list[str]:
        resource = self.request.resource
        asserted = claims.get("scope")
        asserted_set = set(asserted.split()) if isinstance(asserted, str) else None
        requested = (self.request.payload.scope or "").split()
        if requested:
            wanted = requested
        elif asserted_set is not None:
            wanted = sorted(asserted_set)
        else:
            wanted = [name for name, default in resource.catalogue().items() if default]
        unknown = [s for s in wanted if s not in resource.scopes]
        if unknown or (asserted_set is not None and not set(wanted) <= asserted_set):
            raise InvalidScopeError("The requested scope is not covered by the assertion or the MCP server.")
        permitted = scope_policy.permitted(wanted, resource, user.groups)
        if not permitted:
            raise InvalidScopeError("The user may not be granted any of the requested scopes.")
        return permitted

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        req = self.request
        body, jti, _ = tokens.mint(
            self.server,
            client_id=req.client.client_id,
            user=req.user,
            resource=req.resource,
            scope=req.scopes,
            auth_time=req.auth_time,
            jkt=req.dpop.jkt if req.dpop else None,
        )
        db = current_db()
        tokens.touch_usage(self.server, db, req.client.row, None)
        audit.record(
            db,
            "token.issued",
            user_id=req.user.id,
            username=req.user.username,
            client_id=req.client.client_id,
            resource=req.resource.uri,
            grant_type=GRANT_TYPE,
            idp=req.provider_name,
            scope=body["scope"],
            jti=jti,
        )
        return 200, body, self.TOKEN_RESPONSE_HEADER
