"""What the pages tell a user about where they are, over HTTP (the browser side is
tests/e2e/test_pages_browser.py): the sign-in pages name the app's request they are part of, the
consent page shows the client's own links and logo (RFC 7591 §2) only over https and escaped,
explains "unverified", warns about loopback-only apps whichever way they registered, and lets
the user switch account back to the same request; and the page after a sign-out, a password
set from a link or two-step verification turned on says what just happened."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from app.main import create_app
from app.services import users as user_service
from app.stores import users as users_store
from tests.support import (
    PASSWORD,
    authorize_params,
    create_resource,
    create_user,
    csrf_from,
    enrol_totp,
    login,
    pkce,
    query,
    register,
    signed_in,
    signed_in_flow,
    totp_code,
)

pytestmark = pytest.mark.anyio

CIMD_URL = "https://notes.example.com/oauth/client.json"
SIGNED_OUT = "You have signed out."
PASSWORD_SET = "Your password is set. Sign in with it."
MFA_ON = "Two-step verification is on"
FLASH_RE = re.compile(r'<p class="flash" role="status">([^<]*)</p>')


@pytest.fixture
def documents() -> dict[str, dict]:
    """The Client ID Metadata Documents the network edge serves, by URL."""
    return {}


@pytest.fixture
def app(settings, documents):
    """The real app; its outbound requests reach `documents` only (conftest's `app`, overridden)."""

    def handler(request: httpx.Request) -> httpx.Response:
        doc = documents.get(str(request.url))
        if doc is None:
            return httpx.Response(404)
        return httpx.Response(200, content=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})

    application = create_app(settings, run_jobs=False, fetch_transport=httpx.MockTransport(handler))
    yield application
    application.state.runtime.engine.dispose()


def flash(html: str) -> str | None:
    match = FLASH_RE.search(html)
    return match.group(1) if match else None


async def start(client: httpx.AsyncClient, client_id: str, **extra) -> str:
    """An app's authorization request; the path it sends the browser to (sign-in or consent)."""
    response = await client.get("/authorize", params=authorize_params(client_id, pkce()[1], **extra))
    assert response.status_code == 303, response.text
    return response.headers["location"]


def links(html: str) -> dict[str, tuple[str, str]]:
    """The consent page's client links: label -> (href, the host shown beside it)."""
    found = re.findall(
        r'<li data-link="([^"]+)"><a href="([^"]*)"[^>]*>[^<]*<span[^>]*>[^<]*</span></a>\s*'
        r'<span class="mono link-host">(.*?)</span>',
        html,
    )
    return {label: (href, host.replace("<wbr>", "")) for label, href, host in found}


# -- the sign-in pages name the request ---------------------------------------------------------


async def test_sign_in_during_an_apps_request_names_the_app_and_the_mcp_server(client, runtime):
    """The sign-in page reached from /authorize says which app wants which MCP server, with
    their hosts, and that a self-registered app's name is its own claim; a plain sign-in, or a
    `next` that is no pending request, says nothing of the kind."""
    create_resource(runtime)
    reg = await register(client, client_name="Notes <b>Helper</b>")
    location = await start(client, reg["client_id"])
    assert location.startswith("/login?next=%2Fconsent%2F")
    page = (await client.get(location)).text
    context = page[page.index("data-pending") : page.index("</dl>", page.index("data-pending"))]
    assert "Notes &lt;b&gt;Helper&lt;/b&gt;" in context and "<b>Helper" not in page
    assert ">unverified</span>" in context
    assert "Example MCP" in context
    assert "mcp.<wbr>example.<wbr>com" in context  # the MCP server's host
    assert "127.<wbr>0.<wbr>0.<wbr>1:9876" in context  # where the app sends the user back
    assert "registered itself" in page

    assert "data-pending" not in (await client.get("/login")).text
    for other in ("/account", "/consent/not-a-handle", "/consent/" + "x" * 200):
        assert "data-pending" not in (await client.get("/login", params={"next": other})).text


async def test_sign_in_names_a_metadata_document_apps_address(client, runtime, documents):
    """CIMD §8.5: a metadata-document client is named with its client_id host."""
    create_resource(runtime)
    documents[CIMD_URL] = {"client_id": CIMD_URL, "client_name": "Notes CLI", "redirect_uris": ["http://127.0.0.1/cb"]}
    location = await start(client, CIMD_URL, redirect_uri="http://127.0.0.1:4567/cb")
    page = (await client.get(location)).text
    assert "Notes CLI" in page and "notes.<wbr>example.<wbr>com" in page
    assert ">unverified</span>" not in page


async def test_the_second_sign_in_step_names_the_request_too(client, runtime):
    """The TOTP step during an app's request names it as the password step did."""
    await signed_in_flow(client, runtime)
    await enrol_totp(client)
    await client.post("/logout", data={"csrf_token": csrf_from((await client.get("/logout")).text)})
    create_resource(runtime, uri="https://wiki.example.com/mcp", name="Team wiki")
    reg = await register(client, client_name="Wiki Helper")
    location = await start(client, reg["client_id"], resource="https://wiki.example.com/mcp")
    signed = await login(client, next_url=query(location)["next"])
    assert signed.headers["location"].startswith("/login/otp?next=%2Fconsent%2F")
    page = (await client.get(signed.headers["location"])).text
    assert "Wiki Helper" in page and "Team wiki" in page and "wiki.<wbr>example.<wbr>com" in page


# -- the consent page ---------------------------------------------------------------------------


async def test_consent_page_shows_the_clients_https_links_with_their_hosts_escaped(client, runtime):
    """RFC 7591 §2: client_uri, policy_uri and tos_uri are shown to the user, each with the
    host it leads to beside it; the URL is an attribute value, escaped."""
    reg = await signed_in_flow(
        client,
        runtime,
        client_uri='https://notes.example.com/?a=1&b="><script>alert(1)</script>',
        policy_uri="https://legal.example.org/privacy",
        tos_uri="https://legal.example.org:8443/terms",
    )
    page = (await client.get(await start(client, reg["client_id"]))).text
    assert "<script>alert(1)" not in page
    assert links(page) == {
        "Website": ("https://notes.example.com/?a=1&amp;b=&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;", "notes.example.com"),
        "Privacy policy": ("https://legal.example.org/privacy", "legal.example.org"),
        "Terms of service": ("https://legal.example.org:8443/terms", "legal.example.org:8443"),
    }
    assert 'rel="noopener noreferrer nofollow"' in page


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("http://notes.example.com/", id="http"),
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("data:text/html,<script>alert(1)</script>", id="data"),
        pytest.param("https://", id="no host"),
        pytest.param("https://bank.example@evil.example/", id="user information"),
        pytest.param("https://notes.example.com/a b", id="a space"),
        pytest.param(["https://notes.example.com/"], id="not a string"),
    ],
)
async def test_a_metadata_documents_links_and_logo_are_shown_only_over_https(client, runtime, documents, value):
    """A metadata document is stored as published: a link or logo that is not a plain https URL
    with a host is not shown at all (and the page's CSP lets no outside image in)."""
    await signed_in(client, runtime)
    documents[CIMD_URL] = {
        "client_id": CIMD_URL,
        "client_name": "Notes CLI",
        "redirect_uris": ["http://127.0.0.1/cb"],
        **{name: value for name in ("client_uri", "policy_uri", "tos_uri", "logo_uri")},
    }
    response = await client.get(await start(client, CIMD_URL, redirect_uri="http://127.0.0.1:4567/cb"))
    assert response.status_code == 200, response.text
    assert links(response.text) == {} and "data-link" not in response.text
    assert "<img" not in response.text
    assert "img-src 'self' data:;" in response.headers["content-security-policy"]
    assert "javascript:" not in response.text and "<script>alert" not in response.text


async def test_consent_page_shows_an_https_logo_sized_with_alt_text_and_lets_only_it_in(client, runtime, documents):
    """RFC 7591 §2 logo_uri: shown, sized, with alt text; the page's CSP allows that one image
    (CSP3: a source with a full path matches that path only) and nothing else from outside."""
    await signed_in(client, runtime)
    logo = "https://cdn.example.net/brand/notes-logo.png?v=2"
    documents[CIMD_URL] = {
        "client_id": CIMD_URL,
        "client_name": 'Notes "CLI"',
        "redirect_uris": ["http://127.0.0.1/cb"],
        "logo_uri": logo,
    }
    response = await client.get(await start(client, CIMD_URL, redirect_uri="http://127.0.0.1:4567/cb"))
    img = re.search(r"<img [^>]*>", response.text)
    assert img is not None
    assert 'src="https://cdn.example.net/brand/notes-logo.png?v=2"' in img.group(0)
    assert 'alt="Notes &#34;CLI&#34; logo"' in img.group(0)
    assert 'width="40" height="40"' in img.group(0) and 'referrerpolicy="no-referrer"' in img.group(0)
    csp = response.headers["content-security-policy"]
    assert "img-src 'self' data: https://cdn.example.net/brand/notes-logo.png;" in csp
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp  # the rest is unchanged


async def test_a_logo_the_csp_cannot_name_exactly_is_not_shown(client, runtime, documents):
    """A logo URL whose path holds a CSP separator (";" or ",") or a quote is left out rather
    than letting more than that image in."""
    await signed_in(client, runtime)
    documents[CIMD_URL] = {
        "client_id": CIMD_URL,
        "client_name": "Notes CLI",
        "redirect_uris": ["http://127.0.0.1/cb"],
        "logo_uri": "https://cdn.example.net/logo.png;script-src%20*",
    }
    response = await client.get(await start(client, CIMD_URL, redirect_uri="http://127.0.0.1:4567/cb"))
    assert "<img" not in response.text
    assert "img-src 'self' data:;" in response.headers["content-security-policy"]


async def test_unverified_is_explained_on_the_page_not_only_in_a_tooltip(client, runtime):
    """A dynamically registered client's mark says, in the page's text, what it means."""
    reg = await signed_in_flow(client, runtime, client_name="Notes Helper")
    page = (await client.get(await start(client, reg["client_id"]))).text
    badge = page.index(">unverified</span>")
    note = re.search(r'<span class="muted unverified-note">([^<]*)</span>', page)
    assert note is not None and note.start() > badge
    assert "registered itself" in note.group(1) and "nobody has checked" in note.group(1)
    assert 'title="This app registered itself' not in page


@pytest.mark.parametrize(
    "redirect_uris, warned",
    [
        pytest.param(["http://127.0.0.1:9876/callback"], True, id="127.0.0.1"),
        pytest.param(["http://localhost/callback"], True, id="localhost"),
        pytest.param(["http://[::1]/callback"], True, id="[::1]"),
        pytest.param(["http://127.0.0.1:9876/callback", "https://notes.example.com/callback"], False, id="also https"),
        pytest.param(["https://notes.example.com/callback"], False, id="https only"),
    ],
)
async def test_dynamically_registered_loopback_only_app_gets_the_localhost_warning(client, runtime, redirect_uris, warned):
    """The localhost warning is for every client whose redirect URIs are all on this computer,
    not only for metadata-document clients: anyone can register a look-alike of a local tool."""
    reg = await signed_in_flow(client, runtime, redirect_uris=redirect_uris)
    page = (await client.get(await start(client, reg["client_id"], redirect_uri=redirect_uris[0]))).text
    warning = '<p class="notice" role="note">This app only returns to addresses on your own computer (localhost).'
    assert (warning in page) is warned


# -- switching account --------------------------------------------------------------------------


async def test_switch_account_signs_out_and_comes_back_to_the_same_request(client, runtime):
    """The consent page's "Not you? Switch account": the sign-out page says what comes next,
    the sign-out lands on the sign-in page for the same pending request, and the other account
    finishes it: the code goes to the app with the request's own state."""
    await signed_in_flow(client, runtime)
    create_user(runtime, "bob")
    reg = await register(client, client_name="Notes Helper")
    params = authorize_params(reg["client_id"], pkce()[1])
    consent = (await client.get("/authorize", params=params)).headers["location"]
    page = (await client.get(consent)).text
    switch = re.search(r'Not you\? <a href="([^"]+)">Switch account</a>', page)
    assert switch is not None
    assert switch.group(1) == f"/logout?next={consent}"

    ask = await client.get(switch.group(1))
    assert ask.status_code == 200 and "Switch account" in ask.text and "Notes Helper" in ask.text
    assert f'name="next" value="{consent}"' in ask.text
    out = await client.post("/logout", data={"csrf_token": csrf_from(ask.text), "next": consent})
    assert out.status_code == 303 and query(out.headers["location"]) == {"next": consent}
    assert (await client.get("/account")).status_code == 303  # signed out

    sign_in = (await client.get(out.headers["location"])).text
    assert flash(sign_in) == SIGNED_OUT and "Notes Helper" in sign_in
    assert (await login(client, "bob", PASSWORD, next_url=consent)).headers["location"] == consent
    page = (await client.get(consent)).text
    assert re.search(r"<dt>Signed in as</dt>\s*<dd>bob ", page)
    done = await client.post(consent, data={"decision": "allow", "csrf_token": csrf_from(page)})
    assert done.status_code == 302 and query(done.headers["location"])["state"] == params["state"]


async def test_sign_out_goes_back_only_to_a_path_of_ours(client, runtime):
    """The `next` of a sign-out is a same-origin path (RFC 9700 §4.11: no open redirect)."""
    await signed_in_flow(client, runtime)
    page = (await client.get("/logout", params={"next": "https://evil.example/"})).text
    assert 'name="next"' not in page
    out = await client.post("/logout", data={"csrf_token": csrf_from(page), "next": "//evil.example/"})
    assert out.headers["location"] == "/login"


# -- what just happened ---------------------------------------------------------------------------


async def test_the_page_after_signing_out_says_so_once(client, runtime):
    await signed_in_flow(client, runtime)
    out = await client.post("/logout", data={"csrf_token": csrf_from((await client.get("/logout")).text)})
    assert out.headers["location"] == "/login"
    assert flash((await client.get("/login")).text) == SIGNED_OUT
    assert flash((await client.get("/login")).text) is None  # shown once


async def test_the_page_after_setting_a_password_from_a_link_says_so(client, runtime):
    create_user(runtime, "carol")
    with runtime.sessions() as db:
        user = users_store.by_username(db, "carol")
        assert user is not None
        link = user_service.new_password_link(db, runtime.keyring, runtime.settings.issuer, user, actor_id=user.id)
        db.commit()
    path = link.removeprefix(runtime.settings.issuer)
    page = (await client.get(path)).text
    data = {"csrf_token": csrf_from(page), "password": "a new long password", "repeat_password": "a new long password"}
    done = await client.post(path, data=data)
    assert done.status_code == 303 and done.headers["location"] == "/login"
    assert flash((await client.get("/login")).text) == PASSWORD_SET
    assert (await login(client, "carol", "a new long password")).status_code == 303


async def test_the_page_after_turning_on_two_step_verification_says_so(client, runtime):
    """The recovery codes come first (they are shown once); the page "Continue" leads to says
    that two-step verification is now on."""
    await signed_in_flow(client, runtime)
    page = (await client.get("/account/mfa")).text
    secret = re.search(r'data-secret="([A-Z2-7]+)"', page).group(1)
    codes = await client.post("/account/mfa", data={"csrf_token": csrf_from(page), "code": totp_code(secret)})
    assert codes.status_code == 200 and "shown only now" in codes.text
    assert flash(codes.text) is None
    after = (await client.get("/account")).text
    assert (flash(after) or "").startswith(MFA_ON)
    assert flash((await client.get("/account")).text) is None


@pytest.mark.parametrize("value", ["<script>alert(1)</script>", "You have been hacked", "signed-out2"])
async def test_a_flash_cookie_shows_only_fixed_text(client, value):
    """The cookie names a message; the page shows that message's fixed text, never the value."""
    client.cookies.set("ostiary-flash", value)
    page = (await client.get("/login")).text
    assert flash(page) is None and "alert(1)" not in page and "hacked" not in page


async def test_a_flash_is_never_taken_from_the_url(client):
    page = (await client.get("/login", params={"flash": "signed-out", "done": "signed-out"})).text
    assert flash(page) is None


# -- helpers of the above, checked once ---------------------------------------------------------


def test_links_helper_reads_what_the_template_writes():
    html = (
        '<li data-link="Website"><a href="https://a.example/" target="_blank" rel="x">Website'
        '<span class="visually-hidden"> (opens in a new tab)</span></a>\n          '
        '<span class="mono link-host">a.<wbr>example</span></li>'
    )
    assert links(html) == {"Website": ("https://a.example/", "a.example")}
