"""Authorization codes and the token endpoint (RFC 6749 4.1, OAuth 2.1 4.1, RFC 9700 §4.5 on code injection):
single use with revocation of what a replayed code produced, expiry, binding to the client and
the redirect URI, storage as hashes only, no-store token responses, RFC 9207 `iss` on every
authorization redirect, and client authentication at /token."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from app.infra.db import Base
from tests.support import (
    ISSUER,
    REDIRECT,
    admin_client,
    audit_events,
    authorize,
    authorize_params,
    exchange,
    introspect,
    obtain_code,
    pkce,
    query,
    refresh,
    register,
    registered_flow,
    signed_in_flow,
    tokens_for,
)

pytestmark = pytest.mark.anyio


# -- single use (RFC 6749 4.1.2, 10.5; OAuth 2.1 4.1.3) -----------------------------------------


async def test_code_is_single_use_and_replay_revokes_its_tokens(client, runtime):
    """RFC 6749 4.1.2: "If an authorization code is used more than once, the authorization server
    MUST deny the request and SHOULD revoke (when possible) all tokens previously issued based on
    that authorization code." (also 10.5, OAuth 2.1 4.1.3)"""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    first = await exchange(client, reg["client_id"], code, verifier)
    assert first.status_code == 200
    tokens = first.json()
    assert (await introspect(client, tokens["access_token"], rs)).json()["active"] is True

    second = await exchange(client, reg["client_id"], code, verifier)
    assert second.status_code == 400
    assert second.json()["error"] == "invalid_grant"
    assert "access_token" not in second.json()

    assert (await introspect(client, tokens["access_token"], rs)).json() == {"active": False}
    assert (await introspect(client, tokens["refresh_token"], rs)).json() == {"active": False}
    again = await refresh(client, reg["client_id"], tokens["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    [event] = audit_events(runtime, "code.replayed")
    assert event.client_id == reg["client_id"]


async def test_code_replay_revokes_rotated_successors_too(client, runtime):
    """RFC 6749 10.5 / RFC 9700 4.5: everything issued from the code, rotations included."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    tokens = (await exchange(client, reg["client_id"], code, verifier)).json()
    rotated = (await refresh(client, reg["client_id"], tokens["refresh_token"])).json()
    assert (await exchange(client, reg["client_id"], code, verifier)).status_code == 400
    assert (await introspect(client, rotated["access_token"], rs)).json() == {"active": False}
    assert (await refresh(client, reg["client_id"], rotated["refresh_token"])).json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"code_verifier": pkce()[0]}, id="another PKCE verifier"),
        pytest.param({"code_verifier": None}, id="no PKCE verifier"),
        pytest.param({"redirect_uri": "http://127.0.0.1:9876/other"}, id="another redirect_uri"),
    ],
)
async def test_replay_without_proof_revokes_nothing(client, runtime, change):
    """OAuth 2.1 §4.1.3 / §7.5.3: a replay only counts once the request proves what a redemption
    needs (client, redirect_uri, PKCE verifier): a leaked code alone, sent with the public
    client's id, must not let anyone revoke the tokens the code's holder received."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    tokens = (await exchange(client, reg["client_id"], code, verifier)).json()
    attempt = await exchange(client, reg["client_id"], code, verifier, **change)
    assert attempt.status_code == 400
    assert attempt.json()["error"] in ("invalid_grant", "invalid_request")
    assert (await introspect(client, tokens["access_token"], rs)).json()["active"] is True
    assert (await refresh(client, reg["client_id"], tokens["refresh_token"])).status_code == 200
    assert audit_events(runtime, "code.replayed") == []


async def test_a_failed_redemption_does_not_use_the_code_up(client, runtime):
    """RFC 7636 §4.6: a wrong verifier is refused, and the holder of the right one still
    redeems the code (it is used only by a redemption that succeeds)."""
    reg = await signed_in_flow(client, runtime)
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    wrong = await exchange(client, reg["client_id"], code, pkce()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    assert (await exchange(client, reg["client_id"], code, verifier)).status_code == 200


async def test_replay_does_not_touch_other_codes(client, runtime):
    """RFC 6749 10.5: only what that code produced is revoked."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    await exchange(client, reg["client_id"], code, verifier)
    other = await tokens_for(client, reg["client_id"])
    await exchange(client, reg["client_id"], code, verifier)
    assert (await introspect(client, other["access_token"], rs)).json()["active"] is True
    assert (await refresh(client, reg["client_id"], other["refresh_token"])).status_code == 200


async def test_expired_code(client, runtime):
    """OAuth 2.1 4.1.2, docs/decisions.md#authorization-codes-live-60-seconds: codes live 60 s;
    an expired code is invalid_grant."""
    reg = await signed_in_flow(client, runtime)
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE authorization_codes SET expires_at = expires_at - 61"))
    response = await exchange(client, reg["client_id"], code, verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_code_lifetime_is_60_seconds(client, runtime):
    """60 s (docs/decisions.md#authorization-codes-live-60-seconds)."""
    reg = await signed_in_flow(client, runtime)
    await obtain_code(client, reg["client_id"])
    with runtime.engine.connect() as conn:
        created, expires = conn.execute(text("SELECT created_at, expires_at FROM authorization_codes")).one()
    assert expires - created == 60


@pytest.mark.parametrize(
    "code",
    [
        pytest.param("ostac_" + "A" * 43, id="unknown code"),
        pytest.param("", id="empty code"),
        pytest.param("x" * 5000, id="oversized code"),
    ],
)
async def test_unknown_code(client, runtime, code):
    """RFC 6749 5.2: a code the server did not issue is invalid_grant."""
    reg = await registered_flow(client, runtime)
    response = await exchange(client, reg["client_id"], code, pkce()[0])
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_grant", "invalid_request")


async def test_missing_code_is_invalid_request(client, runtime):
    """RFC 6749 4.1.3: code is REQUIRED."""
    reg = await registered_flow(client, runtime)
    response = await exchange(client, reg["client_id"], None, pkce()[0])
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"


async def test_code_of_another_client(client, runtime):
    """RFC 6749 4.1.3: ensure the code was issued to the client that presents it."""
    reg = await signed_in_flow(client, runtime)
    other = await register(client, client_name="Other")
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    response = await exchange(client, other["client_id"], code, verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    # the presenting client learned nothing and consumed nothing: the rightful client proceeds
    assert (await exchange(client, reg["client_id"], code, verifier)).status_code == 200


# -- redirect_uri at /token (RFC 6749 4.1.3, OAuth 2.1 4.1.3) ----------------------------------


@pytest.mark.parametrize(
    "sent, status",
    [
        pytest.param(REDIRECT, 200, id="identical"),
        pytest.param(None, 400, id="omitted though sent at /authorize"),
        pytest.param(REDIRECT + "/", 400, id="trailing slash"),
        pytest.param(REDIRECT.replace("9876", "9877"), 400, id="another loopback port (identical means identical)"),
        pytest.param(REDIRECT.replace("127.0.0.1", "localhost"), 400, id="localhost for 127.0.0.1"),
        pytest.param("https://evil.example/callback", 400, id="another URI"),
    ],
)
async def test_token_redirect_uri_must_be_identical(client, runtime, sent, status):
    """RFC 6749 4.1.3: redirect_uri REQUIRED if it was in the authorization request, and the
    values MUST be identical."""
    reg = await signed_in_flow(client, runtime)
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    response = await exchange(client, reg["client_id"], code, verifier, redirect_uri=sent)
    assert response.status_code == status, response.text
    if status == 400:
        assert response.json()["error"] == "invalid_grant"


# -- storage ----------------------------------------------------------------------------------------


async def test_codes_and_tokens_are_stored_only_as_hashes(client, runtime):
    """docs/decisions.md#bearer-secrets-are-stored-as-keyed-hmacs / RFC 6819
    5.1.4.1.3: no bearer secret in clear, anywhere in the database (codes, refresh tokens, client
    secrets, session ids)."""
    reg = await signed_in_flow(client, runtime, token_endpoint_auth_method="client_secret_post")
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    assert len(code.removeprefix("ostac_")) >= 43  # 256 bits, base64url
    response = await exchange(client, reg["client_id"], code, verifier, client_secret=reg["client_secret"])
    tokens = response.json()
    rotated = (await refresh(client, reg["client_id"], tokens["refresh_token"], client_secret=reg["client_secret"])).json()
    secrets = {
        "code": code,
        "refresh token": tokens["refresh_token"],
        "rotated refresh token": rotated["refresh_token"],
        "client secret": reg["client_secret"],
        "session cookie": next(v for k, v in client.cookies.items() if "session" in k),
    }
    dump = []
    with runtime.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            dump += [repr(tuple(row)) for row in conn.execute(table.select())]
    everything = "\n".join(dump)
    for name, value in secrets.items():
        assert value not in everything, f"{name} stored in clear"
    with runtime.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM authorization_codes")).scalar() == 1


# -- response headers (RFC 6749 5.1) -----------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["success", "error", "refresh"])
async def test_token_responses_are_not_cached(client, runtime, outcome):
    """RFC 6749 5.1: Cache-Control: no-store and Pragma: no-cache (errors too, 5.2)."""
    reg = await signed_in_flow(client, runtime)
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    if outcome == "error":
        response = await exchange(client, reg["client_id"], code, pkce()[0])
        assert response.status_code == 400
    else:
        response = await exchange(client, reg["client_id"], code, verifier)
        if outcome == "refresh":
            response = await refresh(client, reg["client_id"], response.json()["refresh_token"])
        assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["content-type"].startswith("application/json")


async def test_token_response_fields(client, runtime):
    """RFC 6749 5.1 / OAuth 2.1 3.2.3: access_token, token_type, expires_in, scope, refresh_token."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], scope="mcp:read")
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and body["expires_in"] > 0
    assert body["scope"] == "mcp:read"
    assert body["access_token"].count(".") == 2
    assert body["refresh_token"].startswith("ostrt_")


# -- iss on every authorization redirect (RFC 9207 2) ------------------------------------------------


@pytest.mark.parametrize(
    "change, expected",
    [
        pytest.param({}, "code", id="success"),
        pytest.param({"scope": "nope"}, "invalid_scope", id="invalid_scope"),
        pytest.param({"resource": "https://nope.example/mcp"}, "invalid_target", id="invalid_target"),
        pytest.param({"code_challenge": None}, "invalid_request", id="invalid_request (PKCE)"),
        pytest.param({"response_type": "token"}, "unsupported_response_type", id="implicit grant (OAuth 2.1 removed it)"),
        pytest.param({"response_type": None}, "invalid_request", id="missing response_type (RFC 6749 4.1.2.1)"),
        pytest.param({"response_type": 'code"'}, "unsupported_response_type", id="response_type with a quote"),
        pytest.param({"prompt": "none", "scope": "mcp:write"}, "consent_required", id="consent_required"),
        pytest.param({"decision": "deny"}, "access_denied", id="access_denied"),
    ],
)
async def test_every_authorization_redirect_carries_iss(client, runtime, change, expected):
    """RFC 9207 2: "iss" in every authorization response, success or error, with state."""
    reg = await signed_in_flow(client, runtime)
    change = dict(change)
    decision = change.pop("decision", "allow")
    params = authorize_params(reg["client_id"], pkce()[1], **change)
    params = {k: v for k, v in params.items() if v is not None}
    if "response_type" in change and change["response_type"] is None:
        params.pop("response_type", None)
    response = await authorize(client, params, decision=decision)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(REDIRECT + "?")
    q = query(location)
    assert q["iss"] == ISSUER
    assert q["state"] == params["state"]
    assert (q.get("error") or ("code" if "code" in q else None)) == expected


async def test_issuer_in_metadata_matches_iss(client, runtime):
    """RFC 9207 3 / RFC 8414: the metadata advertises the parameter and the same issuer."""
    doc = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["issuer"] == ISSUER


# -- client authentication at /token (RFC 6749 2.3, 3.2.1; OAuth 2.1 2.4) -----------------------------


@pytest.mark.parametrize(
    "auth",
    [
        pytest.param("body", id="unknown client_id in the body"),
        pytest.param("basic", id="unknown client in HTTP Basic"),
    ],
)
async def test_unknown_client_at_token_is_401(client, runtime, auth):
    """RFC 6749 5.2: invalid_client with 401 (MCP clients re-register on it)."""
    await registered_flow(client, runtime)
    data = {"grant_type": "authorization_code", "code": "ostac_x", "code_verifier": pkce()[0], "redirect_uri": REDIRECT}
    if auth == "body":
        response = await client.post("/token", data={**data, "client_id": "no-such-client"})
    else:
        response = await client.post("/token", data=data, auth=("no-such-client", "secret"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert "www-authenticate" in response.headers


@pytest.mark.parametrize(
    "registered, used, right_secret, status",
    [
        pytest.param("client_secret_basic", "basic", True, 200, id="client_secret_basic"),
        pytest.param("client_secret_post", "post", True, 200, id="client_secret_post"),
        pytest.param("client_secret_basic", "basic", False, 401, id="basic, wrong secret"),
        pytest.param("client_secret_post", "post", False, 401, id="post, wrong secret"),
        pytest.param("client_secret_basic", "none", None, 401, id="confidential client without its secret"),
        pytest.param("client_secret_basic", "post", True, 401, id="another method than registered"),
    ],
)
async def test_confidential_client_authentication(client, runtime, registered, used, right_secret, status):
    """RFC 6749 2.3.1 / OAuth 2.1 2.4.1: confidential clients authenticate at /token; a failure is
    401 invalid_client."""
    reg = await signed_in_flow(client, runtime, token_endpoint_auth_method=registered)
    secret = reg["client_secret"] if right_secret else "ostcs_wrong"
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT}
    if used == "basic":
        response = await client.post("/token", data=data, auth=(reg["client_id"], secret))
    elif used == "post":
        response = await client.post("/token", data={**data, "client_id": reg["client_id"], "client_secret": secret})
    else:
        response = await client.post("/token", data={**data, "client_id": reg["client_id"]})
    assert response.status_code == status, response.text
    if status == 401:
        assert response.json()["error"] == "invalid_client"


async def test_public_client_authenticates_with_client_id_only(client, runtime):
    """OAuth 2.1 2.4 / MCP: public clients use token_endpoint_auth_method none."""
    reg = await signed_in_flow(client, runtime)
    assert reg["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in reg
    await tokens_for(client, reg["client_id"])


@pytest.mark.parametrize(
    "grant_type",
    [
        pytest.param("password", id="password (OAuth 2.1 removed it)"),
        pytest.param("implicit", id="not a grant type"),
    ],
)
async def test_unsupported_grant_type(client, runtime, grant_type):
    """RFC 6749 5.2: unsupported_grant_type."""
    reg = await registered_flow(client, runtime)
    response = await client.post("/token", data={"grant_type": grant_type, "client_id": reg["client_id"]})
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"
