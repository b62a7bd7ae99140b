"""Redirect URIs (OAuth 2.1 2.3 / 4.1.1, RFC 9700 4.1.3, RFC 8252 7): what may be registered,
how a request's redirect_uri is matched (exact string comparison; only the port of an http
loopback redirect may differ), and what /authorize does when it cannot trust one (an error page,
never a redirect: RFC 6749 4.1.2.1)."""

from __future__ import annotations

import pytest

from app.oauth.redirect_uris import InvalidRedirectUri, matches, validate_registered
from tests.support import (
    ISSUER,
    REDIRECT,
    authorize,
    authorize_params,
    exchange,
    pkce,
    query,
    register,
    registered_flow,
    signed_in_flow,
)

pytestmark = pytest.mark.anyio

CURSOR = "cursor://anysphere.cursor-mcp/oauth/callback"


# -- what may be registered (unit) -----------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("https://app.example.com/callback", id="https (OAuth 2.1 2.3.1)"),
        pytest.param("https://app.example.com/cb?tenant=1", id="https with a query (RFC 6749 3.1.2)"),
        pytest.param("https://app.example.com:8443/cb", id="https with a port"),
        pytest.param("http://127.0.0.1:33418/callback", id="http loopback 127.0.0.1 (RFC 8252 7.3)"),
        pytest.param("http://127.0.0.1/callback", id="http loopback without port"),
        pytest.param("http://[::1]:33418/callback", id="http loopback [::1] (RFC 8252 7.3)"),
        pytest.param("http://localhost:6274/oauth/callback", id="http localhost (MCP clients)"),
        pytest.param(CURSOR, id="private-use scheme, Cursor (RFC 8252 7.1)"),
        pytest.param("vscode://vscode.mcp-auth/callback", id="private-use scheme, VS Code"),
        pytest.param("com.example.app:/oauth2redirect/example", id="private-use reverse-domain scheme (RFC 8252 7.1)"),
    ],
)
def test_registration_accepts(uri):
    """OAuth 2.1 2.3.1 / RFC 8252 7.1, 7.3: https, http on loopback, private-use schemes."""
    assert validate_registered(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("http://app.example.com/callback", id="http non-loopback (OAuth 2.1 2.3.1)"),
        pytest.param("http://127.0.0.1.nip.io/cb", id="http on a host that only starts like loopback"),
        pytest.param("http://192.168.1.10:8080/cb", id="http on a private address"),
        pytest.param("https://*.example.com/callback", id="wildcard host (RFC 9700 4.1.3)"),
        pytest.param("https://app.example.com/*", id="wildcard path"),
        pytest.param("http://127.0.0.1:*/callback", id="wildcard port"),
        pytest.param("https://app.example.com/cb#frag", id="fragment (RFC 6749 3.1.2)"),
        pytest.param("https://app.example.com/cb#", id="empty fragment"),
        pytest.param("javascript:alert(document.domain)", id="javascript: scheme"),
        pytest.param("JavaScript:alert(1)", id="javascript: scheme, mixed case"),
        pytest.param("data:text/html,<script>alert(1)</script>", id="data: scheme"),
        pytest.param("file:///etc/passwd", id="file: scheme"),
        pytest.param("vbscript:msgbox", id="vbscript: scheme"),
        pytest.param("https://user:pass@app.example.com/cb", id="userinfo"),
        pytest.param("https://evil.example@app.example.com/cb", id="userinfo without password"),
        pytest.param("/callback", id="relative reference"),
        pytest.param("", id="empty"),
        pytest.param("https:///callback", id="https without host"),
        pytest.param("https://app.example.com:99999/cb", id="port out of range"),
        pytest.param("https://app.example.com/c b", id="space"),
        pytest.param("https://app.example.com/cb\n", id="control character"),
        pytest.param("HTTPS://app.example.com/cb", id="uppercase scheme (exact match would be unreliable)"),
        pytest.param("https://app.example.com/" + "a" * 2001, id="longer than 2000 characters"),
    ],
)
def test_registration_refuses(uri):
    """OAuth 2.1 2.3.1 / RFC 6749 3.1.2 / RFC 9700 4.1.3: never http elsewhere, wildcards,
    fragments, javascript:/data:/file:, userinfo."""
    with pytest.raises(InvalidRedirectUri):
        validate_registered(uri)


# -- matching a request's redirect_uri (unit) ---------------------------------------------------


@pytest.mark.parametrize(
    "registered, requested, expected",
    [
        # OAuth 2.1 4.1.1 / RFC 9700 4.1.3: exact string comparison
        pytest.param(["https://app.example.com/cb"], "https://app.example.com/cb", True, id="exact"),
        pytest.param(
            ["https://a.example/cb", "https://app.example.com/cb"], "https://app.example.com/cb", True, id="exact, second of two"
        ),
        pytest.param([CURSOR], CURSOR, True, id="private-use scheme, exact"),
        pytest.param(["https://app.example.com/cb?x=1"], "https://app.example.com/cb?x=1", True, id="registered query, exact"),
        # OAuth 2.1 8.4.2 / RFC 8252 7.3: loopback, any port
        pytest.param(["http://127.0.0.1:3000/cb"], "http://127.0.0.1:51234/cb", True, id="loopback 127.0.0.1 other port"),
        pytest.param(["http://127.0.0.1/cb"], "http://127.0.0.1:51234/cb", True, id="loopback registered without port"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://127.0.0.1/cb", True, id="loopback requested without port"),
        pytest.param(["http://[::1]:3000/cb"], "http://[::1]:40000/cb", True, id="loopback [::1] other port"),
        pytest.param(
            ["http://localhost:6274/oauth/callback"], "http://localhost:9999/oauth/callback", True, id="localhost other port"
        ),
        # ... but only the port
        pytest.param(["http://localhost:3000/cb"], "http://127.0.0.1:3000/cb", False, id="localhost is not 127.0.0.1"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://localhost:3000/cb", False, id="127.0.0.1 is not localhost"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://[::1]:3000/cb", False, id="127.0.0.1 is not [::1]"),
        pytest.param(["http://[::1]:3000/cb"], "http://[0:0:0:0:0:0:0:1]:3000/cb", False, id="[::1] spelled differently"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://127.0.0.2:3000/cb", False, id="another loopback address"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://127.0.0.1:3000/other", False, id="loopback other path"),
        pytest.param(["http://127.0.0.1:3000/cb"], "https://127.0.0.1:3000/cb", False, id="loopback https vs http"),
        pytest.param(["https://app.example.com/cb"], "https://app.example.com:8443/cb", False, id="https: port may not differ"),
        pytest.param([CURSOR], "cursor://anysphere.cursor-mcp:8080/oauth/callback", False, id="private-use: port may not differ"),
        # trailing slash
        pytest.param(["https://app.example.com/cb"], "https://app.example.com/cb/", False, id="trailing slash added"),
        pytest.param(["https://app.example.com/cb/"], "https://app.example.com/cb", False, id="trailing slash removed"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://127.0.0.1:4000/cb/", False, id="loopback trailing slash"),
        pytest.param(["https://app.example.com"], "https://app.example.com/", False, id="empty path vs /"),
        # case
        pytest.param(["https://app.example.com/cb"], "https://APP.example.com/cb", False, id="host case"),
        pytest.param(["https://app.example.com/cb"], "https://app.example.com/CB", False, id="path case"),
        pytest.param(["https://app.example.com/cb"], "HTTPS://app.example.com/cb", False, id="scheme case"),
        pytest.param(["http://localhost:3000/cb"], "http://LOCALHOST:4000/cb", False, id="loopback host case"),
        pytest.param([CURSOR], CURSOR.replace("anysphere", "AnySphere"), False, id="private-use case"),
        # prefix and extra path
        pytest.param(["https://app.example.com/cb"], "https://app.example.com/cb/extra", False, id="extra path segment"),
        pytest.param(["https://app.example.com/cb"], "https://app.example.com/cbx", False, id="prefix of the path"),
        pytest.param(["https://app.example.com/cb"], "https://app.example.com/c", False, id="truncated path"),
        pytest.param(["https://app.example.com/cb"], "https://app.example.com/cb/../cb", False, id="dot segments"),
        pytest.param(["https://app.example.com/cb"], "https://app.example.com.evil.com/cb", False, id="host suffix"),
        pytest.param(["https://app.example.com/cb"], "https://app.example.com/cb%2F..", False, id="encoded path"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://127.0.0.1:4000/cb/extra", False, id="loopback extra path"),
        # query
        pytest.param(["https://app.example.com/cb"], "https://app.example.com/cb?next=evil", False, id="query added"),
        pytest.param(["https://app.example.com/cb?x=1"], "https://app.example.com/cb", False, id="query removed"),
        pytest.param(["https://app.example.com/cb?x=1"], "https://app.example.com/cb?x=2", False, id="query changed"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://127.0.0.1:4000/cb?x=1", False, id="loopback query added"),
        # fragment
        pytest.param(["https://app.example.com/cb"], "https://app.example.com/cb#x", False, id="fragment"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://127.0.0.1:4000/cb#x", False, id="loopback fragment"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://127.0.0.1:4000/cb#", False, id="loopback empty fragment"),
        # userinfo
        pytest.param(["https://app.example.com/cb"], "https://evil@app.example.com/cb", False, id="userinfo"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://evil@127.0.0.1:4000/cb", False, id="loopback userinfo"),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://a:b@127.0.0.1:3000/cb", False, id="loopback userinfo same port"),
        pytest.param(
            ["http://127.0.0.1:3000/cb"], "http://127.0.0.1:4000@evil.example/cb", False, id="loopback-looking userinfo"
        ),
        # dangerous schemes, wildcards, http non-loopback
        pytest.param(["https://app.example.com/cb"], "javascript:alert(1)", False, id="javascript:"),
        pytest.param(["https://app.example.com/cb"], "data:text/html,x", False, id="data:"),
        pytest.param(["https://app.example.com/cb"], "file:///etc/passwd", False, id="file:"),
        pytest.param(["https://*.example.com/cb"], "https://app.example.com/cb", False, id="no wildcard expansion (host)"),
        pytest.param(["https://app.example.com/*"], "https://app.example.com/cb", False, id="no wildcard expansion (path)"),
        pytest.param(["https://app.example.com/cb"], "http://app.example.com/cb", False, id="http non-loopback vs https"),
        pytest.param(
            ["http://app.example.com/cb"], "http://app.example.com:8080/cb", False, id="http non-loopback: no port freedom"
        ),
        pytest.param(["http://127.0.0.1:3000/cb"], "http://127.0.0.1:notaport/cb", False, id="loopback bad port"),
        pytest.param([], "https://app.example.com/cb", False, id="nothing registered"),
        pytest.param([CURSOR], "cursor://anysphere.cursor-mcp/oauth/callback2", False, id="private-use other path"),
    ],
)
def test_matches(registered, requested, expected):
    """OAuth 2.1 4.1.1 / RFC 9700 4.1.3 (exact), OAuth 2.1 8.4.2 / RFC 8252 7.3 (loopback port)."""
    assert matches(registered, requested) is expected


# -- /authorize with an untrusted client or redirect URI (HTTP) --------------------------------


def assert_error_page(response):
    """RFC 6749 4.1.2.1: inform the resource owner; MUST NOT redirect to an untrusted URI."""
    assert response.status_code == 400, response.text
    assert "location" not in response.headers
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"client_id": "no-such-client"}, id="unknown client_id"),
        pytest.param({"client_id": None}, id="missing client_id"),
        pytest.param({"redirect_uri": "https://evil.example/callback"}, id="unregistered redirect_uri"),
        pytest.param({"redirect_uri": REDIRECT + "/"}, id="redirect_uri with trailing slash"),
        pytest.param({"redirect_uri": REDIRECT.replace("127.0.0.1", "localhost")}, id="localhost for 127.0.0.1"),
        pytest.param({"redirect_uri": REDIRECT + "#x"}, id="redirect_uri with fragment"),
        pytest.param({"redirect_uri": REDIRECT + "?x=1"}, id="redirect_uri with query"),
        pytest.param({"redirect_uri": "javascript:alert(1)"}, id="javascript: redirect_uri"),
        pytest.param({"redirect_uri": 'https://evil.example/"quoted\\'}, id="redirect_uri with quote and backslash"),
        pytest.param(
            {"redirect_uri": "https://evil.example/callback", "code_challenge": None},
            id="bad redirect_uri and other errors: still the page",
        ),
        pytest.param(
            {"client_id": "no-such-client", "resource": "https://unknown.example/mcp"},
            id="unknown client and other errors: still the page",
        ),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_untrusted_redirect_renders_error_page(client, runtime, change, method):
    """RFC 6749 4.1.2.1 / OAuth 2.1 4.1.2.1: an error page, never a redirect, until both the
    client and the redirect URI are trusted."""
    reg = await registered_flow(client, runtime)
    params = authorize_params(reg["client_id"], pkce()[1])
    params.update(change)
    params = {k: v for k, v in params.items() if v is not None}
    if method == "GET":
        response = await client.get("/authorize", params=params)
    else:
        response = await client.post("/authorize", data=params)
    assert_error_page(response)
    assert "evil.example" not in response.headers.get("location", "")


async def test_loopback_redirect_with_another_port_is_accepted(client, runtime):
    """OAuth 2.1 8.4.2 / RFC 8252 7.3: a native app's ephemeral port."""
    reg = await signed_in_flow(client, runtime)
    other = "http://127.0.0.1:40123/callback"
    verifier, challenge = pkce()

    response = await authorize(client, authorize_params(reg["client_id"], challenge, redirect_uri=other))
    assert response.status_code == 302, response.text
    assert response.headers["location"].startswith(other + "?")
    code = query(response.headers["location"])["code"]
    # OAuth 2.1 4.1.3: the same redirect_uri at /token
    token = await exchange(client, reg["client_id"], code, verifier, redirect_uri=other)
    assert token.status_code == 200, token.text


async def test_redirect_uri_may_be_omitted_with_exactly_one_registered(client, runtime):
    """OAuth 2.1 4.1.1 / RFC 6749 3.1.2.3: redirect_uri optional only if one is registered."""
    reg = await signed_in_flow(client, runtime)
    verifier, challenge = pkce()

    params = authorize_params(reg["client_id"], challenge, redirect_uri=None)
    response = await authorize(client, params)
    assert response.status_code == 302, response.text
    assert response.headers["location"].startswith(REDIRECT + "?")
    q = query(response.headers["location"])
    assert q["iss"] == ISSUER and q["state"] == params["state"]
    # RFC 6749 4.1.3: redirect_uri at /token is required only if it was in the request
    token = await exchange(client, reg["client_id"], q["code"], verifier, redirect_uri=None)
    assert token.status_code == 200, token.text


async def test_redirect_uri_required_with_several_registered(client, runtime):
    """OAuth 2.1 4.1.1: with several registered redirect URIs the request must name one; the
    server cannot know where to send an error, so it renders a page."""
    await registered_flow(client, runtime)
    reg = await register(client, redirect_uris=[REDIRECT, "http://127.0.0.1:9877/other"])
    params = authorize_params(reg["client_id"], pkce()[1], redirect_uri=None)
    assert_error_page(await client.get("/authorize", params=params))


async def test_private_use_redirect_end_to_end(client, runtime):
    """RFC 8252 7.1: a native app's private-use scheme redirect is matched exactly and used."""
    reg = await signed_in_flow(client, runtime, redirect_uris=[CURSOR])

    response = await authorize(client, authorize_params(reg["client_id"], pkce()[1], redirect_uri=CURSOR))
    assert response.status_code == 302, response.text
    assert response.headers["location"].startswith(CURSOR + "?")
    assert "code" in query(response.headers["location"])


# -- invisible characters and look-alike hosts (consent-page spoofing) ----------------------------


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("https://notes.example.com/cb\u2028https://evil.example", id="U+2028 line separator"),
        pytest.param("https://notes.example.com/\u202ebc", id="U+202E right-to-left override"),
        pytest.param("https://notes\u200b.example.com/cb", id="U+200B zero-width space"),
        pytest.param("https://notes.example.com/c\u00a0b", id="U+00A0 no-break space"),
        pytest.param("https://notes.example.com/cb\u0085", id="U+0085 next line (C1 control)"),
    ],
)
def test_invisible_and_separator_characters_are_refused(uri):
    """They would make the consent page show another address than the one registered."""
    with pytest.raises(InvalidRedirectUri, match="invisible or separator"):
        validate_registered(uri)


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("mailto:alice@example.com", id="mailto"),
        pytest.param("tel:+15550100", id="tel"),
        pytest.param("view-source:https://example.com/", id="view-source"),
        pytest.param("jar:https://example.com/x.jar!/", id="jar"),
        pytest.param("ms-settings:privacy", id="ms-settings"),
        pytest.param("chrome-extension://abcdef/cb", id="chrome-extension"),
        pytest.param("myapp:/callback", id="short scheme not on the list"),
    ],
)
def test_schemes_that_are_not_private_use_are_refused(uri):
    """RFC 8252 §7.1: a private-use scheme is a reverse-domain name (or a known MCP client's)."""
    with pytest.raises(InvalidRedirectUri, match="not a private-use scheme"):
        validate_registered(uri)


def test_the_short_scheme_list_is_a_setting():
    assert validate_registered("myapp:/callback", native_schemes=["myapp"]) == "myapp:/callback"
    assert validate_registered("com.example.myapp:/callback", native_schemes=[]) == "com.example.myapp:/callback"


@pytest.mark.parametrize("settings_overrides", [{"native_app_schemes": ["cursor"]}])
async def test_registration_refuses_a_scheme_off_the_configured_list(client, runtime):
    response = await client.post("/register", json={"redirect_uris": ["vscode://vscode.mcp-auth/callback"]})
    assert response.status_code == 400 and response.json()["error"] == "invalid_redirect_uri"
    assert (await client.post("/register", json={"redirect_uris": [CURSOR]})).status_code == 201


@pytest.mark.parametrize("name", ["Notes\u202eexe.txt", "Notes\u2028Verified by Ostiary", "Notes\u0007", "No\u200dtes"])
async def test_client_names_with_invisible_characters_are_refused(client, name):
    """RFC 7591 §2: client_name is shown to the user; bidi overrides and line breaks would let
    it read as something else."""
    response = await client.post("/register", json={"redirect_uris": [REDIRECT], "client_name": name})
    assert response.status_code == 400 and response.json()["error"] == "invalid_client_metadata"


async def test_consent_page_shows_an_international_host_in_punycode_too(client, runtime):
    """Look-alike letters (Cyrillic о in nоtes) show beside the ASCII spelling that is really
    registered."""
    lookalike = "https://n\u043etes.example.com/cb"
    reg = await signed_in_flow(client, runtime, redirect_uris=[lookalike])
    _, challenge = pkce()
    response = await authorize(client, authorize_params(reg["client_id"], challenge, redirect_uri=lookalike), decision="show")
    assert response.status_code in (200, 400), response.status_code
    assert "n\u043etes.example.com" in response.text and "xn--ntes-" in response.text
