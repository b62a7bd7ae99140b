"""CSRF protection for every HTML form: a signed double-submit token.

The browser holds a random value in an HttpOnly cookie; each form carries an HMAC of that value
bound to the browser session (if any). A cross-site page can neither read the cookie nor compute
the HMAC, and a token from one session is useless in another.
"""

from __future__ import annotations

import hmac

from app.security.secrets import Keyring, new_token

FIELD = "csrf_token"


def new_cookie_value() -> str:
    return new_token()


def token_for(keyring: Keyring, cookie_value: str, session_hash: str | None) -> str:
    return keyring.hash(f"csrf\x00{cookie_value}\x00{session_hash or ''}")


def is_valid(keyring: Keyring, cookie_value: str | None, session_hash: str | None, submitted: str | None) -> bool:
    if not cookie_value or not submitted:
        return False
    expected = keyring.hashes(f"csrf\x00{cookie_value}\x00{session_hash or ''}")
    return any(hmac.compare_digest(e, submitted) for e in expected)
