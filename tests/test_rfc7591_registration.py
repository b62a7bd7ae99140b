"""Dynamic client registration (RFC 7591) as MCP clients use it: open by default, validating
redirect URIs (OAuth 2.1 2.3, RFC 8252 7), public clients by default, secrets stored hashed."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from app.models import Client
from tests.support import REDIRECT

pytestmark = pytest.mark.anyio

BASE = {"redirect_uris": [REDIRECT], "client_name": "Test MCP Client"}


async def post(client, body: dict):
    return await client.post("/register", json=body)


def stored(runtime, client_id: str) -> Client:
    with runtime.sessions() as db:
        return db.scalar(select(Client).where(Client.id == client_id))


# -- redirect URIs (RFC 7591 2, OAuth 2.1 2.3.1, RFC 8252 7) ----------------------------------------


@pytest.mark.parametrize(
    "uris",
    [
        pytest.param(["https://app.example.com/callback"], id="https"),
        pytest.param(["http://127.0.0.1:33418/callback"], id="http loopback 127.0.0.1 (RFC 8252 7.3)"),
        pytest.param(["http://[::1]:33418/callback"], id="http loopback [::1]"),
        pytest.param(["http://localhost:6274/oauth/callback"], id="http localhost (MCP Inspector)"),
        pytest.param(["cursor://anysphere.cursor-mcp/oauth/callback"], id="private-use scheme (RFC 8252 7.1)"),
        pytest.param(["http://127.0.0.1:33418", "https://vscode.dev/redirect"], id="several (VS Code)"),
    ],
)
async def test_accepted_redirect_uris(client, runtime, uris):
    """RFC 7591 2 / OAuth 2.1 2.3.1 / RFC 8252 7: stored exactly as sent."""
    response = await post(client, {**BASE, "redirect_uris": uris})
    assert response.status_code == 201, response.text
    assert response.json()["redirect_uris"] == uris
    assert stored(runtime, response.json()["client_id"]).redirect_uris == uris


@pytest.mark.parametrize(
    "uris",
    [
        pytest.param(["http://app.example.com/callback"], id="http non-loopback (OAuth 2.1 2.3.1)"),
        pytest.param(["https://*.example.com/callback"], id="wildcard (RFC 9700 4.1.3)"),
        pytest.param(["https://app.example.com/cb#frag"], id="fragment (RFC 6749 3.1.2)"),
        pytest.param(["javascript:alert(1)"], id="javascript:"),
        pytest.param(["data:text/html,hi"], id="data:"),
        pytest.param(["file:///etc/passwd"], id="file:"),
        pytest.param(["/callback"], id="relative"),
        pytest.param(["https://user:pw@app.example.com/cb"], id="userinfo"),
        pytest.param([REDIRECT, "http://evil.example/cb"], id="one bad among good"),
        pytest.param(None, id="missing redirect_uris (OAuth 2.1 2.3)"),
        pytest.param([], id="empty list"),
        pytest.param(REDIRECT, id="a string, not an array"),
        pytest.param([42], id="not strings"),
    ],
)
async def test_refused_redirect_uris(client, runtime, uris):
    """RFC 7591 3.2.2: invalid_redirect_uri."""
    body = dict(BASE)
    if uris is None:
        del body["redirect_uris"]
    else:
        body["redirect_uris"] = uris
    response = await post(client, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_redirect_uri"
    with runtime.sessions() as db:
        assert db.scalar(select(Client)) is None


# -- other metadata (RFC 7591 2, 3.2.2) ------------------------------------------------------------


@pytest.mark.parametrize(
    "field",
    [
        pytest.param({"token_endpoint_auth_method": "private_key_jwt"}, id="auth method not offered"),
        pytest.param({"token_endpoint_auth_method": "bogus"}, id="unknown auth method"),
        pytest.param({"grant_types": ["client_credentials"]}, id="no authorization_code grant"),
        pytest.param({"grant_types": "authorization_code"}, id="grant_types not an array"),
        pytest.param({"response_types": ["token"]}, id="implicit response type (OAuth 2.1)"),
        pytest.param({"application_type": "desktop"}, id="unknown application_type (OIDC Registration 2)"),
        pytest.param({"scope": 'mcp:"read"'}, id="scope with invalid characters"),
        pytest.param({"client_name": 42}, id="client_name not a string"),
        pytest.param({"contacts": "admin@example.com"}, id="contacts not an array"),
    ],
)
async def test_invalid_client_metadata(client, runtime, field):
    """RFC 7591 3.2.2: invalid_client_metadata."""
    response = await post(client, {**BASE, **field})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_client_metadata"


async def test_public_client_by_default(client, runtime):
    """MCP / RFC 7591 2: token_endpoint_auth_method defaults to none here (public client), and a
    public client gets no secret."""
    response = await post(client, BASE)
    body = response.json()
    assert body["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in body
    assert stored(runtime, body["client_id"]).secret_hash is None


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_confidential_client_gets_a_secret_stored_hashed(client, runtime, method):
    """RFC 7591 3.2.1: client_secret and client_secret_expires_at (0: never); only its HMAC is
    stored (docs/decisions.md#bearer-secrets-are-stored-as-keyed-hmacs)."""
    body = (await post(client, {**BASE, "token_endpoint_auth_method": method})).json()
    secret = body["client_secret"]
    assert len(secret) >= 32
    assert body["client_secret_expires_at"] == 0
    assert body["token_endpoint_auth_method"] == method
    row = stored(runtime, body["client_id"])
    assert row.secret_hash and row.secret_hash != secret
    assert secret not in repr(row.client_metadata)
    assert runtime.keyring.verify(secret, row.secret_hash)


async def test_unknown_metadata_is_kept_and_ignored(client, runtime):
    """RFC 7591 2: the server MUST ignore metadata it does not understand (kept, unused)."""
    response = await post(client, {**BASE, "x_vendor_setting": {"a": 1}, "tos_uri": "https://app.example.com/tos"})
    assert response.status_code == 201, response.text
    row = stored(runtime, response.json()["client_id"])
    assert row.client_metadata["x_vendor_setting"] == {"a": 1}


async def test_server_assigned_fields_are_not_taken_from_the_client(client, runtime):
    """RFC 7591 3.2.1: the server issues client_id and client_secret."""
    body = (await post(client, {**BASE, "client_id": "chosen-id", "client_secret": "chosen-secret"})).json()
    assert body["client_id"] != "chosen-id"
    assert body.get("client_secret") != "chosen-secret"


@pytest.mark.parametrize(
    "uris, given, expected",
    [
        pytest.param([REDIRECT], None, "native", id="absent, loopback redirect: native"),
        pytest.param(["cursor://anysphere.cursor-mcp/oauth/callback"], None, "native", id="absent, private-use: native"),
        pytest.param(["https://app.example.com/cb"], None, "web", id="absent, https redirect: web"),
        pytest.param([REDIRECT], "web", "web", id="given: kept"),
    ],
)
async def test_application_type(client, runtime, uris, given, expected):
    """OIDC Registration 2 application_type; MCP SDKs often omit it."""
    body = {**BASE, "redirect_uris": uris}
    if given:
        body["application_type"] = given
    response = await post(client, body)
    assert response.json()["application_type"] == expected


async def test_a_web_client_may_not_register_a_private_use_scheme(client, runtime):
    """RFC 8252 §7.1: private-use URI schemes are for native apps; a client that says it is a web
    client gets invalid_redirect_uri (a native one, or one that says nothing, is accepted)."""
    body = {**BASE, "redirect_uris": ["cursor://anysphere.cursor-mcp/oauth/callback"], "application_type": "web"}
    response = await post(client, body)
    assert response.status_code == 400 and response.json()["error"] == "invalid_redirect_uri"
    assert (await post(client, {**body, "application_type": "native"})).status_code == 201


async def test_response_echoes_the_metadata(client, runtime):
    """RFC 7591 3.2.1: 201 Created with client_id, client_id_issued_at and all registered
    metadata."""
    request = {
        **BASE,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "scope": "mcp:read",
        "client_uri": "https://app.example.com",
        "logo_uri": "https://app.example.com/logo.png",
        "software_id": "test-client",
        "software_version": "1.2.3",
    }
    before = int(time.time())
    response = await post(client, request)
    assert response.status_code == 201, response.text
    body = response.json()
    for name, value in request.items():
        assert body[name] == value, name
    assert isinstance(body["client_id"], str) and len(body["client_id"]) >= 16
    assert before - 1 <= body["client_id_issued_at"] <= int(time.time()) + 1
    assert response.headers["content-type"].startswith("application/json")


async def test_registration_response_is_not_cached(client, runtime):
    """RFC 7591 3.2.1 (it may hold a secret) / RFC 6749 5.1: Cache-Control: no-store."""
    response = await post(client, {**BASE, "token_endpoint_auth_method": "client_secret_basic"})
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"


@pytest.mark.parametrize(
    "content, content_type",
    [
        pytest.param(b"redirect_uris=http://127.0.0.1/cb", "application/x-www-form-urlencoded", id="a form"),
        pytest.param(b"{not json", "application/json", id="malformed JSON"),
        pytest.param(b'["array"]', "application/json", id="a JSON array"),
        pytest.param(b"", "application/json", id="empty body"),
        pytest.param(b'{"redirect_uris": ["' + REDIRECT.encode() + b'"]}', "text/plain", id="JSON sent as text/plain"),
    ],
)
async def test_non_json_body_is_a_json_400(client, runtime, content, content_type):
    """RFC 7591 3: the request is JSON; errors are JSON bodies (3.2.2), never a stack trace."""
    response = await client.post("/register", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "error" in response.json()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {
                "redirect_uris": ["http://localhost:54321/callback"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "client_name": "Claude Code",
            },
            id="Claude Code-like",
        ),
        pytest.param(
            {
                "redirect_uris": ["http://localhost:3030/callback"],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "client_name": "MCP client",
                "application_type": "native",
                "scope": "mcp:read",
            },
            id="MCP Python SDK-like",
        ),
        pytest.param(
            {"redirect_uris": ["cursor://anysphere.cursor-mcp/oauth/callback"], "client_name": "Cursor"},
            id="Cursor-like",
        ),
        pytest.param(
            {
                "redirect_uris": ["http://localhost:6274/oauth/callback", "http://localhost:6274/oauth/callback/debug"],
                "client_name": "MCP Inspector",
                "client_uri": "https://github.com/modelcontextprotocol/inspector",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "none",
            },
            id="MCP Inspector-like",
        ),
    ],
)
async def test_mcp_client_registrations(client, runtime, body):
    """Accept the metadata MCP clients send
    (docs/decisions.md#dynamic-registration-is-open-and-registers-public-clients-by-default)."""
    response = await post(client, body)
    assert response.status_code == 201, response.text
    assert response.json()["redirect_uris"] == body["redirect_uris"]
    assert response.json()["token_endpoint_auth_method"] == "none"
