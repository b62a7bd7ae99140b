"""RFC 7636 PKCE as OAuth 2.1 requires it: a code_challenge with method S256 from every client,
public or confidential, and a matching code_verifier at /token.

Errors at /authorize come after the client and redirect URI are trusted, so they go back to the
client by redirect with `error`, `state` and `iss` (RFC 6749 4.1.2.1, RFC 9207 2).
"""

from __future__ import annotations

import pytest

from tests.support import (
    ISSUER,
    REDIRECT,
    authorize_params,
    exchange,
    obtain_code,
    pkce,
    query,
    registered_flow,
    signed_in_flow,
)

# Marked here, not only by conftest's collection hook: anyio re-creates items it finds unmarked
# at collection time and drops their parametrization.
pytestmark = pytest.mark.anyio

_, CHALLENGE = pkce()


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param(
            {"code_challenge": None, "code_challenge_method": None},
            id="OAuth 2.1 4.1.1 code_challenge REQUIRED: no PKCE at all",
        ),
        pytest.param({"code_challenge": None}, id="OAuth 2.1 4.1.1: method without challenge"),
        pytest.param({"code_challenge": ""}, id="OAuth 2.1 4.1.1: empty challenge"),
        pytest.param({"code_challenge_method": "plain"}, id="OAuth 2.1 4.1.1 / RFC 9700 2.1.1: plain refused"),
        pytest.param({"code_challenge_method": None}, id="RFC 7636 4.3: missing method means plain, refused"),
        pytest.param({"code_challenge_method": "s256"}, id="RFC 7636 4.2: method name is case-sensitive"),
        pytest.param({"code_challenge_method": "S512"}, id="RFC 7636 4.2: unknown method"),
        pytest.param({"code_challenge": "abc"}, id="RFC 7636 4.2: malformed challenge (too short)"),
        pytest.param({"code_challenge": CHALLENGE + "A"}, id="RFC 7636 4.2: malformed challenge (44 chars)"),
        pytest.param({"code_challenge": CHALLENGE[:42] + "="}, id="RFC 7636 4.2: malformed challenge (padding)"),
        pytest.param({"code_challenge": "+/" * 21 + "a"}, id="RFC 7636 4.2: malformed challenge (not base64url)"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_authorize_refuses_bad_pkce_by_redirect(client, runtime, overrides, method):
    """OAuth 2.1 4.1.1 / 4.1.2.1: invalid_request, redirected with state and iss (RFC 9207), at
    once: nobody is signed in, the request is refused before sign-in."""
    reg = await registered_flow(client, runtime)
    params = authorize_params(reg["client_id"], CHALLENGE, **overrides)
    if method == "GET":
        response = await client.get("/authorize", params=params)
    else:
        response = await client.post("/authorize", data=params)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    q = query(location)
    assert q["error"] == "invalid_request", q
    assert q["state"] == params["state"]
    assert q["iss"] == ISSUER
    assert "code" not in q


async def test_authorize_refuses_repeated_challenge(client, runtime):
    """RFC 6749 3.1: parameters MUST NOT be included more than once."""
    reg = await registered_flow(client, runtime)
    params = [*authorize_params(reg["client_id"], CHALLENGE).items(), ("code_challenge", pkce()[1])]
    response = await client.get("/authorize", params=params)
    assert response.status_code == 302
    q = query(response.headers["location"])
    assert q["error"] == "invalid_request" and q["iss"] == ISSUER and "state" in q


@pytest.mark.parametrize(
    "verifier, error",
    [
        pytest.param(None, "invalid_request", id="RFC 7636 4.5 / OAuth 2.1 4.1.3: missing code_verifier"),
        pytest.param("", "invalid_request", id="RFC 7636 4.5: empty code_verifier"),
        pytest.param("short", "invalid_request", id="RFC 7636 4.1: verifier under 43 characters"),
        pytest.param("a" * 129, "invalid_request", id="RFC 7636 4.1: verifier over 128 characters"),
        pytest.param(pkce()[0], "invalid_grant", id="RFC 7636 4.6: another verifier"),
        pytest.param("CHALLENGE", "invalid_grant", id="RFC 7636 4.6: the challenge itself (plain)"),
    ],
)
async def test_token_refuses_wrong_verifier(client, runtime, verifier, error):
    """RFC 7636 4.6: the server MUST verify BASE64URL(SHA256(code_verifier)) == code_challenge."""
    reg = await signed_in_flow(client, runtime)
    code, _, params = await obtain_code(client, reg["client_id"])
    if verifier == "CHALLENGE":
        verifier = params["code_challenge"]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": reg["client_id"]}
    if verifier is not None:
        data["code_verifier"] = verifier
    response = await client.post("/token", data=data)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error
    assert "access_token" not in response.json()


async def test_right_verifier_gets_tokens(client, runtime):
    """RFC 7636 4.6: the matching verifier gets the tokens."""
    reg = await signed_in_flow(client, runtime)
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    response = await exchange(client, reg["client_id"], code, verifier)
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


async def test_confidential_client_needs_pkce_at_authorize(client, runtime):
    """OAuth 2.1 4.1.1 / RFC 9700 2.1.1: PKCE for confidential clients too."""
    reg = await registered_flow(client, runtime, token_endpoint_auth_method="client_secret_basic")
    assert reg["client_secret"]
    response = await client.get("/authorize", params=authorize_params(reg["client_id"], CHALLENGE, code_challenge=None))
    assert response.status_code == 302
    q = query(response.headers["location"])
    assert q["error"] == "invalid_request" and q["iss"] == ISSUER


@pytest.mark.parametrize(
    "verifier, status, error",
    [
        pytest.param(None, 400, "invalid_request", id="OAuth 2.1 4.1.3: confidential client without verifier"),
        pytest.param("WRONG", 400, "invalid_grant", id="RFC 7636 4.6: confidential client, wrong verifier"),
        pytest.param("RIGHT", 200, None, id="confidential client with the verifier"),
    ],
)
async def test_confidential_client_needs_verifier_at_token(client, runtime, verifier, status, error):
    """OAuth 2.1 4.1.3: client authentication does not replace the code_verifier."""
    reg = await signed_in_flow(client, runtime, token_endpoint_auth_method="client_secret_basic")
    code, right, _ = await obtain_code(client, reg["client_id"])
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    if verifier is not None:
        data["code_verifier"] = right if verifier == "RIGHT" else pkce()[0]
    response = await client.post("/token", data=data, auth=(reg["client_id"], reg["client_secret"]))
    assert response.status_code == status, response.text
    if error:
        assert response.json()["error"] == error


async def test_metadata_advertises_s256_only(client, runtime):
    """RFC 8414 2 / MCP: code_challenge_methods_supported is ["S256"]."""
    doc = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert doc["code_challenge_methods_supported"] == ["S256"]
