"""JWTs we verify but did not sign (client assertions, ID-JAGs, upstream ID tokens): splitting
one before its signature is checked, and turning a published JWK Set into public keys."""

from __future__ import annotations

import base64
import json
from typing import Any

from joserfc.jwk import KeySet

# Asymmetric algorithms only: `none` and the HMAC family (a shared secret) are never accepted
# for a JWT someone else signed (RFC 8725 §3.1).
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "k")  # only public keys verify


def split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a JWS compact JWT, before the signature is checked: they name
    whose keys verify it. Nothing here is trusted until jwt.decode has verified the signature.
    Raises ValueError when it is not a JWS with JSON objects in both parts."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a signed JWT")
    try:
        header, claims = (json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in parts[:2])
    except (ValueError, TypeError):
        raise ValueError("not a signed JWT") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ValueError("not a signed JWT")
    return header, claims


def public_key_set(document: Any) -> KeySet:
    """The public keys of a JWK Set (RFC 7517 §5), private members dropped. Raises ValueError
    when it is not a usable JWK Set."""
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list):
        raise ValueError("not a JWK Set")
    public: Any = {"keys": [{k: v for k, v in key.items() if k not in PRIVATE_MEMBERS} for key in keys if isinstance(key, dict)]}
    try:
        return KeySet.import_key_set(public)
    except Exception as exc:
        raise ValueError("unusable keys") from exc


def has_kid(document: Any, kid: str) -> bool:
    keys = document.get("keys") if isinstance(document, dict) else None
    return isinstance(keys, list) and any(isinstance(k, dict) and k.get("kid") == kid for k in keys)
