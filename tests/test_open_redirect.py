"""No open redirector through self-registered clients (RFC 9700 §4.11.2; MCP security best
practices, "open redirection"; docs/decisions.md#errors-of-self-registered-clients-stay-on-ostiary-until-sign-in).

Anyone may register a client (RFC 7591) or publish a Client ID Metadata Document whose redirect
URI is a phishing page. Before anyone has signed in, an authorization error for such a client is
shown on an Ostiary page that names the client and where it would go, with a link; it is not an
automatic redirect. Admin-created clients, and clients an admin marked trusted, keep the RFC 6749
§4.1.2.1 redirect; after sign-in every client's errors redirect (the user chose to go there).
"""

from __future__ import annotations

import json

import httpx
import pytest

from app.main import create_app
from tests.support import (
    REDIRECT,
    admin_client,
    authorize_params,
    create_resource,
    create_user,
    login,
    pkce,
    query,
    register,
    registered_flow,
    trust_client,
)

pytestmark = pytest.mark.anyio

PHISH = "https://phish.example/login"
CIMD_URL = "https://client.example.com/oauth/client-metadata.json"

# Each way to make /authorize fail after the client and its redirect URI are known.
BAD_REQUESTS = {
    "invalid_scope": {"scope": "no-such-scope"},
    "invalid_target": {"resource": "https://unknown.example/mcp"},
    "invalid_request": {"code_challenge": None, "code_challenge_method": None},
    "login_required": {"prompt": "none"},
    "unsupported_response_type": {"response_type": "token"},
}


@pytest.fixture
def app(settings):
    """The real app; its outbound transport serves one metadata document (the network edge)."""
    document = {
        "client_id": CIMD_URL,
        "client_name": "Look-alike Notes",
        "redirect_uris": [PHISH],
        "grant_types": ["authorization_code"],
        "token_endpoint_auth_method": "none",
    }

    def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == CIMD_URL:
            return httpx.Response(200, content=json.dumps(document).encode(), headers={"Content-Type": "application/json"})
        return httpx.Response(404)

    application = create_app(settings, run_jobs=False, fetch_transport=httpx.MockTransport(handler))
    yield application
    application.state.runtime.engine.dispose()


async def start(client: httpx.AsyncClient, client_id: str, redirect_uri: str = PHISH, **extra) -> httpx.Response:
    _, challenge = pkce()
    return await client.get("/authorize", params=authorize_params(client_id, challenge, redirect_uri=redirect_uri, **extra))


def assert_interstitial(response: httpx.Response, error: str, client_name: str, host: str) -> None:
    """An Ostiary page, not a redirect: it names the client and the host, and links there."""
    assert response.status_code == 400, (response.status_code, response.headers.get("location"))
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert client_name in page and host in page
    assert f"error: {error}" in page
    # The link back carries the RFC 6749 §4.1.2.1 error, for a user who trusts the host.
    assert f'href="{PHISH}?' in page and "error=" + error in page.replace("&amp;", "&")


@pytest.mark.parametrize("error", list(BAD_REQUESTS))
async def test_self_registered_client_error_before_sign_in_is_a_page(client, runtime, error):
    """RFC 9700 §4.11.2: an RFC 7591 client's error, nobody signed in: a page, no redirect."""
    reg = await registered_flow(client, runtime, trusted=False, redirect_uris=[PHISH], client_name="Phishy Notes")
    response = await start(client, reg["client_id"], **BAD_REQUESTS[error])
    assert_interstitial(response, error, "Phishy Notes", "phish.example")


async def test_metadata_document_client_error_before_sign_in_is_a_page(client, runtime):
    """RFC 9700 §4.11.2: a Client ID Metadata Document is self-published: the same page."""
    create_resource(runtime)
    response = await start(client, CIMD_URL, scope="no-such-scope")
    assert_interstitial(response, "invalid_scope", "Look-alike Notes", "phish.example")


async def test_admin_created_client_error_redirects(client, runtime):
    """RFC 6749 §4.1.2.1: an operator's client keeps the error redirect."""
    create_resource(runtime)
    client_id, _ = admin_client(runtime, confidential=False, redirect_uris=[REDIRECT])
    response = await start(client, client_id, redirect_uri=REDIRECT, scope="no-such-scope")
    assert response.status_code == 302
    assert response.headers["location"].startswith(REDIRECT)
    assert query(response.headers["location"])["error"] == "invalid_scope"


async def test_client_marked_trusted_by_an_admin_redirects(client, runtime):
    """An admin vouches for a registered client: its errors redirect as RFC 6749 §4.1.2.1 says."""
    reg = await registered_flow(client, runtime, trusted=False, redirect_uris=[PHISH])
    assert (await start(client, reg["client_id"], prompt="none")).status_code == 400
    trust_client(runtime, reg["client_id"])
    response = await start(client, reg["client_id"], prompt="none")
    assert response.status_code == 302
    assert query(response.headers["location"])["error"] == "login_required"


async def test_after_sign_in_errors_redirect_for_every_client(client, runtime):
    """After sign-in the user chose to go to the client: RFC 6749 §4.1.2.1 redirect."""
    create_user(runtime)
    reg = await registered_flow(client, runtime, trusted=False, redirect_uris=[PHISH])
    assert (await login(client)).status_code == 303
    response = await start(client, reg["client_id"], scope="no-such-scope")
    assert response.status_code == 302
    assert response.headers["location"].startswith(PHISH)
    assert query(response.headers["location"])["error"] == "invalid_scope"


async def test_prompt_none_signed_in_without_consent_redirects_consent_required(client, runtime):
    """OIDC Core §3.1.2.6: consent_required comes after sign-in, so it redirects."""
    create_user(runtime)
    reg = await registered_flow(client, runtime, trusted=False, redirect_uris=[PHISH])
    assert (await login(client)).status_code == 303
    response = await start(client, reg["client_id"], prompt="none")
    assert response.status_code == 302
    assert query(response.headers["location"])["error"] == "consent_required"


async def test_page_escapes_the_client_name(client, runtime):
    """The client's name is the registrant's text: rendered escaped."""
    reg = await registered_flow(client, runtime, trusted=False, redirect_uris=[PHISH], client_name="<b>Notes</b>")
    response = await start(client, reg["client_id"], scope="no-such-scope")
    assert response.status_code == 400
    assert "<b>Notes</b>" not in response.text and "&lt;b&gt;Notes&lt;/b&gt;" in response.text


async def test_untrusted_redirect_uri_is_still_never_followed(client, runtime):
    """RFC 6749 §4.1.2.1: a redirect_uri not registered: the plain error page, no link to it."""
    reg = await register(client, redirect_uris=[PHISH])
    response = await start(client, reg["client_id"], redirect_uri="https://elsewhere.example/cb")
    assert response.status_code == 400
    assert "elsewhere.example" not in response.text
