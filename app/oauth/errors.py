"""The protocol's errors: authlib's OAuth2Error hierarchy, the few errors it lacks, and how an
error reaches the client (RFC 6749 §4.1.2.1 redirect, §5.2 JSON body)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc6749 import OAuth2Error, UnsupportedGrantTypeError

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class InvalidTargetError(OAuth2Error):
    """RFC 8707 §2: the requested resource is invalid, unknown or malformed."""

    error = "invalid_target"


class LoginRequiredError(OAuth2Error):
    error = "login_required"  # OIDC Core §3.1.2.6


class ConsentRequiredError(OAuth2Error):
    error = "consent_required"  # OIDC Core §3.1.2.6


class RequestNotSupportedError(OAuth2Error):
    error = "request_not_supported"  # OIDC Core §3.1.2.6, §6: no request objects here


class RequestUriNotSupportedError(OAuth2Error):
    error = "request_uri_not_supported"  # OIDC Core §3.1.2.6, §6


class MissingGrantType(UnsupportedGrantTypeError):
    """RFC 6749 §5.2: a request without grant_type is invalid_request (a missing required
    parameter), not unsupported_grant_type. A subclass, because authlib's token endpoint turns
    only UnsupportedGrantTypeError from get_token_grant into an error response."""

    error = "invalid_request"

    def get_error_description(self) -> str:
        return "Missing 'grant_type'."


def safe_description(text: str) -> str:
    """RFC 6749 §5.2: error_description is limited to %x20-21 / %x23-5B / %x5D-7E."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in text)[:300]


def add_query(uri: str, params: list[tuple[str, str]]) -> str:
    sep = "&" if "?" in uri else "?"
    return uri + sep + urlencode(params)


def error_redirect_url(error: OAuth2Error, issuer: str) -> str:
    """The redirect for an error once the redirect URI is trusted (RFC 6749 §4.1.2.1): `error`,
    `error_description`, `state` and, per RFC 9207 §2, `iss`."""
    assert error.redirect_uri is not None
    params = [(k, v) for k, v in error.get_body() if v is not None] + [("iss", issuer)]
    return add_query(error.redirect_uri, params)


def dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def error_body(error: str, description: str) -> bytes:
    """An RFC 6749 §5.2 error body; the description must already be within its characters."""
    return dumps({"error": error, "error_description": safe_description(description)})
