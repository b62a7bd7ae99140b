"""PKCE (RFC 7636) as OAuth 2.1 requires it: for every client, S256 only.

authlib's CodeChallenge(required=True) still accepts a missing challenge at /authorize, accepts
`plain`, and lets a confidential client skip the verifier at /token; this subclass does not.
"""

from __future__ import annotations

import re

from authlib.oauth2.rfc6749 import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7636.challenge import CODE_VERIFIER_PATTERN, compare_s256_code_challenge

from app.oauth.authorization_code import AuthorizationCodeGrant

# RFC 7636 §4.2: BASE64URL(SHA256(verifier)) is always 43 characters.
S256_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def challenge_problem(challenge: str | None, method: str | None) -> str | None:
    """Why an authorization request's PKCE parameters are not acceptable, or None. (Repeated
    parameters are refused after this, in AuthorizationCodeGrant.validate_authorization_request.)"""
    # OAuth 2.1 §4.1.1: "code_challenge: REQUIRED"; RFC 9700 §2.1.1: PKCE for every client.
    if not challenge:
        return "Missing 'code_challenge': PKCE with S256 is required."
    # OAuth 2.1 §4.1.1: the method defaults to plain, which this server does not support.
    if method != "S256":
        return "'code_challenge_method' must be S256."
    if not S256_CHALLENGE.match(challenge):
        return "Invalid 'code_challenge'."
    return None


def verifier_problem(verifier: str | None, challenge: str) -> tuple[str, str] | None:
    """(error, description) if the token request's verifier does not prove the challenge."""
    if not verifier:
        # RFC 7636 §4.5 / OAuth 2.1 §4.1.3: required whenever a challenge was sent (always).
        return "invalid_request", "Missing 'code_verifier'."
    if not CODE_VERIFIER_PATTERN.match(verifier):
        return "invalid_request", "Invalid 'code_verifier'."
    # RFC 7636 §4.6: BASE64URL-ENCODE(SHA256(ASCII(code_verifier))) == code_challenge.
    if not compare_s256_code_challenge(verifier, challenge):
        return "invalid_grant", "The code_verifier does not match the code_challenge."
    return None


class S256CodeChallenge(CodeChallenge):
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    CODE_CHALLENGE_METHODS = {"S256": compare_s256_code_challenge}

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: AuthorizationCodeGrant, redirect_uri: str) -> None:
        payload = grant.request.payload
        problem = challenge_problem(payload.data.get("code_challenge"), payload.data.get("code_challenge_method"))
        if problem:
            raise InvalidRequestError(problem, redirect_uri=redirect_uri)

    def validate_code_verifier(self, grant: AuthorizationCodeGrant, result: object) -> None:
        # Checked for every client, confidential ones included (OAuth 2.1 §4.1.3).
        code = grant.request.authorization_code
        problem = verifier_problem(grant.request.form.get("code_verifier"), code.code_challenge)
        if problem:
            error, description = problem
            raise (InvalidGrantError if error == "invalid_grant" else InvalidRequestError)(description)
