"""Discovery: RFC 8414 authorization server metadata, also served as OIDC
Discovery; CORS on the public documents; /healthz and /readyz."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import httpx
import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata

from tests.support import create_resource, execute

pytestmark = pytest.mark.anyio

OAUTH = "/.well-known/oauth-authorization-server"
OIDC = "/.well-known/openid-configuration"
HTTPS = {"issuer": "https://auth.example.com"}
TENANT = {"issuer": "https://auth.example.com/tenant"}
ORIGIN = "https://app.example.net"


def origin_client(app, settings) -> httpx.AsyncClient:
    """A client whose base URL is the issuer's origin (the well-known URLs sit at the root)."""
    parts = urlsplit(settings.issuer)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50002))
    return httpx.AsyncClient(transport=transport, base_url=f"{parts.scheme}://{parts.netloc}")


def endpoints(doc: dict) -> dict[str, str]:
    return {k: v for k, v in doc.items() if k.endswith("_endpoint") or k == "jwks_uri"}


# -- the document ------------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [pytest.param(HTTPS, id="https issuer")])
async def test_metadata_validates_with_authlib_rfc8414(client):
    doc = (await client.get(OAUTH)).json()
    AuthorizationServerMetadata(doc).validate()


@pytest.mark.parametrize(
    "settings_overrides",
    [
        pytest.param({"issuer": "http://127.0.0.1:8000"}, id="loopback"),
        pytest.param({"issuer": "http://localhost:8000"}, id="localhost"),
        pytest.param(HTTPS, id="https"),
        pytest.param({"issuer": "https://auth.example.com:8443"}, id="https with port"),
        pytest.param(TENANT, id="https with path"),
    ],
)
async def test_issuer_byte_identical_to_setting_rfc8414_s3_3(app, settings):
    async with origin_client(app, settings) as c:
        response = await c.get(OAUTH + settings.issuer_path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert b'"issuer":"' + settings.issuer.encode() + b'"' in response.content
    assert response.json()["issuer"] == settings.issuer
    for url in endpoints(response.json()).values():
        assert url.startswith(settings.issuer + "/")


async def test_one_document_at_both_well_known_urls(client):
    oauth, oidc = await client.get(OAUTH), await client.get(OIDC)
    assert oauth.status_code == oidc.status_code == 200
    assert oauth.content == oidc.content


async def test_metadata_fields_mcp_and_oauth21(client, runtime):
    doc = (await client.get(OAUTH)).json()
    assert doc["code_challenge_methods_supported"] == ["S256"]  # OAuth 2.1 §4.1.1: S256 only
    assert doc["response_types_supported"] == ["code"]
    assert doc["authorization_response_iss_parameter_supported"] is True  # RFC 9207 §3
    assert {"authorization_code", "refresh_token"} <= set(doc["grant_types_supported"])
    assert "implicit" not in doc["grant_types_supported"] and "password" not in doc["grant_types_supported"]
    assert "none" in doc["token_endpoint_auth_methods_supported"]  # public clients (MCP)
    # OIDC Discovery §3: request objects are not supported (request_uri would default to true).
    assert doc["request_parameter_supported"] is False and doc["request_uri_parameter_supported"] is False
    for field in (
        "authorization_endpoint",
        "token_endpoint",
        "jwks_uri",
        "registration_endpoint",
        "revocation_endpoint",
        "introspection_endpoint",
    ):
        assert field in doc, field


async def test_scopes_supported_lists_resource_scopes_and_offline_access(client, runtime):
    create_resource(runtime)
    create_resource(runtime, uri="https://files.example.com/mcp", scopes={"files:read": "Read files"}, defaults=("files:read",))
    doc = (await client.get(OAUTH)).json()
    assert {"mcp:read", "mcp:write", "files:read", "offline_access", "openid"} <= set(doc["scopes_supported"])


@pytest.mark.parametrize(
    "settings_overrides", [pytest.param(HTTPS, id="https issuer"), pytest.param(TENANT, id="issuer with a path")]
)
async def test_every_advertised_endpoint_answers(app, settings):
    async with origin_client(app, settings) as c:
        doc = (await c.get(OAUTH + settings.issuer_path)).json()
        for field, url in endpoints(doc).items():
            path = url.removeprefix(f"{urlsplit(url).scheme}://{urlsplit(url).netloc}")
            if field in ("authorization_endpoint", "jwks_uri", "userinfo_endpoint"):
                response = await c.get(path)
            else:
                response = await c.post(path, data={})
            assert response.status_code not in (404, 405), (field, path, response.status_code)
            assert response.status_code < 500, (field, path, response.text)


# -- an issuer with a path (RFC 8414 §3.1, OIDC Discovery §4) --------------------------------


@pytest.mark.parametrize("settings_overrides", [pytest.param(TENANT, id="issuer with a path")])
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(OAUTH + "/tenant", id="RFC 8414 path-inserted"),
        pytest.param(OIDC + "/tenant", id="OIDC path-inserted"),
        pytest.param("/tenant" + OIDC, id="OIDC appended"),
    ],
)
async def test_issuer_with_path_metadata_variants_rfc8414_s3_1(app, settings, path):
    async with origin_client(app, settings) as c:
        response = await c.get(path)
        assert response.status_code == 200
        doc = response.json()
        assert doc["issuer"] == "https://auth.example.com/tenant"
        assert doc["token_endpoint"] == "https://auth.example.com/tenant/token"
        assert doc["jwks_uri"] == "https://auth.example.com/tenant/jwks"
        assert (await c.get("/tenant/jwks")).status_code == 200
        assert (await c.get(OAUTH)).status_code == 404  # another issuer's URL: not ours, not 5xx


# -- CORS: public documents only -------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [pytest.param(OAUTH, id="oauth metadata"), pytest.param(OIDC, id="openid configuration"), pytest.param("/jwks", id="jwks")],
)
async def test_cors_open_on_metadata_and_jwks(client, path):
    response = await client.get(path, headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
    preflight = await client.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"})
    assert 200 <= preflight.status_code < 300
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "GET" in preflight.headers["access-control-allow-methods"]


@pytest.mark.parametrize(
    "path", [pytest.param("/login", id="login"), pytest.param("/logout", id="logout"), pytest.param("/account", id="account")]
)
async def test_cors_never_on_pages(client, path):
    response = await client.get(path, headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers
    preflight = await client.options(path, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


# -- never a 5xx -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", [pytest.param(OAUTH, id="oauth metadata"), pytest.param(OIDC, id="openid configuration")])
async def test_metadata_never_5xx_when_database_down(client, runtime, kill_database, path):
    create_resource(runtime)
    before = await client.get(path)
    kill_database()
    runtime.metadata.invalidate()  # force a rebuild against the dead database
    after = await client.get(path)
    assert after.status_code == 200
    assert after.content == before.content  # the last good document, scopes included
    assert "mcp:read" in after.json()["scopes_supported"]


async def test_metadata_never_5xx_when_database_down_from_start(client, runtime, kill_database):
    kill_database()  # before the first metadata request: nothing cached yet
    response = await client.get(OAUTH)
    assert response.status_code == 200
    doc = response.json()
    assert doc["issuer"] == runtime.settings.issuer and "token_endpoint" in doc
    assert "offline_access" in doc["scopes_supported"]


# -- health ----------------------------------------------------------------------------------


async def test_healthz_and_readyz_ok(client):
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"


async def test_readyz_503_when_database_down(client, runtime, kill_database):
    kill_database()
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"  # RFC 9110 §15.6.4
    assert (await client.get("/healthz")).status_code == 200  # the process is up


async def test_readyz_503_without_active_key(client, runtime, settings):
    # The next app start promotes the next key again (ensure_keys).
    execute(settings.database_url.get_secret_value(), "DELETE FROM signing_keys WHERE state = 'active'")
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"  # RFC 9110 §15.6.4
    assert json.loads(response.content)["status"] == "unavailable"
