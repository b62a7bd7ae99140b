"""Quirks of shipping MCP clients that Ostiary tolerates: an empty `scope=`
means the resource's default scopes, a missing `state` is allowed, `application_type` absent
with loopback redirects means native, unknown registration fields are kept and ignored, and the
redirect URIs of Cursor (private-use scheme) and Claude Code (localhost, any port) work end to
end."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.models import Client
from tests.support import (
    REDIRECT,
    authorize,
    authorize_params,
    exchange,
    pkce,
    query,
    register,
    signed_in_flow,
    verify_jwt,
)

pytestmark = pytest.mark.anyio


async def code_and_token(client, client_id: str, redirect_uri: str = REDIRECT, **extra) -> tuple[str, dict]:
    """Run /authorize (signed in) and the exchange: (the redirect Location, the token response)."""
    verifier, challenge = pkce()
    response = await authorize(client, authorize_params(client_id, challenge, redirect_uri=redirect_uri, **extra))
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    token = await exchange(client, client_id, query(location)["code"], verifier, redirect_uri=redirect_uri)
    assert token.status_code == 200, token.text
    return location, token.json()


# -- scope (docs/decisions.md#an-empty-scope-means-the-resources-default-scopes) -----------------


@pytest.mark.parametrize(
    "scope",
    [pytest.param("", id="empty scope="), pytest.param(None, id="no scope parameter")],
)
async def test_empty_scope_means_the_resources_default_scopes(client, runtime, scope):
    """RFC 6749 §3.3 lets the server apply a default: `scope=` (several SDKs send it empty) gets
    the resource's default scopes, here mcp:read, not an error and not every scope."""
    reg = await signed_in_flow(client, runtime)
    _, token = await code_and_token(client, reg["client_id"], scope=scope)
    assert token["scope"] == "mcp:read"
    claims = (await verify_jwt(client, token["access_token"])).claims
    assert claims["scope"] == "mcp:read"


# -- state (OAuth 2.1 §4.1.1: RECOMMENDED, not required) ---------------------------------------------


async def test_missing_state_is_allowed(client, runtime):
    """OAuth 2.1 §4.1.1 (state is optional; PKCE protects the flow): without `state` the code
    comes back without a `state` parameter (RFC 6749 §4.1.2: only if it was sent)."""
    reg = await signed_in_flow(client, runtime)
    location, _ = await code_and_token(client, reg["client_id"], state=None)
    params = query(location)
    assert "state" not in params and "code" in params and params["iss"]


async def test_missing_state_on_an_error_redirect(client, runtime):
    """Deny without `state`: `error` and `iss`, no `state`."""
    reg = await signed_in_flow(client, runtime)
    _, challenge = pkce()
    response = await authorize(client, authorize_params(reg["client_id"], challenge, state=None), decision="deny")
    assert response.status_code == 302
    params = query(response.headers["location"])
    assert params["error"] == "access_denied" and "state" not in params


# -- registration metadata (RFC 7591 §2) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("redirect_uris", "expected"),
    [
        pytest.param(["http://localhost:54545/callback"], "native", id="localhost (Claude Code)"),
        pytest.param(["http://127.0.0.1:33418", "http://[::1]:33418"], "native", id="127.0.0.1 and [::1]"),
        pytest.param(["cursor://anysphere.cursor-mcp/oauth/callback"], "native", id="private-use scheme (Cursor)"),
        pytest.param(["https://app.example.com/callback"], "web", id="https"),
        pytest.param(["http://127.0.0.1:33418", "https://vscode.dev/redirect"], "web", id="loopback and https"),
    ],
)
async def test_application_type_absent_is_inferred(client, redirect_uris, expected):
    """OIDC Registration §2 defaults application_type to web, which would refuse loopback
    redirects; MCP SDKs omit it, so loopback (and private-use) redirects make a native app."""
    reg = await register(client, redirect_uris=redirect_uris)
    assert reg["application_type"] == expected


async def test_unknown_registration_fields_are_kept_and_ignored(client, runtime):
    """RFC 7591 §2: "The authorization server MUST ignore any client metadata sent by the client
    that it does not understand" — ignored, not refused; kept with the client and shown back
    (RFC 7592 read)."""
    extra = {"x_vendor_setting": {"nested": [1, 2]}, "software_statement_note": "hello", "require_pkce": True}
    reg = await register(client, **extra)
    for key, value in extra.items():
        assert reg[key] == value
    with runtime.sessions() as db:
        row = db.scalar(select(Client).where(Client.id == reg["client_id"]))
        assert all(row.client_metadata[k] == v for k, v in extra.items())
    read = await client.get(
        reg["registration_client_uri"], headers={"Authorization": f"Bearer {reg['registration_access_token']}"}
    )
    assert read.json()["x_vendor_setting"] == {"nested": [1, 2]}


async def test_missing_token_endpoint_auth_method_means_a_public_client(client):
    """The MCP SDKs omit token_endpoint_auth_method: a public client (`none`), no secret."""
    reg = await register(client, application_type="native")
    assert reg["token_endpoint_auth_method"] == "none" and "client_secret" not in reg


# -- shipping clients' redirect URIs, end to end --------------------------------------------------


async def test_cursor_private_use_scheme_registers_and_completes_a_flow(client, runtime):
    """Cursor registers `cursor://anysphere.cursor-mcp/oauth/callback` (RFC 8252 §7.1 private-use
    scheme, not reverse-domain): it registers, the code goes there, the exchange works."""
    redirect = "cursor://anysphere.cursor-mcp/oauth/callback"
    reg = await signed_in_flow(client, runtime, redirect_uris=[redirect], client_name="Cursor")
    location, token = await code_and_token(client, reg["client_id"], redirect_uri=redirect)
    assert location.startswith(redirect + "?")
    assert "refresh_token" in token


async def test_claude_code_localhost_callback_with_another_port(client, runtime):
    """Claude Code registers `http://localhost:<port>/callback` and later listens on another
    port: the loopback port may differ (OAuth 2.1 §8.4.2, RFC 8252 §7.3); the host may not."""
    reg = await signed_in_flow(client, runtime, redirect_uris=["http://localhost:54545/callback"], client_name="Claude Code")
    location, _ = await code_and_token(client, reg["client_id"], redirect_uri="http://localhost:60123/callback")
    assert location.startswith("http://localhost:60123/callback?")
    _, challenge = pkce()
    other_host = await client.get(
        "/authorize", params=authorize_params(reg["client_id"], challenge, redirect_uri="http://127.0.0.1:60123/callback")
    )
    assert other_host.status_code == 400 and "location" not in other_host.headers
