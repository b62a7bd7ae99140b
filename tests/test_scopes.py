"""Scopes (RFC 6749 3.3) resolved against the resource's catalogue: empty or missing means the
resource's defaults (docs/decisions.md#an-empty-scope-means-the-resources-default-scopes), unknown
is invalid_scope, the protocol scopes `openid` and `offline_access` are accepted, a client's
registered `scope` does not cap step-up; and the OIDC subset (id_token with `openid`, /userinfo)."""

from __future__ import annotations

import pytest

from app.oauth.scopes import InvalidScope, resolve
from app.stores import users as users_store
from tests.support import (
    ISSUER,
    authorize_params,
    pkce,
    query,
    refresh,
    registered_flow,
    signed_in_flow,
    tokens_for,
    verify_jwt,
)

pytestmark = pytest.mark.anyio

CATALOGUE = {"mcp:read": True, "mcp:write": False, "mcp:admin": False}


# -- resolution (unit) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested, expected",
    [
        pytest.param(
            None,
            ["mcp:read"],
            id="missing: the resource's defaults (docs/decisions.md#an-empty-scope-means-the-resources-default-scopes)",
        ),
        pytest.param("", ["mcp:read"], id="empty scope=: the defaults (MCP clients send it)"),
        pytest.param("   ", ["mcp:read"], id="only spaces: the defaults"),
        pytest.param("mcp:write", ["mcp:write"], id="a non-default scope alone"),
        pytest.param("mcp:write mcp:read", ["mcp:write", "mcp:read"], id="two scopes, order kept"),
        pytest.param("mcp:read mcp:read", ["mcp:read"], id="duplicates dropped (RFC 6749 3.3)"),
        pytest.param("mcp:read  mcp:write", ["mcp:read", "mcp:write"], id="double space"),
        pytest.param("openid", ["openid", "mcp:read"], id="openid alone: plus the defaults"),
        pytest.param("offline_access", ["offline_access", "mcp:read"], id="offline_access alone: plus the defaults"),
        pytest.param("openid mcp:write", ["openid", "mcp:write"], id="openid and a resource scope"),
    ],
)
def test_resolve(requested, expected):
    """Empty or missing means the defaults (RFC 6749 3.3,
    docs/decisions.md#an-empty-scope-means-the-resources-default-scopes)."""
    assert resolve(requested, CATALOGUE) == expected


@pytest.mark.parametrize(
    "requested",
    [
        pytest.param("unknown", id="not in the catalogue"),
        pytest.param("mcp:read unknown", id="one unknown among known"),
        pytest.param("mcp:*", id="wildcard (docs/decisions.md#unknown-and-wildcard-scopes-are-refused)"),
        pytest.param("*", id="bare wildcard"),
        pytest.param('mcp:"read"', id="quote is not a scope-token character (RFC 6749 3.3)"),
        pytest.param("mcp:read\tmcp:write", id="tab is not a delimiter"),
        pytest.param("MCP:READ", id="scopes are case-sensitive"),
        pytest.param("profile", id="OIDC scope not served"),
    ],
)
def test_resolve_refuses(requested):
    """RFC 6749 3.3 scope-token syntax; no wildcards, only the catalogue
    (docs/decisions.md#unknown-and-wildcard-scopes-are-refused)."""
    with pytest.raises(InvalidScope):
        resolve(requested, CATALOGUE)


def test_resolve_with_several_defaults():
    """Every default scope of the resource, in catalogue order
    (docs/decisions.md#an-empty-scope-means-the-resources-default-scopes)."""
    assert resolve(None, {"a": True, "b": False, "c": True}) == ["a", "c"]


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope, granted",
    [
        pytest.param(None, "mcp:read", id="missing scope: defaults"),
        pytest.param("", "mcp:read", id="empty scope=: defaults"),
        pytest.param("mcp:write", "mcp:write", id="explicit scope"),
        pytest.param("mcp:read mcp:write", "mcp:read mcp:write", id="two scopes"),
        pytest.param("offline_access", "mcp:read offline_access", id="offline_access accepted"),
        pytest.param("openid mcp:read", "mcp:read openid", id="openid accepted"),
    ],
)
async def test_token_scope(client, runtime, scope, granted):
    """RFC 6749 3.3 / 5.1: the token response says which scopes were granted."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], scope=scope)
    assert body["scope"] == granted
    assert (await verify_jwt(client, body["access_token"])).claims["scope"] == granted


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param("unknown", id="unknown scope"),
        pytest.param("mcp:read nope", id="unknown among known"),
        pytest.param("mcp:*", id="wildcard"),
        pytest.param('mcp:"x"', id="invalid characters"),
    ],
)
async def test_authorize_refuses_unknown_scope_by_redirect(client, runtime, scope):
    """RFC 6749 4.1.2.1: invalid_scope, redirected with state and iss (RFC 9207)."""
    reg = await registered_flow(client, runtime)
    params = authorize_params(reg["client_id"], pkce()[1], scope=scope)
    response = await client.get("/authorize", params=params)
    assert response.status_code == 302, response.text
    q = query(response.headers["location"])
    assert q["error"] == "invalid_scope", q
    assert q["state"] == params["state"] and q["iss"] == ISSUER


async def test_refresh_token_without_offline_access(client, runtime):
    """MCP clients differ on offline_access; a refresh token does not require it
    (docs/decisions.md#refresh-tokens-are-issued-without-asking-for-offline-access)."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], scope="mcp:read")
    assert body["refresh_token"]


async def test_registered_scope_does_not_cap_step_up(client, runtime):
    """MCP step-up: a client registered with `scope` may later ask for more scopes of the
    resource's catalogue (docs/decisions.md#a-clients-registered-scope-does-not-cap-its-requests)."""
    reg = await signed_in_flow(client, runtime, scope="mcp:read")
    assert reg["scope"] == "mcp:read"
    body = await tokens_for(client, reg["client_id"], scope="mcp:read mcp:write")
    assert body["scope"] == "mcp:read mcp:write"


# -- OIDC subset -------------------------------------------------------------------------------


async def test_no_id_token_without_openid(client, runtime):
    """OIDC Core 3.1.3.3: an id_token only for an OpenID request."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], scope="mcp:read", nonce="n-1")
    assert "id_token" not in body


async def test_id_token_with_openid(client, runtime):
    """OIDC Core 2 / 3.1.3.7: iss, sub, aud = client_id, exp, iat, nonce echoed."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], scope="openid mcp:read", nonce="nonce-123")
    token = await verify_jwt(client, body["id_token"])
    claims = token.claims
    with runtime.sessions() as db:
        alice = users_store.by_username(db, "alice")
    assert token.header["alg"] == "RS256" and token.header["kid"]
    assert token.header.get("typ") != "at+jwt"  # RFC 9068 4: never confusable with an access token
    assert claims["iss"] == ISSUER
    assert claims["aud"] == reg["client_id"]
    assert claims["sub"] == alice.id
    assert claims["nonce"] == "nonce-123"
    assert claims["iat"] < claims["exp"]
    access = (await verify_jwt(client, body["access_token"])).claims
    assert access["sub"] == claims["sub"]


async def test_id_token_without_nonce(client, runtime):
    """OIDC Core 2: nonce only when the request had one."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], scope="openid")
    assert "nonce" not in (await verify_jwt(client, body["id_token"])).claims


async def test_id_token_is_refused_as_access_token(client, runtime):
    """RFC 9068 4: a JWT that is not typ at+jwt is no access token (here at /userinfo)."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], scope="openid")
    response = await client.get("/userinfo", headers={"Authorization": f"Bearer {body['id_token']}"})
    assert response.status_code == 401


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_userinfo(client, runtime, method):
    """OIDC Core 5.3: /userinfo answers sub and preferred_username for an openid token."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], scope="openid mcp:read")
    response = await client.request(method, "/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert response.status_code == 200, response.text
    info = response.json()
    with runtime.sessions() as db:
        alice = users_store.by_username(db, "alice")
    assert info == {"sub": alice.id, "preferred_username": "alice"}
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "authorization, status, error",
    [
        pytest.param(None, 401, None, id="no token (RFC 6750 3)"),
        pytest.param("Bearer not-a-jwt", 401, "invalid_token", id="garbage token"),
        pytest.param("WITHOUT_OPENID", 403, "insufficient_scope", id="token without openid (RFC 6750 3.1)"),
    ],
)
async def test_userinfo_refuses(client, runtime, authorization, status, error):
    """OIDC Core 5.3.3 / RFC 6750 3.1: a Bearer challenge for a missing, bad or
    insufficient token."""
    reg = await signed_in_flow(client, runtime)
    if authorization == "WITHOUT_OPENID":
        body = await tokens_for(client, reg["client_id"], scope="mcp:read")
        authorization = f"Bearer {body['access_token']}"
    headers = {"Authorization": authorization} if authorization else {}
    response = await client.get("/userinfo", headers=headers)
    assert response.status_code == status
    assert response.headers["www-authenticate"].startswith("Bearer")
    if error:
        assert response.json()["error"] == error


async def test_refresh_keeps_openid(client, runtime):
    """OIDC Core 12.2: a refresh of an openid grant still yields an id_token for the client."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], scope="openid mcp:read")
    again = (await refresh(client, reg["client_id"], body["refresh_token"])).json()
    assert (await verify_jwt(client, again["id_token"])).claims["aud"] == reg["client_id"]
