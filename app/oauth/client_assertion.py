"""private_key_jwt client authentication (RFC 7523 §2.2 and §3; OIDC Core §9).

The client signs a short-lived JWT with its private key; we verify it with the public keys it
registered (`jwks`, or `jwks_uri` fetched through the guarded fetcher and cached briefly).
authlib's own implementation builds on its deprecated JOSE module; this one uses joserfc. Every
rule RFC 7523 §3 states is checked: iss = sub = the client_id, aud = our issuer or token
endpoint, exp in the future (and soon: a long-lived assertion is a bearer secret), a jti that was
never used before (remembered until the assertion expires, shared by every replica).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import InvalidClientError, OAuth2Request
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from app.infra.db import now
from app.oauth.clients import OAuthClient
from app.oauth.jwts import ALGORITHMS, public_key_set, split_jwt
from app.oauth.server import current_db
from app.oauth.upstream import UpstreamError
from app.stores import clients as store

if TYPE_CHECKING:
    from app.oauth.server import OstiaryServer

METHOD = "private_key_jwt"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_LIFETIME = 600  # seconds an assertion may still be valid for when it arrives
CLOCK_SKEW = 60
MAX_ASSERTION = 8192


def _refuse(description: str) -> InvalidClientError:
    return InvalidClientError(description=description)


def _key_set(server: OstiaryServer, client: OAuthClient, kid: str | None) -> KeySet:
    row = client.row
    try:
        if row.jwks:
            return public_key_set(row.jwks)
        if row.jwks_uri:
            return server.upstreams.jwks(row.jwks_uri, kid)
    except UpstreamError:
        raise _refuse("The client's jwks_uri could not be used.") from None
    except ValueError:
        raise _refuse("The client's registered keys cannot be used.") from None
    raise _refuse("The client has no registered keys.")


def authenticate(server: OstiaryServer, request: OAuth2Request) -> OAuthClient | None:
    """The client a valid `client_assertion` proves, None when the request does not use one."""
    data = request.payload.data
    if data.get("client_assertion_type") != ASSERTION_TYPE:
        return None
    assertion = data.get("client_assertion")
    if not isinstance(assertion, str) or not assertion or len(assertion) > MAX_ASSERTION:
        raise _refuse("Missing or malformed 'client_assertion'.")
    try:
        header, unverified = split_jwt(assertion)
    except ValueError:
        raise _refuse("The client assertion is not a signed JWT.") from None
    if header.get("alg") not in ALGORITHMS:
        raise _refuse("The client assertion's algorithm is not accepted.")
    client_id = unverified.get("sub")
    sent = data.get("client_id")
    if not isinstance(client_id, str) or (sent and sent != client_id):
        raise _refuse("The client assertion's 'sub' must be the client_id.")
    client = server.query_client(client_id)
    if client is None or client.row.token_endpoint_auth_method != METHOD:
        raise _refuse("The client is unknown or does not authenticate with private_key_jwt.")
    kid = header.get("kid") if isinstance(header.get("kid"), str) else None
    try:
        claims = jwt.decode(assertion, _key_set(server, client, kid), algorithms=ALGORITHMS).claims
    except (JoseError, ValueError, TypeError):
        raise _refuse("The client assertion's signature is not valid.") from None
    _check_claims(server, claims, client.client_id)
    # RFC 7523 §3: the jti is used once; remembered (as an HMAC) until the assertion expires.
    jti_hash = server.keyring.hash(f"{client.client_id} {claims['jti']}")
    if not store.use_assertion(current_db(), jti_hash, int(claims["exp"])):
        raise _refuse("The client assertion was already used.")
    return client


def _check_claims(server: OstiaryServer, claims: dict[str, Any], client_id: str) -> None:
    t = now()
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise _refuse("The client assertion's 'iss' and 'sub' must be the client_id.")
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else audiences if isinstance(audiences, list) else []
    # RFC 7523 §3 (and its update): the audience is our issuer; the token endpoint URL is
    # accepted as RFC 7523 and OIDC Core §9 allow.
    if not {server.issuer, server.issuer + "/token"} & set(audiences):
        raise _refuse("The client assertion's 'aud' must be this server's issuer.")
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= t - CLOCK_SKEW:
        raise _refuse("The client assertion has expired (or has no 'exp').")
    if exp > t + MAX_LIFETIME:
        raise _refuse(f"The client assertion is valid for too long (at most {MAX_LIFETIME} s).")
    iat = claims.get("iat")
    if iat is not None and (not isinstance(iat, int) or iat > t + CLOCK_SKEW):
        raise _refuse("The client assertion's 'iat' is in the future.")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, int) or nbf > t + CLOCK_SKEW):
        raise _refuse("The client assertion is not valid yet.")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise _refuse("The client assertion needs a 'jti'.")
