"""DPoP: sender-constrained tokens (RFC 9449).

A client that sends a `DPoP` proof to the token endpoint gets an access token bound to the
proof's key (`cnf.jkt`, RFC 9449 §6.1) and `token_type` `DPoP` (§5.1); a public client's refresh
token is bound to the same key (§5), so a stolen refresh token is useless without the private key.
Every check of §4.3 is here, as pure functions, except the one that needs the database (a `jti`
is used once: app/stores/clients.use_assertion, shared by every replica).

Server nonces (§8) are stateless: an HMAC of the current five-minute slot under the keyring, so
every replica issues and accepts the same nonces without sharing state; the one of the previous
slot is still accepted (docs/decisions.md#dpop-nonces-are-stateless).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import InvalidGrantError, OAuth2Error
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry

from app.infra.db import now
from app.oauth.jwts import ALGORITHMS, PRIVATE_MEMBERS
from app.stores import clients as store

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from app.models import Client
    from app.security.secrets import Keyring

HEADER = "DPoP"
TYP = "dpop+jwt"  # RFC 9449 §4.2
MAX_PROOF = 8192
MAX_AGE = 300  # seconds a proof is accepted after its iat (RFC 9449 §11.1: a short window)
CLOCK_SKEW = 60  # seconds a proof's iat may be ahead of our clock
NONCE_SLOT = 300

# A proof's header carries its public key: an RSA `jwk` outgrows joserfc's default 512-byte
# header cap. Unknown header parameters are ignored (RFC 7515 §4), as a client may add `kid`.
_REGISTRY = jws.JWSRegistry(algorithms=ALGORITHMS, strict_check_header=False)
_REGISTRY.max_header_length = 4096


class InvalidDPoPProofError(OAuth2Error):
    """RFC 9449 §5 / §7.1: the proof is missing where required, malformed or fails a check."""

    error = "invalid_dpop_proof"


class UseDPoPNonceError(OAuth2Error):
    """RFC 9449 §8: the proof must carry the nonce given in the `DPoP-Nonce` header."""

    error = "use_dpop_nonce"

    def __init__(self, nonce: str):
        super().__init__("A DPoP proof must carry the nonce this server issued.")
        self.nonce = nonce

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), ("DPoP-Nonce", self.nonce)]


class ProofError(ValueError):
    """A proof that fails a check of RFC 9449 §4.3; the message says which, for the client."""


@dataclass(frozen=True)
class Proof:
    jkt: str  # RFC 7638 thumbprint of the proof's public key (RFC 9449 §6.1)
    jti: str
    iat: int
    nonce: str | None


def thumbprint_of_access_token(token: str) -> str:
    """RFC 9449 §4.2 `ath`: base64url of the SHA-256 of the access token's ASCII value."""
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode("ascii", "replace")).digest()).rstrip(b"=").decode()


def _normalized(uri: str) -> tuple[str, str, int | None, str] | None:
    # RFC 9449 §4.3 (9): htu matches the request URI ignoring query and fragment, after the
    # syntax-based and scheme-based normalisation of RFC 3986 §6.2.2 and §6.2.3.
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme not in ("http", "https") or not host:
        return None
    if port == {"http": 80, "https": 443}[scheme]:
        port = None
    return scheme, host, port, parts.path or "/"


def same_uri(htu: str, request_url: str) -> bool:
    a, b = _normalized(htu), _normalized(request_url)
    return a is not None and a == b


def _segments(proof: str) -> dict[str, Any]:
    parts = proof.split(".")
    if len(parts) != 3:
        raise ProofError("The DPoP proof is not a signed JWT.")
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (ValueError, TypeError):
        raise ProofError("The DPoP proof is not a signed JWT.") from None
    if not isinstance(header, dict):
        raise ProofError("The DPoP proof is not a signed JWT.")
    return header


def verify(proof: str, *, method: str, url: str, at: int, access_token: str | None = None) -> Proof:
    """The checks of RFC 9449 §4.3 that need no storage, each numbered as there. Raises
    ProofError. The caller checks the nonce (§8) and that the jti is new (§11.1)."""
    if not isinstance(proof, str) or not proof or len(proof) > MAX_PROOF:
        raise ProofError("The DPoP proof is missing or too long.")
    header = _segments(proof)  # (2) a well-formed JWT
    if header.get("typ") != TYP:  # (4)
        raise ProofError("The DPoP proof's 'typ' must be 'dpop+jwt'.")
    if header.get("alg") not in ALGORITHMS:  # (5) asymmetric, never none or a MAC
        raise ProofError("The DPoP proof's algorithm is not accepted.")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or any(member in jwk for member in PRIVATE_MEMBERS):  # (7)
        raise ProofError("The DPoP proof's 'jwk' must be a public key.")
    try:
        key = JWKRegistry.import_key(jwk)
        payload = jws.deserialize_compact(proof, key, registry=_REGISTRY).payload  # (6)
        claims = json.loads(payload)
    except (JoseError, ValueError, TypeError, KeyError):
        raise ProofError("The DPoP proof's signature does not verify with its 'jwk'.") from None
    if not isinstance(claims, dict):
        raise ProofError("The DPoP proof's claims are not a JSON object.")
    jti, htm, htu, iat = (claims.get(name) for name in ("jti", "htm", "htu", "iat"))
    if not isinstance(jti, str) or not jti or len(jti) > 256:  # (3)
        raise ProofError("The DPoP proof needs a 'jti'.")
    if htm != method:  # (8)
        raise ProofError("The DPoP proof's 'htm' is not the method of this request.")
    if not isinstance(htu, str) or not same_uri(htu, url):  # (9)
        raise ProofError("The DPoP proof's 'htu' is not the URI of this request.")
    if not isinstance(iat, int) or isinstance(iat, bool) or not at - MAX_AGE <= iat <= at + CLOCK_SKEW:  # (11)
        raise ProofError("The DPoP proof's 'iat' is missing or not recent.")
    if access_token is not None:  # (12) a proof that comes with an access token names it
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(ath, thumbprint_of_access_token(access_token)):
            raise ProofError("The DPoP proof's 'ath' does not match the access token.")
    nonce = claims.get("nonce")
    return Proof(key.thumbprint(), jti, iat, nonce if isinstance(nonce, str) else None)


# -- server nonces (RFC 9449 §8) ------------------------------------------------------------


def nonce_for(keyring: Keyring, at: int) -> str:
    return keyring.hash(f"dpop-nonce {at // NONCE_SLOT}")[:32]


def nonce_is_fresh(keyring: Keyring, nonce: str | None, at: int) -> bool:
    if not isinstance(nonce, str) or len(nonce) != 32:
        return False
    slot = at // NONCE_SLOT
    candidates = (h[:32] for s in (slot, slot - 1) for h in keyring.hashes(f"dpop-nonce {s}"))
    return any(hmac.compare_digest(nonce, c) for c in candidates)


# -- at the token endpoint (RFC 9449 §5) ----------------------------------------------------


def token_request_proof(
    db: Session,
    keyring: Keyring,
    values: list[str],
    *,
    url: str,
    require_nonce: bool,
) -> Proof | None:
    """The proof of a token request, None without one. Raises InvalidDPoPProofError or
    UseDPoPNonceError."""
    if not values:
        return None
    if len(values) > 1:  # §4.3 (1): not more than one DPoP header
        raise InvalidDPoPProofError("More than one DPoP header.")
    t = now()
    try:
        proof = verify(values[0], method="POST", url=url, at=t)
    except ProofError as exc:
        raise InvalidDPoPProofError(str(exc)) from None
    if require_nonce and not nonce_is_fresh(keyring, proof.nonce, t):  # §4.3 (10), §8
        raise UseDPoPNonceError(nonce_for(keyring, t))
    # §11.1: a proof is used once; its jti is remembered (as an HMAC) while its iat is accepted.
    if not store.use_assertion(db, keyring.hash(f"dpop {proof.jkt} {proof.jti}"), proof.iat + MAX_AGE + CLOCK_SKEW):
        raise InvalidDPoPProofError("The DPoP proof was already used.")
    return proof


def requires_proof(client: Client, *, public_clients_must: bool) -> bool:
    """RFC 9449 §5.2: a client registered with `dpop_bound_access_tokens` true must always send a
    proof; the server may ask it of every public client."""
    if (client.client_metadata or {}).get("dpop_bound_access_tokens") is True:
        return True
    return public_clients_must and client.token_endpoint_auth_method == "none"


def check_refresh_binding(bound_jkt: str | None, proof: Proof | None) -> None:
    """RFC 9449 §5: a refresh token bound to a key is used only with a proof of that key."""
    if bound_jkt is None:
        return
    if proof is None:
        raise InvalidDPoPProofError("This refresh token is bound to a DPoP key: send a DPoP proof.")
    if not hmac.compare_digest(proof.jkt, bound_jkt):
        raise InvalidGrantError("The refresh token is bound to another DPoP key.")


def refresh_jkt(proof: Proof | None, client_is_public: bool) -> str | None:
    """RFC 9449 §5: a refresh token issued to a public client with a proof is bound to its key;
    a confidential client's is not (it is already bound to the client's credentials)."""
    return proof.jkt if proof is not None and client_is_public else None


# -- at a protected resource of ours (RFC 9449 §7) ---------------------------------------


def resource_request_problem(
    db: Session, keyring: Keyring, *, scheme: str, token: str, claims: dict[str, Any], values: list[str], method: str, url: str
) -> str | None:
    """Why a request may not use this (valid) access token, None if it may. RFC 9449 §7.1: a
    DPoP-bound token comes with the `DPoP` scheme and a proof of its key naming it (`ath`); it is
    never accepted as a bearer token."""
    cnf = claims.get("cnf")
    bound = cnf.get("jkt") if isinstance(cnf, dict) else None
    if scheme == "bearer":
        return "This access token is DPoP-bound: send it with the DPoP scheme." if bound else None
    if not isinstance(bound, str):
        return "This access token is not DPoP-bound: send it with the Bearer scheme."
    if len(values) != 1:
        return "Send exactly one DPoP proof with a DPoP-bound access token."
    t = now()
    try:
        proof = verify(values[0], method=method, url=url, at=t, access_token=token)
    except ProofError as exc:
        return str(exc)
    if not hmac.compare_digest(proof.jkt, bound):
        return "The DPoP proof is not signed with the key this access token is bound to."
    if not store.use_assertion(db, keyring.hash(f"dpop {proof.jkt} {proof.jti}"), proof.iat + MAX_AGE + CLOCK_SKEW):
        return "The DPoP proof was already used."
    return None
