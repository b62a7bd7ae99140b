"""RFC 8707 resource indicators, as MCP uses them: `resource` names a registered MCP server
(canonical URI), is bound to the code, the grant and every refresh token, and becomes the `aud`
of the RFC 9068 access token."""

from __future__ import annotations

import pytest

from app.oauth.resource_indicators import InvalidResource, canonical_resource
from app.stores import users as users_store
from tests.support import (
    ISSUER,
    RESOURCE,
    authorize_params,
    create_resource,
    create_user,
    exchange,
    login,
    obtain_code,
    pkce,
    query,
    refresh,
    register,
    registered_flow,
    signed_in_flow,
    tokens_for,
    verify_jwt,
)

pytestmark = pytest.mark.anyio

OTHER = "https://other.example.com/mcp"


# -- canonical form (unit) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, canonical",
    [
        pytest.param("https://mcp.example.com/mcp", "https://mcp.example.com/mcp", id="already canonical"),
        pytest.param("HTTPS://mcp.example.com/mcp", "https://mcp.example.com/mcp", id="scheme case (RFC 3986 6.2.2.1)"),
        pytest.param("https://MCP.Example.COM/mcp", "https://mcp.example.com/mcp", id="host case (RFC 3986 6.2.2.1)"),
        pytest.param("https://mcp.example.com:443/mcp", "https://mcp.example.com/mcp", id="default https port (RFC 3986 6.2.3)"),
        pytest.param("https://mcp.example.com:8443/mcp", "https://mcp.example.com:8443/mcp", id="other port kept"),
        pytest.param("https://mcp.example.com/mcp/", "https://mcp.example.com/mcp", id="trailing slash"),
        pytest.param("https://mcp.example.com/", "https://mcp.example.com", id="root with slash"),
        pytest.param("https://mcp.example.com", "https://mcp.example.com", id="root without slash"),
        pytest.param("https://mcp.example.com/MCP", "https://mcp.example.com/MCP", id="path case kept"),
        pytest.param("https://mcp.example.com/mcp?tenant=a", "https://mcp.example.com/mcp?tenant=a", id="query kept"),
        pytest.param("http://127.0.0.1:8080/mcp", "http://127.0.0.1:8080/mcp", id="http on 127.0.0.1"),
        pytest.param("http://127.0.0.1:80/mcp", "http://127.0.0.1/mcp", id="default http port"),
        pytest.param("http://localhost:3000/mcp/", "http://localhost:3000/mcp", id="http on localhost"),
        pytest.param("http://[::1]:3000/mcp", "http://[::1]:3000/mcp", id="http on [::1]"),
    ],
)
def test_canonical_resource(value, canonical):
    """RFC 8707 2 / MCP: one resource, however a client spells it."""
    assert canonical_resource(value) == canonical


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("https://mcp.example.com/mcp#frag", id="fragment (RFC 8707 2 MUST NOT)"),
        pytest.param("https://mcp.example.com/mcp#", id="empty fragment"),
        pytest.param("http://mcp.example.com/mcp", id="http not on loopback"),
        pytest.param("/mcp", id="relative (RFC 8707 2: absolute URI)"),
        pytest.param("mcp.example.com/mcp", id="no scheme"),
        pytest.param("urn:example:mcp", id="not an http(s) URL"),
        pytest.param("ftp://mcp.example.com/mcp", id="ftp"),
        pytest.param("https:///mcp", id="no host"),
        pytest.param("https://user:pw@mcp.example.com/mcp", id="userinfo"),
        pytest.param("https://mcp.example.com/m cp", id="space"),
        pytest.param("https://mcp.example.com:99999/mcp", id="bad port"),
        pytest.param("", id="empty"),
        pytest.param("https://mcp.example.com/" + "a" * 2048, id="too long"),
    ],
)
def test_canonical_resource_refuses(value):
    """RFC 8707 2: an absolute URI without fragment; https (http only on loopback)."""
    with pytest.raises(InvalidResource):
        canonical_resource(value)


# -- /authorize ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"resource": "https://unknown.example.com/mcp"}, id="unknown resource"),
        pytest.param({"resource": RESOURCE + "/sub"}, id="a path below a registered resource"),
        pytest.param({"resource": RESOURCE + "#x"}, id="fragment"),
        pytest.param({"resource": "http://mcp.example.com/mcp"}, id="http variant of a registered resource"),
        pytest.param({"resource": "not a uri"}, id="malformed"),
        pytest.param({"resource": None}, id="missing, no default resource configured"),
        pytest.param({"resource": ""}, id="empty"),
        pytest.param([("resource", RESOURCE), ("resource", OTHER)], id="two resources (one audience per token)"),
    ],
)
async def test_authorize_refuses_resource_by_redirect(client, runtime, params):
    """RFC 8707 2: invalid_target, redirected with state and iss (RFC 9207)."""
    reg = await registered_flow(client, runtime)
    create_resource(runtime, uri=OTHER, name="Other")
    if isinstance(params, dict):
        request = authorize_params(reg["client_id"], pkce()[1], **params)
        state = request["state"]
    else:
        base = authorize_params(reg["client_id"], pkce()[1], resource=None)
        state = base["state"]
        request = list(base.items()) + params
    response = await client.get("/authorize", params=request)
    assert response.status_code == 302, response.text
    q = query(response.headers["location"])
    assert q["error"] == "invalid_target", q
    assert q["state"] == state and q["iss"] == ISSUER
    assert "code" not in q


@pytest.mark.parametrize(
    "spelling",
    [
        pytest.param("HTTPS://MCP.EXAMPLE.COM/mcp", id="upper-case scheme and host"),
        pytest.param("https://mcp.example.com:443/mcp/", id="default port and trailing slash"),
    ],
)
async def test_authorize_accepts_other_spellings(client, runtime, spelling):
    """RFC 8707 2: the canonical URI names the resource; the token's aud is the canonical form."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], resource=spelling)
    assert (await verify_jwt(client, body["access_token"])).claims["aud"] == RESOURCE


@pytest.mark.parametrize("settings_overrides", [{"default_resource": RESOURCE}], ids=["default_resource set"])
async def test_default_resource_serves_clients_that_omit_it(client, runtime, settings_overrides):
    """RFC 8707 2, docs/decisions.md#one-resource-per-request: a configured default resource
    serves clients that omit `resource`."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], resource=None)
    assert (await verify_jwt(client, body["access_token"])).claims["aud"] == RESOURCE


@pytest.mark.parametrize("settings_overrides", [{"default_resource": RESOURCE}], ids=["default_resource set"])
async def test_default_resource_does_not_replace_an_unknown_one(client, runtime, settings_overrides):
    """RFC 8707 2: a resource the client names must be registered, default or not."""
    reg = await registered_flow(client, runtime)
    response = await client.get(
        "/authorize", params=authorize_params(reg["client_id"], pkce()[1], resource="https://unknown.example.com/mcp")
    )
    assert query(response.headers["location"])["error"] == "invalid_target"


# -- /token: the resource stays bound ----------------------------------------------------------


@pytest.mark.parametrize(
    "sent, status, error",
    [
        pytest.param(None, 200, None, id="omitted: the bound resource"),
        pytest.param(RESOURCE, 200, None, id="the same resource"),
        pytest.param("HTTPS://mcp.example.com/mcp/", 200, None, id="the same resource, other spelling"),
        pytest.param(OTHER, 400, "invalid_target", id="another registered resource"),
        pytest.param("https://unknown.example.com/mcp", 400, "invalid_target", id="an unknown resource"),
        pytest.param(RESOURCE + "#x", 400, "invalid_target", id="malformed"),
    ],
)
async def test_token_resource_must_match_code(client, runtime, sent, status, error):
    """RFC 8707 2.2: a resource at the token endpoint must be one the grant covers."""
    reg = await signed_in_flow(client, runtime)
    create_resource(runtime, uri=OTHER, name="Other")
    code, verifier, _ = await obtain_code(client, reg["client_id"])
    response = await exchange(client, reg["client_id"], code, verifier, resource=sent)
    assert response.status_code == status, response.text
    if error:
        assert response.json()["error"] == error
    else:
        assert (await verify_jwt(client, response.json()["access_token"])).claims["aud"] == RESOURCE


@pytest.mark.parametrize(
    "sent, status, error",
    [
        pytest.param(None, 200, None, id="omitted: the bound resource"),
        pytest.param(RESOURCE, 200, None, id="the same resource"),
        pytest.param(OTHER, 400, "invalid_target", id="another registered resource"),
        pytest.param("https://unknown.example.com/mcp", 400, "invalid_target", id="an unknown resource"),
    ],
)
async def test_refresh_resource_stays_bound(client, runtime, sent, status, error):
    """RFC 8707 2.2 / MCP: the refresh token is bound to its resource; aud never changes."""
    reg = await signed_in_flow(client, runtime)
    create_resource(runtime, uri=OTHER, name="Other")
    body = await tokens_for(client, reg["client_id"])
    response = await refresh(client, reg["client_id"], body["refresh_token"], resource=sent)
    assert response.status_code == status, response.text
    if error:
        assert response.json()["error"] == error
    else:
        assert (await verify_jwt(client, response.json()["access_token"])).claims["aud"] == RESOURCE


async def test_resource_mismatch_at_refresh_leaves_the_token_usable(client, runtime):
    """RFC 8707 2.2: a refused refresh request does not consume the refresh token."""
    reg = await signed_in_flow(client, runtime)
    create_resource(runtime, uri=OTHER, name="Other")
    body = await tokens_for(client, reg["client_id"])
    assert (await refresh(client, reg["client_id"], body["refresh_token"], resource=OTHER)).status_code == 400
    assert (await refresh(client, reg["client_id"], body["refresh_token"])).status_code == 200


# -- the access token: RFC 9068 -----------------------------------------------------------------


async def test_access_token_is_an_rfc9068_jwt_for_the_resource(client, runtime):
    """RFC 9068 2.1 (typ at+jwt, kid), 2.2 (iss, exp, aud, sub, client_id, iat, jti, scope,
    auth_time); RFC 8707 / MCP: aud is the resource URI, never the client."""
    reg = await signed_in_flow(client, runtime)
    body = await tokens_for(client, reg["client_id"], scope="mcp:read mcp:write")
    token = await verify_jwt(client, body["access_token"])
    jwks = (await client.get("/jwks")).json()
    assert token.header["typ"] == "at+jwt"
    assert token.header["kid"] in {k["kid"] for k in jwks["keys"]}
    assert token.header["alg"] == "RS256"
    claims = token.claims
    with runtime.sessions() as db:
        alice = users_store.by_username(db, "alice")
    assert claims["iss"] == ISSUER
    assert claims["sub"] == alice.id
    assert claims["aud"] == RESOURCE
    assert claims["aud"] != reg["client_id"]
    assert claims["client_id"] == reg["client_id"]
    assert sorted(claims["scope"].split()) == ["mcp:read", "mcp:write"]
    assert body["scope"] == claims["scope"]
    for name in ("iat", "exp", "auth_time"):
        assert isinstance(claims[name], int), name
    assert claims["auth_time"] <= claims["iat"] < claims["exp"]
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert body["token_type"] == "Bearer"


async def test_every_access_token_has_its_own_jti(client, runtime):
    """RFC 9068 2.2 / RFC 7519 4.1.7: jti unique per token."""
    reg = await signed_in_flow(client, runtime)
    first = await tokens_for(client, reg["client_id"])
    second = await refresh(client, reg["client_id"], first["refresh_token"])
    jtis = {(await verify_jwt(client, t)).claims["jti"] for t in (first["access_token"], second.json()["access_token"])}
    assert len(jtis) == 2


@pytest.mark.parametrize(
    "token_ttl, lifetime",
    [
        pytest.param(None, 600, id="default 600 s (settings)"),
        pytest.param(120, 120, id="resource's own lifetime"),
        pytest.param(3600, 3600, id="one hour"),
        pytest.param(7200, 3600, id="never above one hour (docs/decisions.md#access-tokens-live-at-most-one-hour)"),
    ],
)
async def test_access_token_lifetime_from_the_resource(client, runtime, token_ttl, lifetime):
    """RFC 9068, docs/decisions.md#access-tokens-live-at-most-one-hour: lifetime per resource,
    default 10 min, never over 1 h; expires_in (RFC 6749 5.1) agrees with exp - iat, also after a
    refresh."""
    create_user(runtime)
    create_resource(runtime, token_ttl=token_ttl)
    reg = await register(client)
    await login(client)
    body = await tokens_for(client, reg["client_id"])
    claims = (await verify_jwt(client, body["access_token"])).claims
    assert claims["exp"] - claims["iat"] == lifetime
    assert body["expires_in"] == lifetime
    again = (await refresh(client, reg["client_id"], body["refresh_token"])).json()
    claims = (await verify_jwt(client, again["access_token"])).claims
    assert claims["exp"] - claims["iat"] == lifetime == again["expires_in"]


async def test_each_resource_gets_its_own_audience(client, runtime):
    """RFC 8707 2 / MCP: one client, two MCP servers, two audiences."""
    reg = await signed_in_flow(client, runtime)
    create_resource(runtime, uri=OTHER, name="Other")
    first = await tokens_for(client, reg["client_id"])
    second = await tokens_for(client, reg["client_id"], resource=OTHER)
    assert (await verify_jwt(client, first["access_token"])).claims["aud"] == RESOURCE
    assert (await verify_jwt(client, second["access_token"])).claims["aud"] == OTHER


async def test_consent_for_one_resource_does_not_cover_another(client, runtime):
    """A grant is per (user, client, resource)
    (docs/decisions.md#consent-is-incremental-and-shows-only-what-is-new)."""
    reg = await signed_in_flow(client, runtime)
    create_resource(runtime, uri=OTHER, name="Other")
    await tokens_for(client, reg["client_id"])
    response = await client.get("/authorize", params=authorize_params(reg["client_id"], pkce()[1], resource=OTHER))
    assert response.status_code in (302, 303)
    assert "/consent/" in response.headers["location"]
