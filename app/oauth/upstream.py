"""Organisations' OpenID Connect providers as seen from here: their discovery documents and
keys, fetched through the guarded fetcher (an internal provider must be listed in
OSTIARY_CIMD_ALLOWED_HOSTS) and cached a few minutes; the ID-JAG grant and upstream sign-in both
use them.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from authlib.oauth2.rfc6749 import InvalidGrantError
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from app.infra.fetch import Fetcher, FetchError
from app.oauth.jwts import ALGORITHMS, has_kid, public_key_set, split_jwt
from app.security.secrets import new_token

TTL = 300
MAX_DOCUMENT = 64 * 1024


class UpstreamError(InvalidGrantError):
    """A provider's discovery document or keys could not be used."""


class Upstreams:
    def __init__(self, fetcher: Fetcher) -> None:
        self.fetcher = fetcher
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def _cached(self, url: str, *, fresh: bool = False) -> dict[str, Any]:
        with self._lock:
            hit = self._cache.get(url)
        if hit is not None and not fresh and hit[0] > time.monotonic():
            return hit[1]
        try:
            body = json.loads(self.fetcher.get_json_document(url, MAX_DOCUMENT).body)
        except (FetchError, ValueError):
            raise UpstreamError("The identity provider could not be reached.") from None
        if not isinstance(body, dict):
            raise UpstreamError("The identity provider answered with something that is not a JSON object.")
        with self._lock:
            self._cache[url] = (time.monotonic() + TTL, body)
        return body

    def discovery(self, issuer: str) -> dict[str, Any]:
        """OIDC Discovery §4: the provider's metadata; its `issuer` must be the one asked for
        (§4.3), and it must name the endpoints we use."""
        doc = self._cached(issuer + "/.well-known/openid-configuration")
        if doc.get("issuer") != issuer or not isinstance(doc.get("jwks_uri"), str):
            raise UpstreamError("The identity provider's discovery document is not usable.")
        return doc

    def keys(self, issuer: str, kid: str | None) -> KeySet:
        """The provider's public keys (OIDC Discovery §3 jwks_uri)."""
        return self.jwks(self.discovery(issuer)["jwks_uri"], kid)

    def jwks(self, uri: str, kid: str | None) -> KeySet:
        """The public keys published at `uri`, cached; fetched again when a `kid` is unknown
        (key rollover). Providers' keys and private_key_jwt clients' jwks_uri alike."""
        document = self._cached(uri)
        if kid and not has_kid(document, kid):
            document = self._cached(uri, fresh=True)
        try:
            return public_key_set(document)
        except ValueError:
            raise UpstreamError("The published keys cannot be used.") from None


# -- signing in through a provider (OIDC Core §3.1: authorization code flow, as a client) --------

ID_TOKEN_ALGORITHMS = ALGORITHMS
CLOCK_SKEW = 120


class SignInRefused(Exception):
    """Why an upstream sign-in did not produce a verified identity (for the page and the log)."""


@dataclass(frozen=True)
class Registration:
    """Ostiary as a client of one provider (OIDC Core §2: the relying party's registration)."""

    issuer: str
    client_id: str
    client_secret: str
    scope: list[str]
    redirect_uri: str


@dataclass(frozen=True)
class Started:
    url: str  # where the browser goes: the provider's authorization endpoint
    state: str
    nonce: str
    verifier: str


def start(upstreams: Upstreams, rp: Registration) -> Started:
    """The authorization request (OIDC Core §3.1.2.1) with state, nonce and a PKCE verifier."""
    endpoint = upstreams.discovery(rp.issuer).get("authorization_endpoint")
    if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
        raise SignInRefused("the provider's discovery document has no authorization endpoint")
    state, nonce, verifier = new_token(), new_token(), new_token() + new_token()
    # authlib's RFC 6749 §4.1.1 request builder, with RFC 7636 §4.2 S256 and OIDC's nonce.
    url = prepare_grant_uri(
        endpoint,
        rp.client_id,
        "code",
        redirect_uri=rp.redirect_uri,
        scope=" ".join(rp.scope),
        state=state,
        nonce=nonce,
        code_challenge=create_s256_code_challenge(verifier),
        code_challenge_method="S256",
    )
    return Started(url, state, nonce, verifier)


def finish(upstreams: Upstreams, rp: Registration, *, code: str, verifier: str, nonce: str) -> dict[str, Any]:
    """Redeem the code (OIDC Core §3.1.3) and return the verified ID token's claims."""
    endpoint = upstreams.discovery(rp.issuer).get("token_endpoint")
    if not isinstance(endpoint, str):
        raise SignInRefused("the provider's discovery document has no token endpoint")
    # authlib's httpx integration runs on httpx2, our guarded transport on httpx: the code is
    # redeemed through the guarded fetcher (RFC 6749 §4.1.3 with RFC 7636 §4.5 and HTTP Basic).
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": rp.redirect_uri, "code_verifier": verifier}
    credentials = (quote(rp.client_id, safe=""), quote(rp.client_secret, safe=""))  # RFC 6749 §2.3.1
    try:
        answer = upstreams.fetcher.post_form(endpoint, form, credentials)
        token = json.loads(answer.body)
    except (FetchError, ValueError):
        raise SignInRefused("the provider's token endpoint could not be used") from None
    if answer.status != 200 or not isinstance(token, dict):
        error = token.get("error") if isinstance(token, dict) else None
        raise SignInRefused(f"the provider refused the code ({str(error)[:50] if error else answer.status})")
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise SignInRefused("the provider sent no ID token")
    return verify_id_token(upstreams, rp.issuer, rp.client_id, id_token, nonce)


def verify_id_token(upstreams: Upstreams, issuer: str, client_id: str, id_token: str, nonce: str) -> dict[str, Any]:
    """OIDC Core §3.1.3.7: signature by the provider's keys, iss, aud (and azp), exp, iat, nonce."""
    try:
        header, _ = split_jwt(id_token)
    except ValueError:
        raise SignInRefused("the ID token is not a signed JWT") from None
    if header.get("alg") not in ID_TOKEN_ALGORITHMS:
        raise SignInRefused("the ID token's algorithm is not accepted")
    try:
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        claims: dict[str, Any] = jwt.decode(id_token, upstreams.keys(issuer, kid), algorithms=ID_TOKEN_ALGORITHMS).claims
    except (JoseError, ValueError, TypeError):
        raise SignInRefused("the ID token's signature is not valid") from None
    t = int(time.time())
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if claims.get("iss") != issuer:
        raise SignInRefused("the ID token is from another issuer")
    if client_id not in audiences or (len(audiences) > 1 and claims.get("azp") != client_id):
        raise SignInRefused("the ID token was issued to another client")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or exp < t - CLOCK_SKEW or not isinstance(iat, int) or iat > t + CLOCK_SKEW:
        raise SignInRefused("the ID token has expired or is not valid yet")
    if not isinstance(claims.get("nonce"), str) or not hmac.compare_digest(claims["nonce"], nonce):
        raise SignInRefused("the ID token's nonce does not match this sign-in")
    return claims
