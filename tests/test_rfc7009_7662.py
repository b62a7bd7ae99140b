"""Token revocation (RFC 7009) and introspection (RFC 7662).

Revoking a refresh token revokes its family; revoking an access token (a JWT) records its jti so
introspection reports it inactive. Introspection is for resource servers authenticated as
confidential clients: a client may introspect its own tokens, those issued for the MCP server
whose credentials it is, and any token only if an admin allowed it (RFC 7662 §4;
docs/decisions.md#introspection-is-for-the-tokens-mcp-server)."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import text

from app.infra.db import now
from tests.support import (
    ISSUER,
    RESOURCE,
    admin_client,
    audit_events,
    create_resource,
    introspect,
    refresh,
    register,
    signed_in_flow,
    tokens_for,
    verify_jwt,
)

pytestmark = pytest.mark.anyio


async def revoke(client, token: str, client_id: str, secret: str | None = None, **extra):
    data = {"token": token, **extra}
    if secret is None:
        return await client.post("/revoke", data={**data, "client_id": client_id})
    return await client.post("/revoke", data=data, auth=(client_id, secret))


# -- revocation (RFC 7009) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "hint", [None, "refresh_token", "access_token"], ids=["no hint", "right hint", "wrong hint (RFC 7009 2.1)"]
)
async def test_revoking_a_refresh_token_revokes_the_family(client, runtime, hint):
    """RFC 7009 2.1 / 2.2: the refresh token, its family (OAuth 2.1 4.3.1) and the access tokens
    issued with it are revoked; the response is 200."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    first = await tokens_for(client, reg["client_id"])
    second = (await refresh(client, reg["client_id"], first["refresh_token"])).json()
    extra = {"token_type_hint": hint} if hint else {}
    response = await revoke(client, second["refresh_token"], reg["client_id"], **extra)
    assert response.status_code == 200
    again = await refresh(client, reg["client_id"], second["refresh_token"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    for token in (second["refresh_token"], second["access_token"], first["access_token"]):
        assert (await introspect(client, token, rs)).json() == {"active": False}
    [event] = audit_events(runtime, "token.revoked")
    assert event.details["kind"] == "refresh_token"


async def test_revoking_an_old_family_member_revokes_the_newest(client, runtime):
    """RFC 7009 2.1: revoke "the respective refresh token and related tokens" (the family)."""
    reg = await signed_in_flow(client, runtime)
    first = await tokens_for(client, reg["client_id"])
    second = (await refresh(client, reg["client_id"], first["refresh_token"])).json()
    assert (await revoke(client, first["refresh_token"], reg["client_id"])).status_code == 200
    assert (await refresh(client, reg["client_id"], second["refresh_token"])).status_code == 400


async def test_revoking_an_access_token(client, runtime):
    """RFC 7009 2: an access token can be revoked; introspection then says inactive (RFC 7662
    2.2) and /userinfo refuses it."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    body = await tokens_for(client, reg["client_id"], scope="openid mcp:read")
    assert (await introspect(client, body["access_token"], rs)).json()["active"] is True
    response = await revoke(client, body["access_token"], reg["client_id"], token_type_hint="access_token")
    assert response.status_code == 200
    assert (await introspect(client, body["access_token"], rs)).json() == {"active": False}
    userinfo = await client.get("/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert userinfo.status_code == 401


async def test_revoking_another_clients_token_does_nothing(client, runtime):
    """RFC 7009 2.1: the server verifies the token was issued to the requesting client; 2.2: an
    invalid token still gets 200."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    other = await register(client, client_name="Other")
    body = await tokens_for(client, reg["client_id"])
    for token in (body["refresh_token"], body["access_token"]):
        assert (await revoke(client, token, other["client_id"])).status_code == 200
        assert (await introspect(client, token, rs)).json()["active"] is True
    assert (await refresh(client, reg["client_id"], body["refresh_token"])).status_code == 200


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("ostrt_" + "A" * 43, id="unknown refresh-like token"),
        pytest.param("a.b.c", id="not a JWT of ours"),
        pytest.param("x" * 10000, id="oversized"),
    ],
)
async def test_revoking_an_unknown_token_is_200(client, runtime, token):
    """RFC 7009 2.2: "invalid tokens do not cause an error response"."""
    reg = await signed_in_flow(client, runtime)
    assert (await revoke(client, token, reg["client_id"])).status_code == 200


async def test_public_client_revokes_with_client_id(client, runtime):
    """OAuth 2.1 2.4 / RFC 7009 2.1: a public client identifies itself with client_id."""
    reg = await signed_in_flow(client, runtime)
    assert reg["token_endpoint_auth_method"] == "none"
    body = await tokens_for(client, reg["client_id"])
    assert (await revoke(client, body["refresh_token"], reg["client_id"])).status_code == 200
    assert (await refresh(client, reg["client_id"], body["refresh_token"])).status_code == 400


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("no client", id="no client identification"),
        pytest.param("unknown client", id="unknown client_id"),
        pytest.param("confidential without secret", id="confidential client without its secret"),
        pytest.param("wrong secret", id="confidential client, wrong secret"),
    ],
)
async def test_revocation_requires_client_authentication(client, runtime, how):
    """RFC 7009 2.1: the client authenticates as at the token endpoint; failure is invalid_client
    (401, RFC 6749 5.2), and nothing is revoked."""
    reg = await signed_in_flow(client, runtime, token_endpoint_auth_method="client_secret_basic")
    body = await tokens_for(client, reg["client_id"], auth=(reg["client_id"], reg["client_secret"]))
    data = {"token": body["refresh_token"]}
    if how == "no client":
        response = await client.post("/revoke", data=data)
    elif how == "unknown client":
        response = await client.post("/revoke", data={**data, "client_id": "no-such-client"})
    elif how == "confidential without secret":
        response = await client.post("/revoke", data={**data, "client_id": reg["client_id"]})
    else:
        response = await client.post("/revoke", data=data, auth=(reg["client_id"], "ostcs_wrong"))
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    rotated = await client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        auth=(reg["client_id"], reg["client_secret"]),
    )
    assert rotated.status_code == 200, rotated.text


async def test_confidential_client_revokes_with_its_secret(client, runtime):
    """RFC 7009 2.1: a confidential client authenticates as at /token."""
    reg = await signed_in_flow(client, runtime, token_endpoint_auth_method="client_secret_basic")
    body = await tokens_for(client, reg["client_id"], auth=(reg["client_id"], reg["client_secret"]))
    assert (await revoke(client, body["refresh_token"], reg["client_id"], reg["client_secret"])).status_code == 200
    response = await client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"]},
        auth=(reg["client_id"], reg["client_secret"]),
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


async def test_revocation_without_token_is_invalid_request(client, runtime):
    """RFC 7009 2.1: token is REQUIRED."""
    reg = await signed_in_flow(client, runtime)
    response = await client.post("/revoke", data={"client_id": reg["client_id"]})
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


# -- introspection (RFC 7662) -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("none", id="no authentication"),
        pytest.param("public", id="a public client (client_id only)"),
        pytest.param("wrong secret", id="wrong secret"),
        pytest.param("unknown", id="unknown client"),
    ],
)
async def test_introspection_requires_a_confidential_client(client, runtime, how):
    """RFC 7662 2.1 / 4: the caller MUST be authorized (here: confidential client credentials);
    otherwise 401 invalid_client, and nothing about the token is revealed."""
    reg = await signed_in_flow(client, runtime)
    rs_id, _ = admin_client(runtime)
    body = await tokens_for(client, reg["client_id"])
    data = {"token": body["access_token"]}
    if how == "none":
        response = await client.post("/introspect", data=data)
    elif how == "public":
        response = await client.post("/introspect", data={**data, "client_id": reg["client_id"]})
    elif how == "wrong secret":
        response = await client.post("/introspect", data=data, auth=(rs_id, "ostcs_wrong"))
    else:
        response = await client.post("/introspect", data=data, auth=("no-such-client", "secret"))
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert "active" not in response.json()


async def test_introspecting_a_live_access_token(client, runtime):
    """RFC 7662 2.2: active true with the token's claims (RFC 9068 claims)."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    body = await tokens_for(client, reg["client_id"], scope="mcp:read mcp:write")
    response = await introspect(client, body["access_token"], rs)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    info = response.json()
    assert info["active"] is True
    assert info["client_id"] == reg["client_id"]
    assert info["scope"] == "mcp:read mcp:write"
    assert info["aud"] == RESOURCE
    assert info["iss"] == ISSUER
    assert info["username"] == "alice"
    assert info["token_type"] == "Bearer"
    assert info["sub"] and info["jti"]
    assert info["iat"] < info["exp"]


async def test_introspecting_a_live_refresh_token(client, runtime):
    """RFC 7662 2.2: refresh tokens can be introspected too."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    body = await tokens_for(client, reg["client_id"], scope="mcp:read")
    info = (await introspect(client, body["refresh_token"], rs, token_type_hint="refresh_token")).json()
    assert info["active"] is True
    assert info["client_id"] == reg["client_id"] and info["scope"] == "mcp:read"
    assert info["sub"] and info["exp"] > now()


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("unknown", id="unknown token"),
        pytest.param("expired access token", id="expired access token"),
        pytest.param("expired refresh token", id="expired refresh token"),
        pytest.param("revoked access token", id="revoked access token"),
        pytest.param("revoked refresh token", id="revoked refresh token"),
        pytest.param("rotated refresh token", id="rotated (used) refresh token"),
        pytest.param("id token", id="an id_token is no access token (RFC 9068 4)"),
        pytest.param("foreign JWT", id="a JWT signed by someone else"),
        pytest.param("disabled user", id="the user was disabled"),
    ],
)
async def test_introspection_reports_inactive(client, runtime, case):
    """RFC 7662 2.2: active false (and nothing else) for a token that is not active."""
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    body = await tokens_for(client, reg["client_id"], scope="openid mcp:read")
    token = body["access_token"]
    if case == "unknown":
        token = "ostrt_" + "B" * 43
    elif case == "expired access token":
        claims = dict((await verify_jwt(client, token)).claims)
        claims.update(iat=now() - 700, exp=now() - 100)
        token = runtime.keys.sign(claims, typ="at+jwt")
    elif case == "expired refresh token":
        with runtime.engine.begin() as conn:
            conn.execute(text("UPDATE refresh_tokens SET expires_at = 1"))
        token = body["refresh_token"]
    elif case == "revoked access token":
        await revoke(client, token, reg["client_id"])
    elif case == "revoked refresh token":
        await revoke(client, body["refresh_token"], reg["client_id"])
        token = body["refresh_token"]
    elif case == "rotated refresh token":
        await refresh(client, reg["client_id"], body["refresh_token"])
        token = body["refresh_token"]
    elif case == "id token":
        token = body["id_token"]
    elif case == "foreign JWT":
        key = RSAKey.generate_key(2048, parameters={"kid": "foreign"})
        claims = {"iss": ISSUER, "sub": "x", "aud": RESOURCE, "client_id": reg["client_id"], "exp": now() + 300, "jti": "j1"}
        token = jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": "foreign"}, claims, key)
    elif case == "disabled user":
        with runtime.engine.begin() as conn:
            conn.execute(text("UPDATE users SET disabled_at = 1"))
    response = await introspect(client, token, rs)
    assert response.status_code == 200
    assert response.json() == {"active": False}


@pytest.mark.parametrize("kind", ["access_token", "refresh_token"])
async def test_registered_confidential_client_introspects_only_its_own(client, runtime, kind):
    """RFC 7662 §4: the server decides which tokens a caller may learn about; a dynamically
    registered client only its own, the MCP server's credentials those issued for it."""
    reg = await signed_in_flow(client, runtime, token_endpoint_auth_method="client_secret_basic")
    own = await tokens_for(client, reg["client_id"], auth=(reg["client_id"], reg["client_secret"]))
    public = await register(client, client_name="Someone else")
    theirs = await tokens_for(client, public["client_id"])
    me = (reg["client_id"], reg["client_secret"])
    assert (await introspect(client, own[kind], me)).json()["active"] is True
    assert (await introspect(client, theirs[kind], me)).json() == {"active": False}
    rs = admin_client(runtime)
    assert (await introspect(client, theirs[kind], rs)).json()["active"] is True


async def test_introspection_without_token_is_invalid_request(client, runtime):
    """RFC 7662 2.1: token is REQUIRED."""
    await signed_in_flow(client, runtime)
    response = await client.post("/introspect", data={}, auth=admin_client(runtime))
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"


@pytest.mark.parametrize("kind", ["access_token", "refresh_token"])
async def test_introspection_is_limited_to_the_tokens_mcp_server(client, runtime, kind):
    """RFC 7662 §4 (docs/decisions.md#introspection-is-for-the-tokens-mcp-server): credentials
    of another MCP server, or an operator-created client linked to none, learn nothing about a
    token (RFC 7662 §2.2 {"active": false}); an admin may allow a client to introspect any."""
    reg = await signed_in_flow(client, runtime)
    create_resource(runtime, uri="https://other.example.com/mcp", name="Other")
    token = (await tokens_for(client, reg["client_id"]))[kind]
    mine = admin_client(runtime)  # linked to RESOURCE, the token's audience
    other = admin_client(runtime, resource="https://other.example.com/mcp")
    unlinked = admin_client(runtime, resource=None)
    anything = admin_client(runtime, resource=None, introspect_any=True)
    body = (await introspect(client, token, mine)).json()
    assert body["active"] is True and body["sub"]
    assert (await introspect(client, token, other)).json() == {"active": False}
    assert (await introspect(client, token, unlinked)).json() == {"active": False}
    assert (await introspect(client, token, anything)).json()["active"] is True
