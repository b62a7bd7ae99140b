"""Reading back our own RFC 9068 access tokens (for revocation, introspection, userinfo)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from joserfc import jwt
from joserfc.errors import JoseError

from app.infra.db import now

if TYPE_CHECKING:
    from app.services.keys import KeyCache


def decode(keys: KeyCache, issuer: str, token: str) -> dict[str, Any] | None:
    """The claims of an access token we signed and that has not expired, or None."""
    if not isinstance(token, str) or token.count(".") != 2 or len(token) > 8192:
        return None
    snap = keys.snapshot()
    try:
        decoded = jwt.decode(token, snap.keyset, algorithms=["RS256", "ES256"])
    except (JoseError, ValueError, KeyError):
        return None
    if decoded.header.get("typ") != "at+jwt":  # RFC 9068 §4: never accept another JWT type
        return None
    claims = decoded.claims
    if claims.get("iss") != issuer or not isinstance(claims.get("exp"), int) or claims["exp"] <= now():
        return None
    if not isinstance(claims.get("jti"), str):
        return None
    return claims
