"""Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document-02, as MCP 2025-11-25
and 2026-07-28 use them; "CIMD §n" below is a section of -02): a client_id that is an https URL names a JSON document the client publishes. Ostiary fetches it
(only the network edge is faked here: httpx.MockTransport), validates it, caches it per its HTTP
cache headers, renders an error page for every failure, and never fetches at /token.

The real guarded transport (SSRF rules, TLS) is tested in test_fetch_ssrf.py."""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
import time
from collections.abc import Callable
from email.utils import formatdate

import httpx
import pytest
from sqlalchemy import select, text

from app.main import create_app
from app.models import Client
from app.models.client import KIND_METADATA_DOCUMENT
from app.oauth.cimd import cache_lifetime
from app.settings import Settings
from tests.support import (
    REDIRECT,
    audit_events,
    authorize,
    authorize_params,
    csrf_from,
    exchange,
    pkce,
    query,
    refresh,
    signed_in,
    verify_jwt,
)

pytestmark = pytest.mark.anyio

CLIENT_ID = "https://client.example.com/oauth/client-metadata.json"


def document(client_id: str = CLIENT_ID, **fields) -> dict:
    doc = {
        "client_id": client_id,
        "client_name": "Example MCP Client",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


class MetadataHosts:
    """The network edge: what each URL answers, and every request made to it."""

    def __init__(self) -> None:
        self.answers: dict[str, Callable[[httpx.Request], httpx.Response]] = {}
        self.requests: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.get(str(request.url))
        return answer(request) if answer else httpx.Response(404, json={"error": "not found"})

    def serve(self, doc: dict | None = None, *, url: str = CLIENT_ID, headers: dict | None = None) -> None:
        body = json.dumps(document() if doc is None else doc).encode()
        self.answer(
            url,
            lambda request: httpx.Response(200, content=body, headers={"Content-Type": "application/json", **(headers or {})}),
        )

    def answer(self, url: str, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers[url] = respond

    def fetches(self, url: str = CLIENT_ID) -> int:
        return sum(1 for r in self.requests if str(r.url) == url)


@pytest.fixture
def hosts() -> MetadataHosts:
    return MetadataHosts()


@pytest.fixture
def app(settings, hosts):
    """The real app, with its outbound transport replaced by `hosts` (conftest's `app`, overridden)."""
    application = create_app(settings, run_jobs=False, fetch_transport=httpx.MockTransport(hosts.handler))
    yield application
    application.state.runtime.engine.dispose()


def stored(runtime, client_id: str = CLIENT_ID) -> Client | None:
    with runtime.sessions() as db:
        return db.scalar(select(Client).where(Client.id == client_id))


def expire_document(runtime, client_id: str = CLIENT_ID) -> None:
    with runtime.engine.begin() as conn:
        conn.execute(
            text("UPDATE clients SET metadata_expires_at = :t WHERE id = :id"), {"t": int(time.time()) - 1, "id": client_id}
        )


async def start(client, client_id: str = CLIENT_ID, **extra) -> httpx.Response:
    _, challenge = pkce()
    return await client.get("/authorize", params=authorize_params(client_id, challenge, **extra))


def assert_error_page(response: httpx.Response, *fragments: str) -> None:
    """RFC 6749 §4.1.2.1: until the client is trusted, /authorize renders a page, never redirects."""
    assert response.status_code == 400, (response.status_code, response.headers, response.text[:500])
    assert response.headers["content-type"].startswith("text/html")
    assert "location" not in response.headers
    for fragment in fragments:
        assert fragment in response.text, response.text


async def full_flow(client, client_id: str = CLIENT_ID, redirect_uri: str = REDIRECT, **extra) -> dict:
    """/authorize through consent, then the code exchange; returns the token response."""
    verifier, challenge = pkce()
    params = authorize_params(client_id, challenge, redirect_uri=redirect_uri, **extra)
    response = await authorize(client, params)
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(redirect_uri), location
    q = query(location)
    assert "code" in q, q
    token = await exchange(client, client_id, q["code"], verifier, redirect_uri=redirect_uri)
    assert token.status_code == 200, token.text
    return token.json()


# -- discovery ----------------------------------------------------------------------------------


async def test_metadata_advertises_client_id_metadata_document_support(client):
    """MCP 2025-11-25 / CIMD §6: the server says it accepts metadata-document client_ids."""
    doc = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert doc["client_id_metadata_document_supported"] is True


# -- a valid document (CIMD §3, §4) -------------------------------------------------------------


async def test_valid_document_consent_shows_client_id_host_and_localhost_warning(client, runtime, hosts):
    """CIMD §8.5 (phishing): the page names the client_id's host prominently and (MCP, client ID
    metadata documents), since every redirect URI is on localhost, warns that only a locally started app may be allowed; the
    flow completes to a token whose client_id is the URL."""
    await signed_in(client, runtime)
    hosts.serve()
    verifier, challenge = pkce()
    params = authorize_params(CLIENT_ID, challenge)
    response = await client.get("/authorize", params=params)
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith("/consent/")

    page = await client.get(location)
    assert page.status_code == 200
    assert '<span class="mono client-host">client.example.com</span>' in page.text
    assert "Example MCP Client" in page.text
    assert "localhost" in page.text and 'class="notice"' in page.text
    assert "unverified" not in page.text  # a metadata document is identified by its address

    decided = await client.post(location, data={"decision": "allow", "csrf_token": csrf_from(page.text)})
    assert decided.status_code == 302
    q = query(decided.headers["location"])
    assert decided.headers["location"].startswith(REDIRECT) and q["state"] == params["state"]
    token = await exchange(client, CLIENT_ID, q["code"], verifier)
    assert token.status_code == 200, token.text
    claims = (await verify_jwt(client, token.json()["access_token"])).claims
    assert claims["client_id"] == CLIENT_ID

    row = stored(runtime)
    assert row.kind == KIND_METADATA_DOCUMENT and row.name == "Example MCP Client"
    assert row.token_endpoint_auth_method == "none" and row.secret_hash is None
    assert hosts.fetches() == 1
    fetched = hosts.requests[0]
    assert fetched.method == "GET" and "application/json" in fetched.headers["accept"]
    assert audit_events(runtime, "client.metadata_fetched")


async def test_consent_has_no_localhost_warning_when_a_redirect_uri_is_not_local(client, runtime, hosts):
    """MCP (client ID metadata documents): the extra warning is for documents whose redirect URIs
    are all on localhost."""
    await signed_in(client, runtime)
    hosts.serve(document(redirect_uris=[REDIRECT, "https://client.example.com/callback"]))
    response = await start(client)
    assert response.status_code == 303, response.text
    page = await client.get(response.headers["location"])
    assert '<span class="mono client-host">client.example.com</span>' in page.text
    assert 'class="notice"' not in page.text


# -- refused documents: an error page, never a redirect (CIMD §4, §5, §5.1; RFC 6749 §4.1.2.1) --


def _json(doc: dict, **headers) -> Callable[[httpx.Request], httpx.Response]:
    body = json.dumps(doc).encode()
    return lambda request: httpx.Response(200, content=body, headers={"Content-Type": "application/json", **headers})


def _timeout(request: httpx.Request) -> httpx.Response:
    raise httpx.ReadTimeout("timed out", request=request)


def _connect_error(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _streamed(size: int) -> Callable[[httpx.Request], httpx.Response]:
    def respond(request):
        chunks = (b" " * 1024 for _ in range(size // 1024))  # no Content-Length: counted as read
        return httpx.Response(200, headers={"Content-Type": "application/json"}, content=chunks)

    return respond


BIG = document(client_uri="https://client.example.com/" + "a" * 6 * 1024)  # about 6 KB

REFUSED = [
    pytest.param(
        _json(document(client_id="https://client.example.com/other.json")),
        "client_id does not match",
        id="client_id mismatch (CIMD 4)",
    ),
    pytest.param(
        _json(document(client_id=CLIENT_ID + "/")),
        "client_id does not match",
        id="client_id differs by a slash (CIMD 4 simple string comparison)",
    ),
    pytest.param(
        lambda r: httpx.Response(302, headers={"Location": "https://evil.example/doc.json"}),
        "redirects are not followed",
        id="302 not followed (CIMD 5)",
    ),
    pytest.param(lambda r: httpx.Response(301, headers={"Location": CLIENT_ID + "?x"}), "301", id="301 not followed"),
    pytest.param(lambda r: httpx.Response(404), "answered 404", id="404 (CIMD 5: only 200 counts)"),
    pytest.param(lambda r: httpx.Response(500), "answered 500", id="500 (CIMD 5: only 200 counts)"),
    pytest.param(
        lambda r: httpx.Response(200, content=json.dumps(document()).encode(), headers={"Content-Type": "text/html"}),
        "not JSON",
        id="non-JSON content type (CIMD 4)",
    ),
    pytest.param(lambda r: httpx.Response(200, content=json.dumps(document()).encode()), "not JSON", id="no content type"),
    pytest.param(
        lambda r: httpx.Response(200, content=b"{not json", headers={"Content-Type": "application/json"}),
        "not valid JSON",
        id="invalid JSON",
    ),
    pytest.param(_json([document()]), "not a JSON object", id="JSON array"),  # type: ignore[arg-type]
    pytest.param(_json(BIG), "larger than 5120 bytes", id="6 KB body with Content-Length (5 KB cap)"),
    pytest.param(_streamed(6 * 1024), "larger than 5120 bytes", id="6 KB streamed body (5 KB cap)"),
    pytest.param(
        lambda r: httpx.Response(
            200,
            content=gzip.compress(json.dumps(document()).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ),
        "compressed",
        id="gzip although identity was asked (no decompression bomb)",
    ),
    pytest.param(_timeout, "did not answer in time", id="timeout"),
    pytest.param(_connect_error, "could not be fetched", id="connection error"),
    pytest.param(
        _json(document(token_endpoint_auth_method="client_secret_basic")), "shared secret", id="client_secret_basic (CIMD 4.1)"
    ),
    pytest.param(
        _json(document(token_endpoint_auth_method="client_secret_post")), "shared secret", id="client_secret_post (CIMD 4.1)"
    ),
    pytest.param(
        _json(document(token_endpoint_auth_method="client_secret_jwt")), "shared secret", id="client_secret_jwt (CIMD 4.1)"
    ),
    pytest.param(
        _json(document(client_secret="s3cr3t-in-public")), "client_secret", id="client_secret in the document (CIMD 4.1)"
    ),
    pytest.param(
        _json(document(token_endpoint_auth_method=None, token_endpoint_auth_methods_supported=["client_secret_basic"])),
        "shared secret",
        id="only shared-secret methods offered (ChatGPT spelling)",
    ),
    pytest.param(_json(document(client_name=None)), "client_name", id="no client_name"),
    pytest.param(_json(document(redirect_uris=None)), "redirect_uris", id="no redirect_uris"),
    pytest.param(
        _json(document(redirect_uris=["http://evil.example/cb"])), "invalid redirect URI", id="non-loopback http redirect"
    ),
    pytest.param(_json(document(grant_types=["client_credentials"])), "authorization_code", id="no authorization_code grant"),
]


@pytest.mark.parametrize(("respond", "message"), REFUSED)
async def test_refused_document_gives_an_error_page(client, runtime, hosts, respond, message):
    """CIMD §4, §4.1, §5, §5.1: each of these documents (or answers) is refused with an HTML error page
    at /authorize (400) naming the reason, never a redirect to a URI nobody vouched for; the
    client is not stored and the refusal is audited."""
    await signed_in(client, runtime)
    hosts.answer(CLIENT_ID, respond)
    response = await start(client)
    assert_error_page(response)
    # What was wrong with the fetched document is shown; why a fetch failed only in the audit
    # row and the log (it would let anyone probe the network).
    assert message in response.text or ("could not be fetched" in response.text and message not in response.text)
    assert hosts.fetches() == 1  # fetched once; a 3xx Location is never followed
    assert len(hosts.requests) == 1
    assert stored(runtime) is None
    assert message in audit_events(runtime, "client.metadata_refused")[-1].details["reason"]


@pytest.mark.parametrize("settings_overrides", [pytest.param({"cimd_timeout": 0.2}, id="timeout 0.2 s")])
async def test_slow_drip_body_is_cut_off(client, runtime, hosts, settings_overrides):
    """The timeout bounds the whole fetch, not only each read: a server sending one byte at a
    time cannot hold a worker (here: a 5 s drip is cut off well before it ends)."""

    def drip(request):
        def chunks():
            for _ in range(100):
                time.sleep(0.05)
                yield b" "

        return httpx.Response(200, headers={"Content-Type": "application/json"}, content=chunks())

    await signed_in(client, runtime)
    hosts.answer(CLIENT_ID, drip)
    started = time.monotonic()
    assert_error_page(await start(client), "could not be fetched")
    assert time.monotonic() - started < 2.5
    assert "did not answer in time" in audit_events(runtime, "client.metadata_refused")[-1].details["reason"]


async def test_redirect_uri_not_in_document_gives_an_error_page(client, runtime, hosts):
    """CIMD §4.2 / OAuth 2.1 §4.1.2.1: a redirect_uri the document does not list is not trusted:
    error page, no redirect to it."""
    await signed_in(client, runtime)
    hosts.serve(document(redirect_uris=["https://client.example.com/callback"]))
    response = await start(client, redirect_uri="https://attacker.example/callback")
    assert_error_page(response)
    assert "attacker.example" not in response.headers.get("location", "")


async def test_failure_before_sign_in_is_an_error_page_too(client, runtime, hosts):
    """The document is checked before anything else: a signed-out browser sees the error page,
    not the sign-in page."""
    hosts.answer(CLIENT_ID, _timeout)
    assert_error_page(await start(client), "could not be fetched")


@pytest.mark.parametrize(
    "client_id",
    [
        pytest.param("http://client.example.com/client.json", id="http (CIMD 3: https)"),
        pytest.param("https://client.example.com", id="no path (CIMD 3)"),
        pytest.param("https://client.example.com/", id="root path only (CIMD 3)"),
        pytest.param("https://client.example.com/client.json#frag", id="fragment (CIMD 3)"),
        pytest.param("https://user:pw@client.example.com/client.json", id="userinfo (CIMD 3)"),
        pytest.param("https://user@client.example.com/client.json", id="username only (CIMD 3)"),
        pytest.param("https://client.example.com/a/../client.json", id="dot-dot segment (CIMD 3)"),
        pytest.param("https://client.example.com/./client.json", id="dot segment (CIMD 3)"),
        pytest.param("https://client.example.com/a/%2e%2E/client.json", id="percent-encoded dot-dot segment (RFC 3986 6.2.2.2)"),
        pytest.param("https://client.example.com:99999/client.json", id="bad port"),
    ],
)
async def test_client_id_url_rules(client, runtime, hosts, client_id):
    """CIMD §3: a client_id URL must be https with a path, without fragment, user info or dot
    segments; anything else is refused before any fetch, with an error page."""
    await signed_in(client, runtime)
    hosts.serve(document(client_id=client_id), url=client_id)
    response = await start(client, client_id=client_id)
    assert_error_page(response)
    assert hosts.requests == []
    assert stored(runtime, client_id) is None


# -- caching (CIMD §5.2) ----------------------------------------------------------------------


async def test_cache_hit_within_max_age_does_not_fetch(client, runtime, hosts):
    """CIMD §5.2: a document is cached per its HTTP cache headers; a second /authorize within
    max-age uses the stored copy."""
    await signed_in(client, runtime)
    hosts.serve(headers={"Cache-Control": "max-age=3600"})
    for _ in range(2):
        response = await start(client)
        assert response.status_code == 303, response.text
    assert hosts.fetches() == 1
    row = stored(runtime)
    assert 3600 - 60 <= row.metadata_expires_at - int(time.time()) <= 3600


async def test_expired_document_is_fetched_again_and_changes_apply(client, runtime, hosts):
    """CIMD §5.2: once the cache lifetime is over the document is fetched again, and what it now
    says (name, redirect URIs) is what counts."""
    await signed_in(client, runtime)
    hosts.serve(headers={"Cache-Control": "max-age=3600"})
    assert (await start(client)).status_code == 303
    expire_document(runtime)
    hosts.serve(document(client_name="Renamed Client", redirect_uris=["http://127.0.0.1:7000/cb"]))
    response = await start(client, redirect_uri="http://127.0.0.1:7000/cb")
    assert response.status_code == 303, response.text
    assert hosts.fetches() == 2
    row = stored(runtime)
    assert row.name == "Renamed Client" and row.redirect_uris == ["http://127.0.0.1:7000/cb"]
    # the old redirect URI is no longer listed
    assert_error_page(await start(client))


async def test_consent_is_asked_again_when_the_document_changes_its_redirect_hosts(client, runtime, hosts):
    """docs/decisions.md#consent-is-bound-to-what-the-user-saw: a consent given to the document's
    redirect hosts does not cover new ones the document publishes later."""
    await signed_in(client, runtime)
    hosts.serve(headers={"Cache-Control": "max-age=3600"})
    await full_flow(client, scope="mcp:read")
    silent = await start(client, scope="mcp:read")
    assert silent.status_code == 302 and "code" in query(silent.headers["location"])
    expire_document(runtime)
    moved = "https://new-home.example/cb"
    hosts.serve(document(redirect_uris=[REDIRECT, moved]))
    asked = await start(client, scope="mcp:read", redirect_uri=moved)
    assert asked.status_code == 303 and "/consent/" in asked.headers["location"]


async def test_expired_document_that_now_fails_is_not_used(client, runtime, hosts):
    """CIMD §5.1, §5.2: a stale copy is not a fallback; a failed refresh is an error page."""
    await signed_in(client, runtime)
    hosts.serve()
    assert (await start(client)).status_code == 303
    expire_document(runtime)
    hosts.answer(CLIENT_ID, lambda r: httpx.Response(503))
    assert_error_page(await start(client), "could not be fetched")
    assert "answered 503" in audit_events(runtime, "client.metadata_refused")[-1].details["reason"]


async def test_errors_are_not_cached(client, runtime, hosts):
    """CIMD §5.2, docs/decisions.md#metadata-documents-are-cached-between-a-floor-and-a-ceiling: a
    failed fetch is not remembered; the next request fetches again and succeeds as soon as the
    document is good."""
    await signed_in(client, runtime)
    hosts.answer(CLIENT_ID, lambda r: httpx.Response(500))
    assert_error_page(await start(client))
    hosts.serve()
    response = await start(client)
    assert response.status_code == 303, response.text
    assert hosts.fetches() == 2


NOW = 1_700_000_000.0


def http_date(offset: int) -> str:
    return formatdate(NOW + offset, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"Cache-Control": "max-age=600"}, 600, id="max-age within bounds"),
        pytest.param({"Cache-Control": "public, max-age=1200"}, 1200, id="max-age among directives"),
        pytest.param({"Cache-Control": "max-age=10"}, 300, id="max-age below the floor"),
        pytest.param({"Cache-Control": "max-age=0"}, 0, id="max-age=0 -> not cached (no floor)"),
        pytest.param({"Cache-Control": "max-age=999999"}, 7200, id="max-age above the ceiling"),
        pytest.param({"Cache-Control": "s-maxage=50"}, 300, id="s-maxage is not max-age"),
        pytest.param({"Cache-Control": "no-store, max-age=600"}, 0, id="no-store -> not cached (no floor)"),
        pytest.param({"Cache-Control": "no-cache"}, 0, id="no-cache -> not cached (no floor)"),
        pytest.param({"Cache-Control": "max-age=00"}, 0, id="max-age=00 -> not cached"),
        pytest.param({"Expires": http_date(900)}, 900, id="Expires within bounds"),
        pytest.param({"Expires": http_date(10)}, 300, id="Expires below the floor"),
        pytest.param({"Expires": http_date(-600)}, 300, id="Expires in the past"),
        pytest.param({"Expires": http_date(10**6)}, 7200, id="Expires above the ceiling"),
        pytest.param({"Expires": "not a date"}, 300, id="invalid Expires"),
        pytest.param(
            {"Cache-Control": "max-age=600", "Expires": http_date(3000)}, 600, id="max-age wins over Expires (RFC 9111 5.3)"
        ),
        pytest.param({}, 300, id="no cache headers -> floor"),
    ],
)
def test_cache_lifetime_honours_headers_within_floor_and_ceiling(headers, expected):
    """CIMD §5.2 / RFC 9111 §4.2.1: Cache-Control max-age, else Expires, bounded by
    OSTIARY_CIMD_CACHE_MIN and OSTIARY_CIMD_CACHE_MAX."""
    settings = Settings(cimd_cache_min=300, cimd_cache_max=7200)
    assert cache_lifetime(httpx.Headers(headers), settings, at=NOW) == expected


@pytest.mark.parametrize("settings_overrides", [pytest.param({"cimd_cache_min": 60, "cimd_cache_max": 600}, id="bounds")])
async def test_stored_expiry_follows_the_ceiling_setting(client, runtime, hosts, settings_overrides):
    """The lifetime stored in the clients table is the bounded one (here: the 600 s ceiling)."""
    await signed_in(client, runtime)
    hosts.serve(headers={"Cache-Control": "max-age=86400"})
    assert (await start(client)).status_code == 303
    assert 540 <= stored(runtime).metadata_expires_at - int(time.time()) <= 600


# -- documents of shipping clients (docs/decisions.md#chatgpt-and-claude-desktop-metadata-quirks-are-tolerated) --


async def test_chatgpt_style_document_with_auth_methods_supported_is_accepted(client, runtime, hosts):
    """ChatGPT writes the server-metadata field `token_endpoint_auth_methods_supported` where
    CIMD §4 / RFC 7591 §2 say `token_endpoint_auth_method`: read it, pick `none`."""
    client_id = "https://chatgpt.com/oauth/client-metadata.json"
    doc = document(
        client_id=client_id,
        client_name="ChatGPT",
        redirect_uris=["https://chatgpt.com/connector_platform_oauth_redirect"],
        token_endpoint_auth_method=None,
        token_endpoint_auth_methods_supported=["client_secret_post", "none"],
    )
    hosts.serve(doc, url=client_id)
    await signed_in(client, runtime)
    token = await full_flow(client, client_id, redirect_uri="https://chatgpt.com/connector_platform_oauth_redirect")
    assert token["token_type"].lower() == "bearer"
    assert stored(runtime, client_id).token_endpoint_auth_method == "none"


async def test_claude_desktop_style_document_drops_the_jwt_bearer_grant(client, runtime, hosts):
    """Claude Desktop's document lists `urn:ietf:params:oauth:grant-type:jwt-bearer`, which a
    public client cannot use: the grant is dropped, the client accepted."""
    client_id = "https://claude.ai/oauth/mcp-oauth-client-metadata"
    redirect = "https://claude.ai/api/mcp/auth_callback"
    doc = document(
        client_id=client_id,
        client_name="Claude",
        client_uri="https://claude.ai",
        redirect_uris=[redirect],
        grant_types=["authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:jwt-bearer"],
        token_endpoint_auth_method="none",
    )
    hosts.serve(doc, url=client_id)
    await signed_in(client, runtime)
    token = await full_flow(client, client_id, redirect_uri=redirect)
    assert "refresh_token" in token
    assert stored(runtime, client_id).grant_types == ["authorization_code", "refresh_token"]


async def test_vscode_style_loopback_redirect_with_another_port(client, runtime, hosts):
    """VS Code lists `http://127.0.0.1:33418/` and asks with an ephemeral port: the loopback port
    may differ (OAuth 2.1 §8.4.2, RFC 8252 §7.3)."""
    client_id = "https://vscode.dev/oauth/client-metadata.json"
    doc = document(
        client_id=client_id,
        client_name="Visual Studio Code",
        redirect_uris=["http://127.0.0.1:33418/", "https://vscode.dev/redirect"],
        token_endpoint_auth_method=None,
        grant_types=None,
    )
    hosts.serve(doc, url=client_id)
    await signed_in(client, runtime)
    await full_flow(client, client_id, redirect_uri="http://127.0.0.1:54321/")


async def test_claude_code_style_localhost_callback(client, runtime, hosts):
    """Claude Code: `http://localhost:<port>/callback` in its document, any port at request time."""
    client_id = "https://claude.ai/oauth/claude-code-client-metadata"
    hosts.serve(
        document(client_id=client_id, client_name="Claude Code", redirect_uris=["http://localhost/callback"]), url=client_id
    )
    await signed_in(client, runtime)
    await full_flow(client, client_id, redirect_uri="http://localhost:45454/callback")


# -- the token endpoint never fetches (docs/decisions.md#the-token-endpoint-never-fetches-metadata-documents)


async def test_token_endpoint_uses_the_stored_document_and_never_fetches(client, runtime, hosts):
    """The code exchange and refresh use the document stored at /authorize, even once its cache
    lifetime is over (and even if the URL now fails): /token never makes an outbound request."""
    await signed_in(client, runtime)
    hosts.serve()
    verifier, challenge = pkce()
    response = await authorize(client, authorize_params(CLIENT_ID, challenge))
    assert response.status_code == 302, response.text
    code = query(response.headers["location"])["code"]
    assert hosts.fetches() == 1

    expire_document(runtime)
    hosts.answer(CLIENT_ID, _timeout)
    token = await exchange(client, CLIENT_ID, code, verifier)
    assert token.status_code == 200, token.text
    refreshed = await refresh(client, CLIENT_ID, token.json()["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert hosts.fetches() == 1


async def test_token_endpoint_with_an_unseen_document_url_is_invalid_client(client, runtime, hosts):
    """A metadata URL never resolved at /authorize is an unknown client at /token: 401
    invalid_client, and no fetch."""
    hosts.serve()
    response = await client.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": "x",
            "code_verifier": "y" * 43,
            "redirect_uri": REDIRECT,
            "client_id": CLIENT_ID,
        },
    )
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert hosts.requests == []


# -- fetching costs little: capped concurrency, a block list ------------------------------------------


class SlowHosts(MetadataHosts):
    """Every document answers after `delay` seconds; counts how many are fetched at once."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay, self.now, self.most = delay, 0, 0
        self._lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.delay)
            return super().handler(request)
        finally:
            with self._lock:
                self.now -= 1


@pytest.mark.parametrize("settings_overrides", [{"cimd_max_fetches": 3, "cimd_max_fetches_per_host": 2}])
async def test_slow_hosts_get_capped_fetches_and_other_requests_are_not_delayed(settings, settings_overrides, new_client):
    """A slow document host holds at most two fetches at once (three over all hosts); the rest
    are refused at once with a retry-later page, and an unrelated page answers promptly."""
    hosts = SlowHosts(delay=0.6)
    urls = [f"https://slow{i % 3}.example.com/client.json" for i in range(9)]
    for url in urls:
        hosts.serve(document(client_id=url), url=url)
    application = create_app(settings, run_jobs=False, fetch_transport=httpx.MockTransport(hosts.handler))
    try:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url=settings.issuer) as browser:

            async def timed_login() -> float:
                await asyncio.sleep(0.2)  # while the fetches are in flight
                started = time.monotonic()
                assert (await browser.get("/login")).status_code == 200
                return time.monotonic() - started

            *responses, login_time = await asyncio.gather(*(start(browser, url) for url in urls), timed_login())
    finally:
        application.state.runtime.engine.dispose()
    assert hosts.most <= 3
    busy = [r for r in responses if "try again in a few seconds" in r.text]
    assert busy and all(r.status_code == 400 for r in busy)
    assert login_time < 0.5


async def test_a_blocked_document_url_is_not_fetched_again(client, runtime, hosts, new_client):
    """An admin blocks a metadata-document client: it is deleted with everything issued to it and
    its URL is refused without a fetch until unblocked (a plain delete would fetch it again)."""
    from tests.support import create_user, login, submit

    await signed_in(client, runtime)
    hosts.serve()
    await full_flow(client)
    create_user(runtime, "root", admin=True)
    admin = new_client()
    assert (await login(admin, "root", next_url="/admin")).status_code == 303
    ask = await submit(admin, "/admin/clients/block", {"client_id": CLIENT_ID, "reason": "phishing"}, csrf_page="/admin")
    assert ask.status_code == 200 and "Block Example MCP Client?" in ask.text
    done = await submit(
        admin, "/admin/clients/block", {"client_id": CLIENT_ID, "reason": "phishing"}, confirm=True, csrf_page="/admin"
    )
    assert done.status_code == 303 and done.headers["location"] == "/admin/clients?done=blocked"
    assert stored(runtime) is None
    fetched = hosts.fetches()
    assert_error_page(await start(client), "blocked by the administrator")
    assert hosts.fetches() == fetched
    listing = await admin.get("/admin/clients")
    assert f'data-blocked-id="{CLIENT_ID}"' in listing.text and "phishing" in listing.text
    assert audit_events(runtime, "client.blocked")[-1].client_id == CLIENT_ID
    await submit(admin, "/admin/clients/unblock", {"client_id": CLIENT_ID}, csrf_page="/admin")
    assert (await start(client)).status_code in (302, 303)
    assert hosts.fetches() == fetched + 1


# -- private_key_jwt with the document's keys ---------------------------------------------------------


async def test_a_document_with_keys_authenticates_with_private_key_jwt(client, runtime, hosts):
    """CIMD §8.2: a document may say private_key_jwt and publish its public keys; the client
    then MUST prove itself at /token with a signed assertion (RFC 7523 §2.2), and a code without
    one is refused."""
    import uuid

    from joserfc import jwt as jose_jwt
    from joserfc.jwk import RSAKey

    from tests.support import ISSUER

    key = RSAKey.generate_key(2048, parameters={"kid": "doc-1"})
    await signed_in(client, runtime)
    hosts.serve(document(token_endpoint_auth_method="private_key_jwt", jwks={"keys": [key.as_dict(private=False)]}))

    def assertion() -> str:
        t = int(time.time())
        claims = {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": ISSUER, "iat": t, "exp": t + 60, "jti": uuid.uuid4().hex}
        return jose_jwt.encode({"alg": "RS256", "kid": "doc-1"}, claims, key)

    verifier, challenge = pkce()
    response = await authorize(client, authorize_params(CLIENT_ID, challenge))
    code = query(response.headers["location"])["code"]
    form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT}
    bare = await client.post("/token", data={**form, "client_id": CLIENT_ID})
    assert (bare.status_code, bare.json()["error"]) == (401, "invalid_client")
    grant = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    ok = await client.post("/token", data={**form, "client_assertion_type": grant, "client_assertion": assertion()})
    assert ok.status_code == 200, ok.text
    renewed = await client.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": ok.json()["refresh_token"], "client_assertion_type": grant,
              "client_assertion": assertion()},
    )  # fmt: skip
    assert renewed.status_code == 200, renewed.text
    assert stored(runtime).jwks == {"keys": [key.as_dict(private=False)]}


@pytest.mark.parametrize(
    "fields, problem",
    [
        pytest.param({"token_endpoint_auth_method": "private_key_jwt"}, "needs either jwks or jwks_uri", id="no keys"),
        pytest.param(
            {"token_endpoint_auth_method": "private_key_jwt", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
            "public keys only",
            id="a symmetric key",
        ),
        pytest.param(
            {"token_endpoint_auth_method": "private_key_jwt", "jwks_uri": "http://client.example.com/jwks"},
            "https URL",
            id="jwks_uri over http",
        ),
    ],
)
async def test_private_key_jwt_documents_without_usable_keys_are_refused(client, runtime, hosts, fields, problem):
    await signed_in(client, runtime)
    hosts.serve(document(**fields))
    assert_error_page(await start(client), problem)


async def test_a_no_store_document_is_fetched_again_each_time_yet_the_flow_completes(client, runtime, hosts):
    """RFC 9111 §5.2.2.5 no-store is honoured, not overridden by the cache floor
    (docs/decisions.md#metadata-documents-are-cached-between-a-floor-and-a-ceiling): each
    /authorize fetches again; a whole authorization still completes and the code redeems."""
    await signed_in(client, runtime)
    hosts.serve(headers={"Cache-Control": "no-store"})
    assert (await start(client)).status_code == 303
    assert (await start(client)).status_code == 303
    assert hosts.fetches() == 2
    token = await full_flow(client)
    assert token["access_token"]
