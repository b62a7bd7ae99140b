"""Hostile input: a table of named cases over every endpoint.

Each case sends something an attacker, a broken client or a confused proxy would send
(oversized or endless bodies, malformed JSON and forms, wrong content types, repeated
parameters, bytes that are not UTF-8, NUL bytes, very long values, CR/LF in redirect_uri and
state, look-alike redirect hosts, spoofed Host and X-Forwarded-* headers, HTML forms without a
valid CSRF token) and asserts:

* the right 4xx status and the right error: an RFC 6749 `error` code on protocol endpoints, a
  readable HTML page on browser ones (or, once /authorize trusts the redirect URI, the error
  redirect RFC 6749 §4.1.2.1 prescribes);
* that the attack had no effect (no code issued, no form action applied, no redirect to an
  unregistered place);
* that no response of the case was a 5xx and no response header carries CR or LF;
* and then that the server is still healthy: /healthz answers, the metadata document is
  served and a client can still register (a database write).

Every case is one function below; its docstring says what it proves and cites the RFC.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlencode, urlsplit

import httpx
import pytest
from sqlalchemy import select

from app.models import Client, Consent, Resource, SigningKey, User
from app.services import users as user_service
from app.stores import users as users_store
from tests.support import (
    ISSUER,
    REDIRECT,
    RESOURCE,
    _alice_hash,
    admin_client,
    authorize,
    authorize_params,
    create_resource,
    csrf_from,
    enrol_totp,
    exchange,
    login,
    obtain_code,
    pkce,
    query,
    refresh,
    register,
    registered_flow,
    signed_in_flow,
    user_row,
)

pytestmark = pytest.mark.anyio

ON_POSTGRES = bool(os.environ.get("OSTIARY_TEST_DATABASE_URL"))
HOST = "127.0.0.1:8000"
PROTOCOL_CAP = 64 * 1024
BROWSER_CAP = 1024 * 1024
CHUNK = 16 * 1024
HTTPS_ISSUER = {"issuer": "https://auth.example.com", "trusted_proxies": ["10.0.0.1"]}
PROXY = {"trusted_proxies": ["198.51.100.1"]}

# RFC 6749 §5.2: error_description is limited to %x20-21 / %x23-5B / %x5D-7E.
DESCRIPTION_CHARS = re.compile(r"^[\x20\x21\x23-\x5b\x5d-\x7e]*$")


# -- the harness -----------------------------------------------------------------------------


class Harness:
    """What a case needs: clients that never raise on a 500 (raise_app_exceptions=False, so a
    server error is a status to assert on), raw ASGI requests for what httpx refuses to send,
    and a record of every response the case got."""

    def __init__(self, app, runtime, settings):
        self.app, self.runtime, self.settings = app, runtime, settings
        self.seen: list[tuple[str, int, list[tuple[bytes, bytes]]]] = []
        self.paths: list[str] = []  # the path of every request, in order
        self._clients: list[httpx.AsyncClient] = []
        self._port = 50100

    async def _record(self, response: httpx.Response) -> None:
        self.paths.append(response.request.url.path)
        self.seen.append(
            (f"{response.request.method} {response.request.url.path}", response.status_code, list(response.headers.raw))
        )

    def http(self, *, addr: str = "127.0.0.1", base: str | None = None, html: bool = False, **kwargs) -> httpx.AsyncClient:
        self._port += 1
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False, client=(addr, self._port))
        headers = {"Accept": "text/html,application/xhtml+xml"} if html else {"Accept": "application/json"}
        c = httpx.AsyncClient(
            transport=transport,
            base_url=base or self.settings.issuer,
            follow_redirects=False,
            headers=headers,
            event_hooks={"response": [self._record]},
            **kwargs,
        )
        self._clients.append(c)
        return c

    async def raw(
        self,
        method: str,
        path: str,
        *,
        query_string: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes | list[bytes] = b"",
        host: bytes | None = HOST.encode(),
        peer: tuple[str, int] = ("127.0.0.1", 50099),
        scheme: str = "http",
    ) -> httpx.Response:
        """One request straight into the ASGI app: raw bytes in the query string and headers, no
        Host header at all, a body in chunks."""
        all_headers = ([(b"host", host)] if host is not None else []) + list(headers or [])
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": scheme,
            "path": path,
            "raw_path": path.encode("utf-8", "surrogateescape"),
            "query_string": query_string,
            "root_path": "",
            "headers": all_headers,
            "client": peer,
            "server": ("127.0.0.1", 8000),
        }
        chunks = [body] if isinstance(body, bytes) else list(body)
        messages: list[dict] = []

        async def receive():
            if chunks:
                chunk = chunks.pop(0)
                return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
            return {"type": "http.disconnect"}

        async def send(message):
            messages.append(message)

        try:
            await self.app(scope, receive, send)
        except Exception:
            if not any(m["type"] == "http.response.start" for m in messages):
                messages.append({"type": "http.response.start", "status": 500, "headers": []})
        start = next(m for m in messages if m["type"] == "http.response.start")
        content = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        response = httpx.Response(start["status"], headers=start.get("headers", []), content=content)
        self.paths.append(path)
        self.seen.append((f"{method} {path} (raw)", response.status_code, list(response.headers.raw)))
        return response

    # -- data a case starts from --------------------------------------------------------------

    @property
    def api(self) -> httpx.AsyncClient:
        if not hasattr(self, "_api"):
            self._api = self.http()
        return self._api

    @property
    def browser(self) -> httpx.AsyncClient:
        if not hasattr(self, "_browser"):
            self._browser = self.http(html=True)
        return self._browser

    async def registered(self, **metadata) -> dict:
        return await registered_flow(self.api, self.runtime, **metadata)

    async def alice(self) -> dict:
        """alice signed in on `browser`, the default resource, a registered client."""
        return await signed_in_flow(self.browser, self.runtime)

    def add_user(self, username: str, *, admin: bool = False, password: bool = True) -> User:
        with self.runtime.sessions() as db:
            user = users_store.add(
                db, User(username=username, password_hash=_alice_hash() if password else None, is_admin=admin, groups=[])
            )
            db.commit()
            return user

    async def admin(self, c: httpx.AsyncClient | None = None, username: str = "root") -> httpx.AsyncClient:
        """An admin signed in on a browser of their own."""
        c = c or self.http(html=True)
        if self.user(username) is None:
            self.add_user(username, admin=True)
        response = await login(c, username)
        assert response.status_code == 303, response.text
        return c

    async def consent_handle(self, reg: dict) -> tuple[str, str]:
        """(consent URL, its CSRF token) for a new request of alice's browser."""
        _, challenge = pkce()
        response = await self.browser.get("/authorize", params=authorize_params(reg["client_id"], challenge))
        assert response.status_code == 303 and "/consent/" in response.headers["location"], response.text
        location = response.headers["location"]
        page = await self.browser.get(location)
        assert page.status_code == 200, page.text
        return location, csrf_from(page.text)

    async def grant_for_alice(self) -> tuple[dict, int]:
        reg = await self.alice()
        await obtain_code(self.browser, reg["client_id"])
        with self.runtime.sessions() as db:
            grant = db.scalars(select(Consent)).one()
            return reg, grant.id

    def user(self, username: str) -> User | None:
        return user_row(self.runtime, username)

    def rows(self, model) -> list:
        with self.runtime.sessions() as db:
            return list(db.scalars(select(model)))

    # -- after every case -----------------------------------------------------------------------

    def assert_no_server_error_nor_header_split(self) -> None:
        for what, status, headers in self.seen:
            assert status < 500, f"{what} answered {status}"
            for name, value in headers:
                assert b"\r" not in name + value and b"\n" not in name + value, f"{what}: header split in {name!r}: {value!r}"
                if name.lower() == b"set-cookie":
                    assert not value.lower().startswith(b"pwned"), f"{what}: an injected cookie was set"
                if name.lower() == b"location":
                    target = urlsplit(value.decode("latin-1"))
                    # Every attacker host in these cases is `evil.example`; random ids (base64url,
                    # no dots) can spell "evil" but never "evil.example".
                    assert "evil.example" not in (target.netloc + target.path).lower(), f"{what}: redirected to {value!r}"

    async def assert_healthy(self) -> None:
        """The process still serves: liveness, the metadata document, and a database write."""
        c = self.http(addr="127.0.0.1")
        health = await c.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}, health.text
        meta = await c.get("/.well-known/oauth-authorization-server")
        assert meta.status_code == 200 and meta.json()["issuer"] == self.settings.issuer, meta.text
        reg = await c.post("/register", json={"redirect_uris": [REDIRECT], "client_name": "health check"})
        assert reg.status_code == 201, reg.text

    async def close(self) -> None:
        for c in self._clients:
            await c.aclose()


class Endless:
    """A request body streamed without Content-Length (chunked): `prefix`, then filler for ever
    (bounded at 16 MB so that a server that never stops reading cannot hang the test)."""

    def __init__(self, prefix: bytes = b"", *, fields: bool = False, bound: int = 16 * 1024 * 1024):
        # fields=True: every chunk is a new 16 KB form field, so that a 1 MB cap is reached
        # before the 64 KB per-field cap and the 100-field cap.
        self.prefix, self.fields, self.bound, self.sent = prefix, fields, bound, 0

    async def __aiter__(self):
        first = self.prefix
        while self.sent < self.bound:
            head = first + (b"&f=" if self.fields else b"")
            chunk = head + b"a" * (CHUNK - len(head))
            first = b""
            self.sent += len(chunk)
            yield chunk

    def assert_stopped_reading(self, cap: int) -> None:
        assert self.sent <= cap + 2 * CHUNK, f"the server read {self.sent} bytes of a body capped at {cap}"


# -- what a right answer looks like ------------------------------------------------------------


def expect_json(response: httpx.Response, status: int, error: str | tuple[str, ...]) -> dict:
    """An RFC 6749 §5.2 error body: JSON with `error` (and a printable error_description)."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers.get("content-type")
    body = response.json()
    assert body.get("error") in ((error,) if isinstance(error, str) else error), body
    description = body.get("error_description")
    if description is not None:
        assert DESCRIPTION_CHARS.match(description), f"error_description outside RFC 6749 5.2 characters: {description!r}"
    assert "Traceback" not in response.text
    return body


def expect_page(response: httpx.Response, status: int, *texts: str) -> str:
    """A readable HTML page (never a JSON dump or a stack trace) that says what went wrong."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers.get("content-type", "").startswith("text/html"), response.headers.get("content-type")
    page = response.text
    assert "<html" in page and "<title>" in page, page[:300]
    assert "Traceback" not in page and "location" not in {k.lower() for k in response.headers}
    for text in texts:
        assert text.lower() in page.lower(), f"{text!r} not on the page: {page[:1500]}"
    return page


def expect_expired_form(response: httpx.Response) -> str:
    """The answer to a form without a valid CSRF token: 400 and a page saying so."""
    return expect_page(response, 400, "expired")


def expect_untrusted_page(response: httpx.Response, error: str) -> str:
    """RFC 6749 §4.1.2.1: an error before client and redirect URI are trusted is shown to the
    user, never redirected."""
    return expect_page(response, 400, f"error: {error}")


def same_place(location: str, registered: str) -> bool:
    """Does a redirect go where `registered` points (its query aside)?"""
    a, b = urlsplit(location), urlsplit(registered)
    return (a.scheme, a.netloc, a.path) == (b.scheme, b.netloc, b.path)


def expect_error_redirect(response: httpx.Response, error: str, *, to: str = REDIRECT, state: str | None = None) -> dict:
    """RFC 6749 §4.1.2.1 + RFC 9207 §2: once the redirect URI is trusted, errors go back to it with
    `error`, `state` and `iss`."""
    assert response.status_code == 302, (response.status_code, response.text[:500])
    location = response.headers["location"]
    assert same_place(location, to), f"redirected to {location}, not to {to}"
    q = query(location)
    assert q.get("error") == error and q.get("iss") == ISSUER, q
    if state is not None:
        assert q.get("state") == state, q
    return q


def form_body(pairs: list[tuple[str, str]]) -> dict:
    return {"content": urlencode(pairs).encode(), "headers": {"Content-Type": "application/x-www-form-urlencoded"}}


CASES: list = []


def case(case_id: str, *, settings: dict | None = None):
    """Add the decorated coroutine to the table as `case_id`."""

    def add(fn: Callable[[Harness], Awaitable[None]]):
        CASES.append(pytest.param(fn, settings or {}, id=case_id))
        return fn

    return add


# == Host header (DNS rebinding) and X-Forwarded-* =============================================


@case("host-spoofed-evil-example-on-authorize-421")
async def _(h: Harness):
    """RFC 9110 §15.5.20 (421 Misdirected Request): a Host this server does not answer for is
    refused before any route runs (DNS rebinding)."""
    r = await h.api.get("/authorize", params={"client_id": "x"}, headers={"Host": "evil.example"})
    expect_json(r, 421, "invalid_request")


@case("host-spoofed-on-login-421-readable-page")
async def _(h: Harness):
    """RFC 9110 §15.5.20: a browser gets the 421 as a page."""
    r = await h.browser.get("/login", headers={"Host": "evil.example:8000"})
    expect_page(r, 421, "does not answer for that host")


@case("host-right-name-wrong-port-on-token-421")
async def _(h: Harness):
    """RFC 9110 §7.2 / §15.5.20: the issuer's host on another port is another origin."""
    r = await h.api.post("/token", data={"grant_type": "refresh_token"}, headers={"Host": "127.0.0.1:9999"})
    expect_json(r, 421, "invalid_request")


@case("host-issuer-as-prefix-of-evil-name-on-register-421")
async def _(h: Harness):
    """RFC 9110 §15.5.20: `127.0.0.1:8000.evil.example` is not the issuer's host."""
    r = await h.api.post("/register", json={"redirect_uris": [REDIRECT]}, headers={"Host": "127.0.0.1:8000.evil.example"})
    expect_json(r, 421, "invalid_request")


@case("host-userinfo-trick-on-revoke-421")
async def _(h: Harness):
    """RFC 9110 §15.5.20: `evil.example@127.0.0.1:8000` names another host."""
    r = await h.api.post("/revoke", data={"token": "x"}, headers={"Host": "evil.example@127.0.0.1:8000"})
    expect_json(r, 421, "invalid_request")


@case("host-header-missing-on-jwks-421")
async def _(h: Harness):
    """RFC 9112 §3.2: a request without Host is refused (raw request: httpx always sends one)."""
    r = await h.raw("GET", "/jwks", host=None)
    expect_json(r, 421, "invalid_request")


@case("host-non-ascii-bytes-on-metadata-421")
async def _(h: Harness):
    """RFC 9110 §15.5.20: a Host with raw UTF-8 bytes (a Cyrillic letter) matches nothing."""
    r = await h.raw("GET", "/.well-known/oauth-authorization-server", host="127.0.0.\u0430:8000".encode())
    expect_json(r, 421, "invalid_request")


@case("host-cyrillic-o-lookalike-localhost-on-userinfo-421")
async def _(h: Harness):
    """RFC 9110 §15.5.20: `l\u043ecalhost` (Cyrillic о) is not `localhost`."""
    r = await h.raw("GET", "/userinfo", host="l\u043ecalhost:8000".encode())
    expect_json(r, 421, "invalid_request")


@case("x-forwarded-host-from-untrusted-peer-ignored")
async def _(h: Harness):
    """RFC 7239 §8.1 (Forwarded headers can be forged): with no trusted proxy configured an
    X-Forwarded-Host is ignored, so a right Host still gets the page ..."""
    r = await h.api.get("/.well-known/oauth-authorization-server", headers={"X-Forwarded-Host": "evil.example"})
    assert r.status_code == 200 and r.json()["issuer"] == ISSUER
    # ... and cannot rescue a wrong one.
    r = await h.api.get("/jwks", headers={"Host": "evil.example", "X-Forwarded-Host": HOST})
    expect_json(r, 421, "invalid_request")


@case("x-forwarded-host-from-trusted-proxy-believed-421", settings={"trusted_proxies": ["10.0.0.1"]})
async def _(h: Harness):
    """RFC 7239 §5.3: the host a trusted proxy reports is the one checked (here a wrong one)."""
    c = h.http(addr="10.0.0.1")
    r = await c.get("/jwks", headers={"X-Forwarded-Host": "evil.example"})
    expect_json(r, 421, "invalid_request")


@case("x-forwarded-host-and-proto-from-trusted-proxy-believed-200", settings=HTTPS_ISSUER)
async def _(h: Harness):
    """RFC 7239 §5.3/§5.4: behind a trusted TLS proxy an internal Host and plain http are
    fine, because the proxy says the client asked for https://auth.example.com."""
    c = h.http(addr="10.0.0.1", base="http://ostiary:8080")
    r = await c.get(
        "/.well-known/oauth-authorization-server", headers={"X-Forwarded-Host": "auth.example.com", "X-Forwarded-Proto": "https"}
    )
    assert r.status_code == 200 and r.json()["issuer"] == "https://auth.example.com", r.text
    # Without the proxy's word the same request is refused.
    r = await c.get("/.well-known/oauth-authorization-server")
    expect_json(r, 421, "invalid_request")


@case("tls-required-plain-http-off-loopback-400", settings=HTTPS_ISSUER)
async def _(h: Harness):
    """OAuth 2.1 §1.5 (TLS on every endpoint) / RFC 9700 §2: a plain-http token request to a
    non-loopback issuer is refused."""
    c = h.http(addr="203.0.113.7", base="http://auth.example.com")
    r = await c.post("/token", data={"grant_type": "refresh_token", "refresh_token": "x"})
    body = expect_json(r, 400, "invalid_request")
    assert "HTTPS" in body["error_description"]


@case("x-forwarded-proto-https-from-untrusted-peer-ignored-400", settings=HTTPS_ISSUER)
async def _(h: Harness):
    """RFC 7239 §8.1: anyone can write `X-Forwarded-Proto: https`; from a peer that is not a
    trusted proxy it is ignored and plain http is still refused (OAuth 2.1 §1.5)."""
    c = h.http(addr="203.0.113.7", base="http://auth.example.com")
    r = await c.get("/login", headers={"X-Forwarded-Proto": "https", "Accept": "text/html"})
    expect_page(r, 400, "HTTPS is required")


@case("x-forwarded-proto-https-from-trusted-proxy-believed", settings=HTTPS_ISSUER)
async def _(h: Harness):
    """RFC 7239 §5.4: the TLS-terminating proxy's X-Forwarded-Proto is believed."""
    c = h.http(addr="10.0.0.1", base="http://auth.example.com")
    r = await c.get("/jwks", headers={"X-Forwarded-Proto": "https"})
    assert r.status_code == 200 and "keys" in r.json(), r.text


@case("x-forwarded-for-from-untrusted-peer-ignored-metrics-403", settings=PROXY)
async def _(h: Harness):
    """RFC 7239 §8.1: an untrusted peer claiming to be 127.0.0.1 does not get /metrics."""
    c = h.http(addr="203.0.113.7")
    r = await c.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    expect_json(r, 403, "forbidden")


@case("x-forwarded-for-from-trusted-proxy-believed", settings=PROXY)
async def _(h: Harness):
    """RFC 7239 §5.2: a trusted proxy's X-Forwarded-For is the caller's address: a loopback
    caller gets /metrics, an outside caller does not (the proxy's own address is irrelevant)."""
    c = h.http(addr="198.51.100.1")
    inside = await c.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1"})
    assert inside.status_code == 200 and b"ostiary" in inside.content, inside.text[:300]
    outside = await c.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    expect_json(outside, 403, "forbidden")


@case("x-forwarded-for-client-written-leftmost-hop-not-believed", settings=PROXY)
async def _(h: Harness):
    """RFC 7239 §8.1: hops left of the last untrusted one were written by the client: a
    spoofed `127.0.0.1, <real client>` is the real client."""
    c = h.http(addr="198.51.100.1")
    r = await c.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1, 203.0.113.9"})
    expect_json(r, 403, "forbidden")


@case("x-forwarded-for-garbage-hop-not-believed", settings=PROXY)
async def _(h: Harness):
    """RFC 7239 §8.1: a header with a hop that is not an address is not believed at all."""
    c = h.http(addr="198.51.100.1")
    r = await c.get("/metrics", headers={"X-Forwarded-For": "127.0.0.1, not-an-address"})
    expect_json(r, 403, "forbidden")


@case("metrics-from-outside-networks-403")
async def _(h: Harness):
    """Metrics are served to the configured networks only."""
    c = h.http(addr="203.0.113.7")
    r = await c.get("/metrics")
    expect_json(r, 403, "forbidden")


# == header and URI size =========================================================================


@case("header-flood-101-headers-on-jwks-431")
async def _(h: Harness):
    """RFC 6585 §5 (431): too many header fields."""
    r = await h.api.get("/jwks", headers={f"x-h-{i}": "1" for i in range(101)})
    expect_json(r, 431, "request_header_fields_too_large")


@case("header-17kb-cookie-on-account-431-page")
async def _(h: Harness):
    """RFC 6585 §5 (431): a 17 KB Cookie header; a browser gets a page."""
    r = await h.browser.get("/account", headers={"Cookie": "a=" + "x" * 17 * 1024})
    expect_page(r, 431, "headers are too large")


@case("uri-over-8kb-on-authorize-414")
async def _(h: Harness):
    """RFC 9110 §15.5.15 (414 URI Too Long)."""
    r = await h.api.get("/authorize", params={"client_id": "x", "state": "s" * 9000})
    expect_json(r, 414, "invalid_request")


@case("userinfo-bearer-15kb-401-invalid-token")
async def _(h: Harness):
    """RFC 6750 §3.1: a huge (but within the header cap) garbage token is invalid_token with a
    WWW-Authenticate challenge."""
    r = await h.api.get("/userinfo", headers={"Authorization": "Bearer " + "e" * 15000})
    expect_json(r, 401, "invalid_token")
    assert r.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


# == body caps: with Content-Length and streamed without it =======================================


@case("token-body-over-64kb-with-content-length-413")
async def _(h: Harness):
    """OSTIARY_MAX_BODY_PROTOCOL (64 KB on /token): refused from Content-Length alone, 413
    (RFC 9110 §15.5.14)."""
    r = await h.api.post("/token", **form_body([("grant_type", "authorization_code"), ("code", "a" * PROTOCOL_CAP)]))
    expect_json(r, 413, "invalid_request")


@case("token-body-over-64kb-chunked-413-stops-reading")
async def _(h: Harness):
    """RFC 9112 §7.1 chunked body with no Content-Length: counted as it arrives, refused with 413
    once over 64 KB, and the server stops reading (the body never ends)."""
    body = Endless(b"grant_type=authorization_code&code=")
    r = await h.api.post("/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    expect_json(r, 413, "invalid_request")
    body.assert_stopped_reading(PROTOCOL_CAP)


@case("register-body-over-64kb-with-content-length-413")
async def _(h: Harness):
    """OSTIARY_MAX_BODY_PROTOCOL (64 KB on /register), 413 (RFC 9110 §15.5.14)."""
    r = await h.api.post("/register", json={"redirect_uris": [REDIRECT], "client_name": "n" * PROTOCOL_CAP})
    expect_json(r, 413, "invalid_request")


@case("register-body-over-64kb-chunked-413-stops-reading")
async def _(h: Harness):
    """RFC 9112 §7.1: an endless chunked JSON body to /register is cut off at 64 KB."""
    body = Endless(b'{"redirect_uris":["http://127.0.0.1:9876/callback"],"client_name":"')
    r = await h.api.post("/register", content=body, headers={"Content-Type": "application/json"})
    expect_json(r, 413, "invalid_request")
    body.assert_stopped_reading(PROTOCOL_CAP)


@case("register-put-body-over-64kb-chunked-413")
async def _(h: Harness):
    """RFC 7592 §2.2 update with an endless body: cut off at 64 KB, the client is unchanged."""
    reg = await h.registered()
    body = Endless(b'{"redirect_uris":["http://127.0.0.1:9876/callback"],"client_name":"')
    r = await h.api.put(
        f"/register/{reg['client_id']}",
        content=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {reg['registration_access_token']}"},
    )
    expect_json(r, 413, "invalid_request")
    body.assert_stopped_reading(PROTOCOL_CAP)
    assert [c.name for c in h.rows(Client)] == ["Test MCP Client"]


@case("revoke-body-over-64kb-chunked-413")
async def _(h: Harness):
    """RFC 7009 §2.1 endpoint, 64 KB cap, endless chunked form body."""
    body = Endless(b"token=")
    r = await h.api.post("/revoke", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    expect_json(r, 413, "invalid_request")
    body.assert_stopped_reading(PROTOCOL_CAP)


@case("introspect-body-over-64kb-with-content-length-413")
async def _(h: Harness):
    """RFC 7662 §2.1 endpoint, 64 KB cap, Content-Length."""
    r = await h.api.post("/introspect", **form_body([("token", "t" * PROTOCOL_CAP)]))
    expect_json(r, 413, "invalid_request")


@case("login-body-over-1mb-with-content-length-413-page")
async def _(h: Harness):
    """OSTIARY_MAX_BODY (1 MB elsewhere): a browser form over 1 MB gets a 413 page."""
    r = await h.browser.post("/login", **form_body([("username", "u"), ("password", "p" * BROWSER_CAP)]))
    expect_page(r, 413, "exceeds")


@case("login-body-over-1mb-chunked-413-page-stops-reading")
async def _(h: Harness):
    """RFC 9112 §7.1: an endless chunked form to /login is cut off at 1 MB with a 413 page."""
    body = Endless(b"username=u&password=p", fields=True)
    r = await h.browser.post("/login", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    expect_page(r, 413, "exceeds")
    body.assert_stopped_reading(BROWSER_CAP)


@case("authorize-post-body-over-1mb-chunked-413")
async def _(h: Harness):
    """OAuth 2.1 §4.1.1 POST form to /authorize, endless chunked body: 413."""
    body = Endless(b"response_type=code&state=s", fields=True)
    r = await h.api.post("/authorize", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    expect_json(r, 413, "invalid_request")
    body.assert_stopped_reading(BROWSER_CAP)


@case("consent-post-over-1mb-with-content-length-413-page")
async def _(h: Harness):
    """1 MB cap on the consent form, refused before the route (no handle lookup)."""
    r = await h.browser.post("/consent/whatever", **form_body([("decision", "allow"), ("x", "x" * BROWSER_CAP)]))
    expect_page(r, 413, "exceeds")


@case("admin-form-over-1mb-chunked-413-page-keys-unchanged")
async def _(h: Harness):
    """1 MB cap on console forms, for a signed-in admin; nothing is rotated."""
    c = await h.admin()
    before = {(k.kid, k.state) for k in h.rows(SigningKey)}
    body = Endless(b"confirm=yes&csrf_token=t", fields=True)
    r = await c.post("/admin/keys/rotate", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    expect_page(r, 413, "exceeds")
    body.assert_stopped_reading(BROWSER_CAP)
    assert {(k.kid, k.state) for k in h.rows(SigningKey)} == before


@case("healthz-body-over-1mb-with-content-length-413")
async def _(h: Harness):
    """The body cap applies to the probes too (they are exempt from Host/TLS checks only)."""
    r = await h.raw("GET", "/healthz", headers=[(b"content-length", str(BROWSER_CAP + 1).encode())])
    expect_json(r, 413, "invalid_request")


@case("readyz-content-length-not-a-number-400")
async def _(h: Harness):
    """RFC 9110 §8.6: Content-Length is 1*DIGIT; anything else is a bad request."""
    r = await h.raw("GET", "/readyz", headers=[(b"content-length", b"12abc")])
    expect_json(r, 400, "invalid_request")


@case("token-content-length-negative-400")
async def _(h: Harness):
    """RFC 9110 §8.6: a negative Content-Length is not a length."""
    r = await h.raw(
        "POST", "/token", headers=[(b"content-length", b"-1"), (b"content-type", b"application/x-www-form-urlencoded")]
    )
    expect_json(r, 400, "invalid_request")


# == malformed forms and wrong content types =====================================================


@case("login-multipart-with-a-file-400-page")
async def _(h: Harness):
    """Forms are read with max_files=0: an upload is refused, not stored in a temp file."""
    r = await h.browser.post("/login", files={"f": ("a.txt", b"x" * 100)}, data={"username": "u"})
    expect_page(r, 400)


@case("account-multipart-field-over-64kb-400-page")
async def _(h: Harness):
    """Forms are read with max_part_size=64 KB: a 100 KB multipart field is refused."""
    r = await h.browser.post("/account/password", files={"new_password": (None, b"p" * 100 * 1024)})
    expect_page(r, 400, "maximum size")


@case("login-urlencoded-field-over-64kb-400-page")
async def _(h: Harness):
    """Forms are read with max_part_size=64 KB, urlencoded ones too: a 100 KB field is refused."""
    r = await h.browser.post("/login", data={"username": "u", "password": "p" * 100 * 1024})
    expect_page(r, 400, "maximum size")


@case("token-form-over-100-fields-400-invalid-request")
async def _(h: Harness):
    """Forms are read with max_fields=100: 150 fields are refused with invalid_request."""
    r = await h.api.post("/token", **form_body([("grant_type", "refresh_token")] + [(f"f{i}", "1") for i in range(150)]))
    expect_json(r, 400, "invalid_request")


@case("token-json-content-type-invalid-request")
async def _(h: Harness):
    """RFC 6749 §3.2 / §4.1.3: token requests are application/x-www-form-urlencoded; a JSON body
    carries no parameters, so grant_type is missing: invalid_request (RFC 6749 §5.2)."""
    reg = await h.registered()
    r = await h.api.post("/token", json={"grant_type": "refresh_token", "refresh_token": "x", "client_id": reg["client_id"]})
    expect_json(r, 400, "invalid_request")


@case("token-empty-body-invalid-request")
async def _(h: Harness):
    """RFC 6749 §5.2: a missing required parameter (grant_type) is invalid_request."""
    r = await h.api.post("/token", content=b"", headers={"Content-Type": "application/x-www-form-urlencoded"})
    expect_json(r, 400, "invalid_request")


@case("token-percent-garbage-form-invalid-request")
async def _(h: Harness):
    """RFC 6749 §5.2: a form of broken percent-escapes and empty names carries no grant_type."""
    r = await h.api.post("/token", content=b"%%%&&==&%zz=%&=%", headers={"Content-Type": "application/x-www-form-urlencoded"})
    expect_json(r, 400, "invalid_request")


@case("revoke-json-content-type-401-invalid-client")
async def _(h: Harness):
    """RFC 7009 §2.1: the revocation request is a form; in a JSON body the public client's
    client_id is not read, so the client is not identified: invalid_client, 401 (RFC 6749 §5.2)."""
    reg = await h.registered()
    r = await h.api.post("/revoke", json={"token": "x", "client_id": reg["client_id"]})
    expect_json(r, 401, "invalid_client")


@case(
    "authorize-post-json-content-type-invalid-request-page",
)
async def _(h: Harness):
    """OAuth 2.1 §4.1.1: a POST to /authorize is a form; JSON carries no parameter at all, so
    there is no client to trust: an error page, never a redirect (RFC 6749 §4.1.2.1), saying
    invalid_request ("missing a required parameter", RFC 6749 §4.1.2.1)."""
    reg = await h.registered()
    _, challenge = pkce()
    r = await h.browser.post("/authorize", json=authorize_params(reg["client_id"], challenge))
    expect_untrusted_page(r, "invalid_request")


@case("login-malformed-form-without-csrf-400-page")
async def _(h: Harness):
    """A form of garbage escapes is read without error and refused as an expired form."""
    await h.browser.get("/login")
    r = await h.browser.post("/login", content=b"%%%&&==&%zz=%", headers={"Content-Type": "application/x-www-form-urlencoded"})
    expect_expired_form(r)


# == malformed JSON (/register, RFC 7591 / 7592) ===================================================


@case("register-malformed-json-400-invalid-request")
async def _(h: Harness):
    """RFC 7591 §3.1: the request is a JSON document; a truncated one is invalid_request."""
    r = await h.api.post(
        "/register", content=b'{"redirect_uris": ["http://127.0.0.1:9876/callback"]', headers={"Content-Type": "application/json"}
    )
    expect_json(r, 400, "invalid_request")


@case("register-form-content-type-400-invalid-request")
async def _(h: Harness):
    """RFC 7591 §3.1: `Content-Type: application/json` is required."""
    r = await h.api.post("/register", data={"redirect_uris": REDIRECT})
    expect_json(r, 400, "invalid_request")


@case("register-json-array-not-object-400")
async def _(h: Harness):
    """RFC 7591 §3.1: the body is a JSON object."""
    r = await h.api.post("/register", json=[{"redirect_uris": [REDIRECT]}])
    expect_json(r, 400, "invalid_request")


@case("register-json-nested-20-deep-400")
async def _(h: Harness):
    """JSON depth cap (app/http/body.py): 20 nested objects are refused."""
    nested: dict = {"x": 1}
    for _ in range(20):
        nested = {"x": nested}
    r = await h.api.post("/register", json={"redirect_uris": [REDIRECT], "software_statement_extra": nested})
    expect_json(r, 400, "invalid_request")


@case(
    "register-json-nested-30000-deep-400-not-500",
)
async def _(h: Harness):
    """JSON depth cap (app/http/body.py): 30 000 nested arrays within 64 KB are refused like 20,
    not a RecursionError (a 500)."""
    depth = 30000
    body = b'{"redirect_uris":["http://127.0.0.1:9876/callback"],"x":' + b"[" * depth + b"]" * depth + b"}"
    assert len(body) < PROTOCOL_CAP
    r = await h.api.post("/register", content=body, headers={"Content-Type": "application/json"})
    expect_json(r, 400, "invalid_request")


@case(
    "register-json-5000-digit-integer-400-not-500",
)
async def _(h: Harness):
    """RFC 8259 §6 / RFC 7591 §3.1: a 5000-digit number is refused as a bad request, not a 500."""
    body = b'{"redirect_uris":["http://127.0.0.1:9876/callback"],"client_name":' + b"9" * 5000 + b"}"
    r = await h.api.post("/register", content=body, headers={"Content-Type": "application/json"})
    expect_json(r, 400, "invalid_request")


@case("register-json-non-utf8-bytes-400")
async def _(h: Harness):
    """RFC 8259 §8.1: JSON is UTF-8; 0xFF 0xFE bytes are invalid_request."""
    body = b'{"redirect_uris":["http://127.0.0.1:9876/callback"],"client_name":"\xff\xfe"}'
    r = await h.api.post("/register", content=body, headers={"Content-Type": "application/json"})
    expect_json(r, 400, "invalid_request")


@case(
    "register-json-lone-surrogate-escape-400",
)
async def _(h: Harness):
    """RFC 8259 §8.2: `\\ud800` alone is not a Unicode character; the metadata is refused
    (invalid_request for the body or invalid_client_metadata for the field, RFC 7591 §3.2.2)."""
    body = b'{"redirect_uris":["http://127.0.0.1:9876/callback"],"client_name":"App \\ud800"}'
    r = await h.api.post("/register", content=body, headers={"Content-Type": "application/json"})
    expect_json(r, 400, ("invalid_request", "invalid_client_metadata"))


@case("register-redirect-uri-with-crlf-invalid-redirect-uri")
async def _(h: Harness):
    """RFC 7591 §3.2.2 / OAuth 2.1 §2.3: a redirect URI with CR LF is invalid_redirect_uri."""
    r = await h.api.post("/register", json={"redirect_uris": [REDIRECT + "\r\nSet-Cookie: pwned=1"]})
    expect_json(r, 400, "invalid_redirect_uri")


@case("register-redirect-uris-not-an-array-invalid-redirect-uri")
async def _(h: Harness):
    """RFC 7591 §2: redirect_uris is an array of strings."""
    r = await h.api.post("/register", json={"redirect_uris": REDIRECT})
    expect_json(r, 400, "invalid_redirect_uri")


@case("register-200-redirect-uris-invalid-redirect-uri")
async def _(h: Harness):
    """RFC 7591 §3.2.2: a client with 200 redirect URIs is refused (cap 30)."""
    r = await h.api.post("/register", json={"redirect_uris": [f"http://127.0.0.1:{1000 + i}/cb{i}" for i in range(200)]})
    expect_json(r, 400, "invalid_redirect_uri")


@case("register-client-name-5000-chars-invalid-client-metadata")
async def _(h: Harness):
    """RFC 7591 §3.2.2: a 5000-character client_name is invalid_client_metadata."""
    r = await h.api.post("/register", json={"redirect_uris": [REDIRECT], "client_name": "n" * 5000})
    expect_json(r, 400, "invalid_client_metadata")


@case("register-put-malformed-json-400-client-unchanged")
async def _(h: Harness):
    """RFC 7592 §2.2: an update whose body is not JSON is refused; the registration is unchanged."""
    reg = await h.registered()
    r = await h.api.put(
        f"/register/{reg['client_id']}",
        content=b'{"redirect_uris": [',
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {reg['registration_access_token']}"},
    )
    expect_json(r, 400, "invalid_request")
    assert [c.redirect_uris for c in h.rows(Client)] == [[REDIRECT]]


@case("register-put-form-content-type-400")
async def _(h: Harness):
    """RFC 7592 §2.2: the update is JSON."""
    reg = await h.registered()
    r = await h.api.put(
        f"/register/{reg['client_id']}",
        data={"redirect_uris": "https://evil.example/cb"},
        headers={"Authorization": f"Bearer {reg['registration_access_token']}"},
    )
    expect_json(r, 400, "invalid_request")


@case("register-get-without-token-401-invalid-token")
async def _(h: Harness):
    """RFC 7592 §2 / RFC 6750 §3.1: no registration access token is invalid_token, 401."""
    reg = await h.registered()
    r = await h.api.get(f"/register/{reg['client_id']}")
    expect_json(r, 401, "invalid_token")


@case("register-get-with-other-clients-token-401")
async def _(h: Harness):
    """RFC 7592 §2: one client's registration access token does not open another's."""
    reg = await h.registered()
    other = await register(h.api)
    r = await h.api.get(
        f"/register/{reg['client_id']}", headers={"Authorization": f"Bearer {other['registration_access_token']}"}
    )
    expect_json(r, 401, "invalid_token")


@case("register-delete-garbage-bearer-401-client-kept")
async def _(h: Harness):
    """RFC 7592 §2.3: a delete with a made-up token is refused and deletes nothing."""
    reg = await h.registered()
    r = await h.api.delete(f"/register/{reg['client_id']}", headers={"Authorization": "Bearer " + "x" * 43})
    expect_json(r, 401, "invalid_token")
    assert len(h.rows(Client)) == 1


@case("register-get-non-utf8-client-id-in-path-401")
async def _(h: Harness):
    """RFC 7592 §2: a percent-encoded 0xFF 0xFE client_id in the path is just unknown."""
    r = await h.api.get("/register/%FF%FE", headers={"Authorization": "Bearer " + "x" * 43})
    expect_json(r, 401, "invalid_token")


# == duplicated parameters (RFC 6749 §3.1, §3.2) ===================================================


async def _authorize_duplicated(h: Harness, name: str, value: str, *, method: str = "GET"):
    reg = await h.registered()
    _, challenge = pkce()
    pairs = list(authorize_params(reg["client_id"], challenge, scope="mcp:read").items())
    if name not in dict(pairs):
        pairs.append((name, value))  # an optional parameter (nonce): sent twice all the same
    pairs.append((name, value))
    if method == "GET":
        return await h.browser.get("/authorize?" + urlencode(pairs))
    return await h.browser.post("/authorize", **form_body(pairs))


# (parameter, second value, method, where the error goes, why). Until the client and redirect
# URI are trusted the error is a page (RFC 6749 §4.1.2.1), afterwards a redirect with `state`.
AUTHORIZE_DUPLICATES = [
    ("state", "other", "GET", "page", "which state would we echo?"),
    ("client_id", "someone-else", "GET", "page", "two client_ids: no client is trusted"),
    ("redirect_uri", "https://evil.example/cb", "GET", "page", "the second an attacker's: never a redirect"),
    ("response_type", "code", "GET", "page", "response_type twice"),
    ("scope", "mcp:write", "GET", "page", "scope twice"),
    ("code_challenge", "A" * 43, "GET", "redirect", "RFC 7636 §4.3: two challenges"),
    ("code_challenge_method", "S256", "GET", "redirect", "RFC 7636 §4.3: the method twice"),
    ("nonce", "n-2", "GET", "redirect", "OIDC Core §3.1.2.1: nonce twice"),
    ("resource", RESOURCE, "GET", "redirect", "RFC 8707 §2 lets resource repeat; one MCP server per token (invalid_target)"),
    ("state", "other", "POST", "page", "OAuth 2.1 §4.1.1 POST form: state twice in the body"),
]


def _authorize_duplicated_case(name: str, value: str, method: str, answer: str, why: str) -> None:
    async def run(h: Harness):
        r = await _authorize_duplicated(h, name, value, method=method)
        error = "invalid_target" if name == "resource" else "invalid_request"
        (expect_untrusted_page if answer == "page" else expect_error_redirect)(r, error)

    run.__doc__ = f'RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once." {why}.'
    post = "-post" if method == "POST" else ""
    case(f"authorize{post}-duplicated-{name.replace('_', '-')}-{answer}")(run)


for _duplicate in AUTHORIZE_DUPLICATES:
    _authorize_duplicated_case(*_duplicate)


async def _token_duplicated(h: Harness, name: str, value: str | None = None) -> tuple[httpx.Response, dict, str]:
    """A valid code exchange with one parameter sent twice (the copy first, when value is None)."""
    reg = await h.alice()
    code, verifier, _ = await obtain_code(h.browser, reg["client_id"])
    pairs = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("code_verifier", verifier),
        ("redirect_uri", REDIRECT),
        ("client_id", reg["client_id"]),
    ]
    original = dict(pairs)[name]
    pairs.append((name, original if value is None else value))
    return await h.api.post("/token", **form_body(pairs)), reg, code


# RFC 6749 §3.2: "Request and response parameters MUST NOT be included more than once." At /token
# a second copy of any parameter is invalid_request and no token is issued. (parameter, second
# value or None for the same one again, why)
TOKEN_DUPLICATES = [
    ("code", "ostac_other", "a second code"),
    ("grant_type", "refresh_token", "two grant types"),
    ("code_verifier", "x" * 43, "RFC 7636 §4.5: two verifiers"),
    ("redirect_uri", "https://evil.example/cb", "§4.1.3: the second redirect_uri an attacker's"),
    ("client_id", None, "the same client_id twice is still repeated"),
]


def _token_duplicated_case(name: str, value: str | None, why: str) -> None:
    async def run(h: Harness):
        r, _, _ = await _token_duplicated(h, name, value)
        expect_json(r, 400, "invalid_request")

    run.__doc__ = f"RFC 6749 §3.2: {name} twice at /token ({why})."
    case(f"token-duplicated-{name.replace('_', '-')}-invalid-request")(run)


for _duplicate in TOKEN_DUPLICATES:
    _token_duplicated_case(*_duplicate)


@case("revoke-and-introspect-duplicated-token-invalid-request")
async def _(h: Harness):
    """RFC 6749 §3.2 (RFC 7009 §2.1, RFC 7662 §2.1 take their parameters as RFC 6749 does): a
    second `token` is invalid_request, not a revocation or an answer about either token."""
    reg = await h.alice()
    code, verifier, _ = await obtain_code(h.browser, reg["client_id"])
    tokens = (await exchange(h.api, reg["client_id"], code, verifier)).json()
    pairs = [("token", tokens["refresh_token"]), ("token", "other"), ("client_id", reg["client_id"])]
    expect_json(await h.api.post("/revoke", **form_body(pairs)), 400, "invalid_request")
    client_id, secret = admin_client(h.runtime)
    r = await h.api.post(
        "/introspect", auth=(client_id, secret), **form_body([("token", tokens["access_token"]), ("token", "x")])
    )
    expect_json(r, 400, "invalid_request")
    # Nothing was revoked: the refresh token still works.
    again = await refresh(h.api, reg["client_id"], tokens["refresh_token"])
    assert again.status_code == 200, again.text


@case("token-refresh-grant-non-utf8-and-crlf-refresh-token-invalid-grant")
async def _(h: Harness):
    """RFC 6749 §5.2 / §6: a refresh token of raw 0xFF bytes, or with CR LF, is invalid_grant."""
    reg = await h.registered()
    body = b"grant_type=refresh_token&refresh_token=\xff\xfe%0D%0Aostrt_x&client_id=" + reg["client_id"].encode()
    r = await h.api.post("/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    expect_json(r, 400, "invalid_grant")


@case("token-refresh-duplicated-refresh-token-invalid-request")
async def _(h: Harness):
    """RFC 6749 §3.2 / §6: refresh_token twice; the token stays usable."""
    reg = await h.alice()
    code, verifier, _ = await obtain_code(h.browser, reg["client_id"])
    tokens = (await exchange(h.api, reg["client_id"], code, verifier)).json()
    pairs = [
        ("grant_type", "refresh_token"),
        ("refresh_token", tokens["refresh_token"]),
        ("refresh_token", "x"),
        ("client_id", reg["client_id"]),
    ]
    expect_json(await h.api.post("/token", **form_body(pairs)), 400, "invalid_request")
    again = await h.api.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": reg["client_id"]}
    )
    assert again.status_code == 200, again.text


# == bytes that are not UTF-8, NUL bytes ==============================================================


@case("authorize-raw-non-utf8-query-bytes-400-page")
async def _(h: Harness):
    """RFC 3986 §2.1: raw 0xFF 0xFE bytes in the query (not even percent-encoded): the client is
    unknown, an error page (RFC 6749 §4.1.2.1)."""
    await h.registered()
    r = await h.raw(
        "GET",
        "/authorize",
        query_string=b"response_type=code&client_id=\xff\xfe&state=\xc3\x28",
        headers=[(b"accept", b"text/html")],
    )
    expect_untrusted_page(r, "invalid_client")


@case("authorize-percent-ff-client-id-400-page")
async def _(h: Harness):
    """RFC 3986 §2.1: %FF%FE decodes to no UTF-8 character: unknown client, an error page."""
    await h.registered()
    r = await h.browser.get("/authorize?response_type=code&client_id=%FF%FE&redirect_uri=" + quote(REDIRECT, safe=""))
    expect_untrusted_page(r, "invalid_client")


@case("token-raw-non-utf8-form-bytes-invalid-grant")
async def _(h: Harness):
    """RFC 6749 §4.1.3: a code of raw 0xFF bytes is simply not a code: invalid_grant."""
    reg = await h.registered()
    body = (
        b"grant_type=authorization_code&code=\xff\xfe\xfd&code_verifier="
        + b"v" * 43
        + b"&redirect_uri="
        + quote(REDIRECT, safe="").encode()
        + b"&client_id="
        + reg["client_id"].encode()
    )
    r = await h.api.post("/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    expect_json(r, 400, "invalid_grant")


@case("login-non-utf8-username-401-page")
async def _(h: Harness):
    """A username of %FF%FE with a valid CSRF token is a failed sign-in, not an error."""
    page = await h.browser.get("/login")
    body = b"username=%FF%FE&password=x&csrf_token=" + csrf_from(page.text).encode()
    r = await h.browser.post("/login", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    expect_page(r, 401, "Incorrect username or password")


@case("userinfo-bearer-raw-non-ascii-bytes-401")
async def _(h: Harness):
    """RFC 6750 §2.1: a b64token is ASCII; raw 0xFF bytes are an invalid token, 401."""
    r = await h.raw("GET", "/userinfo", headers=[(b"authorization", b"Bearer \xff\xfe\xfd")])
    expect_json(r, 401, "invalid_token")


NOT_UTF8_BASIC = "Basic " + __import__("base64").b64encode(b"\xff\xfe:\xfd").decode()


@case("introspect-basic-auth-non-utf8-401-invalid-client")
async def _(h: Harness):
    """RFC 7662 §2.1 / RFC 6749 §2.3.1: Basic credentials that are not UTF-8 authenticate no
    one: invalid_client, 401 (RFC 6749 §5.2)."""
    r = await h.api.post("/introspect", data={"token": "x"}, headers={"Authorization": NOT_UTF8_BASIC})
    expect_json(r, 401, "invalid_client")


@case("token-basic-auth-non-utf8-401-invalid-client")
async def _(h: Harness):
    """RFC 6749 §2.3.1 / §5.2: the same at the token endpoint."""
    r = await h.api.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": "x"}, headers={"Authorization": NOT_UTF8_BASIC}
    )
    expect_json(r, 401, "invalid_client")


@case("revoke-basic-auth-non-utf8-401-invalid-client")
async def _(h: Harness):
    """RFC 7009 §2.1 / RFC 6749 §5.2: the same at the revocation endpoint."""
    r = await h.api.post("/revoke", data={"token": "x"}, headers={"Authorization": NOT_UTF8_BASIC})
    expect_json(r, 401, "invalid_client")


@case("token-basic-auth-malformed-base64-401-invalid-client")
async def _(h: Harness):
    """RFC 6749 §2.3.1 / §5.2: broken Basic credentials are invalid_client, 401."""
    r = await h.api.post(
        "/token", data={"grant_type": "refresh_token", "refresh_token": "x"}, headers={"Authorization": "Basic %%%not-base64"}
    )
    expect_json(r, 401, "invalid_client")


@case("authorize-client-id-with-nul-400-page")
async def _(h: Harness):
    """A NUL byte in any parameter is refused before a route runs (it could not be stored, and
    no RFC 6749 value may hold one): a 400 page, never a redirect, never a 5xx."""
    await h.registered()
    r = await h.browser.get("/authorize?response_type=code&client_id=a%00b")
    expect_page(r, 400, "NUL")


@case("token-client-id-with-nul-400-invalid-request")
async def _(h: Harness):
    """RFC 6749 §5.2: a form parameter with a NUL byte is a malformed request: invalid_request."""
    r = await h.api.post("/token", data={"grant_type": "refresh_token", "refresh_token": "x", "client_id": "a\x00b"})
    expect_json(r, 400, "invalid_request")


@case("revoke-client-id-with-nul-400-invalid-request")
async def _(h: Harness):
    """RFC 7009 §2.1 / RFC 6749 §5.2: the same at the revocation endpoint."""
    r = await h.api.post("/revoke", data={"token": "x", "client_id": "\x00"})
    expect_json(r, 400, "invalid_request")


@case("login-username-with-nul-400-page")
async def _(h: Harness):
    """A username with a NUL byte is a malformed form: a 400 page, not a 5xx."""
    page = await h.browser.get("/login")
    r = await h.browser.post("/login", data={"username": "alice\x00", "password": "x", "csrf_token": csrf_from(page.text)})
    expect_page(r, 400, "NUL")


@case("admin-user-id-with-nul-400-page")
async def _(h: Harness):
    """A console URL with a NUL byte is refused before any route: a 400 page."""
    c = await h.admin()
    r = await c.get("/admin/users/a%00b")
    expect_page(r, 400, "NUL")


@case("authorize-state-with-nul-no-5xx")
async def _(h: Harness):
    """RFC 6749 §4.1.1 / Appendix A.5: a state with a NUL byte (not VSCHAR) is either refused
    with invalid_request at the trusted redirect URI or carried through to sign-in; never a 5xx."""
    reg = await h.registered()
    _, challenge = pkce()
    r = await h.browser.get("/authorize", params=authorize_params(reg["client_id"], challenge, state="a\x00b"))
    expect_page(r, 400, "NUL")


@case("register-client-name-with-nul-400")
async def _(h: Harness):
    """RFC 7591 §3.2: a client_name with a NUL byte is refused (it could not be stored)."""
    r = await h.api.post("/register", json={"redirect_uris": [REDIRECT], "client_name": "App\x00"})
    expect_json(r, 400, "invalid_request")


@case("register-get-client-id-with-nul-400")
async def _(h: Harness):
    """A NUL in the path is refused before any route (RFC 7592 never sees it)."""
    r = await h.api.get("/register/a%00b", headers={"Authorization": "Bearer " + "x" * 43})
    expect_json(r, 400, "invalid_request")


# == very long values ===================================================================================


@case("authorize-state-5000-chars-invalid-request-redirect")
async def _(h: Harness):
    """RFC 6749 §4.1.1 state is opaque but bounded here (4096): a 5000-character state is
    invalid_request, redirected with the state echoed (RFC 6749 §4.1.2.1)."""
    reg = await h.registered()
    _, challenge = pkce()
    state = "s" * 5000
    r = await h.browser.get("/authorize", params=authorize_params(reg["client_id"], challenge, state=state))
    expect_error_redirect(r, "invalid_request", state=state)


@case("authorize-client-id-3000-chars-400-page")
async def _(h: Harness):
    """RFC 6749 §4.1.2.1: a 3000-character client_id is unknown: an error page, no lookup."""
    r = await h.browser.get("/authorize", params={"response_type": "code", "client_id": "c" * 3000, "redirect_uri": REDIRECT})
    expect_untrusted_page(r, "invalid_client")


@case("token-code-10kb-invalid-grant")
async def _(h: Harness):
    """RFC 6749 §5.2: a 10 KB code is not a code: invalid_grant."""
    reg = await h.registered()
    r = await h.api.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "code": "c" * 10240,
            "code_verifier": "v" * 43,
            "redirect_uri": REDIRECT,
            "client_id": reg["client_id"],
        },
    )
    expect_json(r, 400, "invalid_grant")


@case("token-client-id-10kb-401-invalid-client")
async def _(h: Harness):
    """RFC 6749 §5.2: a 10 KB client_id is invalid_client, 401."""
    r = await h.api.post("/token", data={"grant_type": "refresh_token", "refresh_token": "x", "client_id": "c" * 10240})
    expect_json(r, 401, "invalid_client")


@case("login-password-500kb-over-field-cap-400-page")
async def _(h: Harness):
    """Form-field cap (64 KB): a 500 KB password (under the 1 MB body cap) is refused
    with a page before any password hashing, and signs nobody in."""
    h.add_user("alice")
    page = await h.browser.get("/login")
    r = await h.browser.post(
        "/login", data={"username": "alice", "password": "p" * 500 * 1024, "csrf_token": csrf_from(page.text)}
    )
    expect_page(r, 400, "maximum size")
    assert (await h.browser.get("/account")).status_code == 303


@case("consent-handle-5000-chars-404-page")
async def _(h: Harness):
    """A 5000-character consent handle is refused before any lookup: a 404 page."""
    await h.alice()
    r = await h.browser.get("/consent/" + "h" * 5000)
    expect_page(r, 404, "expired or was already completed")


@case("consent-unknown-handle-404-page")
async def _(h: Harness):
    """A made-up consent handle: a 404 page, no redirect."""
    await h.alice()
    r = await h.browser.get("/consent/" + secrets.token_urlsafe(32))
    expect_page(r, 404, "expired or was already completed")


# == CR/LF in redirect_uri and state ======================================================================


async def _authorize_redirect(h: Harness, requested: str, registered: str = REDIRECT) -> httpx.Response:
    create_resource(h.runtime)
    reg = await register(h.api, redirect_uris=[registered])
    _, challenge = pkce()
    return await h.browser.get("/authorize", params=authorize_params(reg["client_id"], challenge, redirect_uri=requested))


@case("authorize-redirect-uri-crlf-header-injection-refused-page")
async def _(h: Harness):
    """RFC 6749 §3.1.2.3 / OAuth 2.1 §4.1.1 exact matching, RFC 9110 §5.5 (no CR LF in a field
    value): `<registered>\\r\\nSet-Cookie: pwned=1` is not registered: an error page, no
    Location, no injected cookie."""
    r = await _authorize_redirect(h, REDIRECT + "\r\nSet-Cookie: pwned=1")
    expect_untrusted_page(r, "invalid_request")


@case(
    "authorize-redirect-uri-crlf-inside-loopback-path-refused",
)
async def _(h: Harness):
    """OAuth 2.1 §4.1.1 / §8.4.2: only the loopback port may differ; `/call\\r\\nback` is not the
    registered `/callback`: an error page, never a redirect to an unregistered URI."""
    r = await _authorize_redirect(h, "http://127.0.0.1:9876/call\r\nback")
    expect_untrusted_page(r, "invalid_request")


@case(
    "authorize-redirect-uri-tab-inside-loopback-path-refused",
)
async def _(h: Harness):
    """OAuth 2.1 §8.4.2: `/cal\\tlback` is not `/callback`."""
    r = await _authorize_redirect(h, "http://127.0.0.1:9876/cal\tlback")
    expect_untrusted_page(r, "invalid_request")


@case(
    "authorize-redirect-uri-leading-space-refused",
)
async def _(h: Harness):
    """OAuth 2.1 §4.1.1: exact string comparison; a leading space is another string."""
    r = await _authorize_redirect(h, " " + REDIRECT)
    expect_untrusted_page(r, "invalid_request")


@case("authorize-redirect-uri-percent-encoded-crlf-refused-page")
async def _(h: Harness):
    """OAuth 2.1 §4.1.1: `<registered>%0D%0ASet-Cookie:...` (escaped) is another URI: a page."""
    r = await _authorize_redirect(h, REDIRECT + "%0D%0ASet-Cookie:%20pwned=1")
    expect_untrusted_page(r, "invalid_request")


@case("authorize-state-crlf-in-error-redirect-no-header-split")
async def _(h: Harness):
    """RFC 6749 §4.1.2.1: the state is echoed exactly, percent-encoded in the Location: CR LF in
    it never splits the header (RFC 9110 §5.5)."""
    reg = await h.registered()
    _, challenge = pkce()
    state = "abc\r\nSet-Cookie: pwned=1\r\n\r\n<script>"
    r = await h.browser.get(
        "/authorize", params=authorize_params(reg["client_id"], challenge, state=state, resource="https://unknown.example/mcp")
    )
    expect_error_redirect(r, "invalid_target", state=state)


@case("authorize-state-crlf-in-code-redirect-no-header-split")
async def _(h: Harness):
    """RFC 6749 §4.1.2: through sign-in and consent, a state with CR LF comes back exactly, to
    the registered redirect URI only, with no header split."""
    reg = await h.alice()
    state = "x\r\nLocation: https://evil.example/\r\n"
    _, challenge = pkce()
    r = await authorize(h.browser, authorize_params(reg["client_id"], challenge, state=state))
    assert r.status_code == 302, (r.status_code, r.text[:300])
    assert same_place(r.headers["location"], REDIRECT), r.headers["location"]
    q = query(r.headers["location"])
    assert q["state"] == state and q["code"].startswith("ostac_") and q["iss"] == ISSUER, q


@case("login-next-with-crlf-not-followed")
async def _(h: Harness):
    """RFC 9700 §4.11 (open redirects): a `next` with CR LF is replaced by /account."""
    h.add_user("alice")
    r = await login(h.browser, next_url="/account\r\nSet-Cookie: pwned=1")
    assert r.status_code == 303 and r.headers["location"] == "/account", (r.status_code, r.headers.get("location"))


@case("login-next-protocol-relative-url-not-followed")
async def _(h: Harness):
    """RFC 9700 §4.11: `next=//evil.example/` and `/\\evil.example` are not followed."""
    h.add_user("alice")
    r = await login(h.browser, next_url="//evil.example/")
    assert r.status_code == 303 and r.headers["location"] == "/account", r.headers.get("location")
    other = h.http(html=True)
    r = await login(other, next_url="/\\evil.example")
    assert r.status_code == 303 and r.headers["location"] == "/account", r.headers.get("location")


@case("token-redirect-uri-with-crlf-invalid-grant")
async def _(h: Harness):
    """RFC 6749 §4.1.3: the redirect_uri at /token must be the one of the request; with CR LF
    appended it is not: invalid_grant, no token."""
    reg = await h.alice()
    code, verifier, _ = await obtain_code(h.browser, reg["client_id"])
    r = await exchange(h.api, reg["client_id"], code, verifier, redirect_uri=REDIRECT + "\r\n")
    expect_json(r, 400, "invalid_grant")


# == unicode look-alikes and other tricks in redirect hosts ==================================================

APP = "https://app.example.com/cb"


@case("authorize-redirect-cyrillic-a-in-registered-host-refused")
async def _(h: Harness):
    """OAuth 2.1 §4.1.1 / RFC 9700 §4.1.3: `\u0430pp.example.com` (Cyrillic а) is not
    `app.example.com`: an error page, never a redirect."""
    r = await _authorize_redirect(h, "https://\u0430pp.example.com/cb", APP)
    expect_untrusted_page(r, "invalid_request")


@case("authorize-redirect-punycode-of-lookalike-refused")
async def _(h: Harness):
    """RFC 9700 §4.1.3: the punycode of the look-alike (`xn--pp-6kc`) is another host."""
    r = await _authorize_redirect(h, "https://xn--pp-6kc.example.com/cb", APP)
    expect_untrusted_page(r, "invalid_request")


@case("authorize-redirect-fullwidth-dots-refused")
async def _(h: Harness):
    """RFC 9700 §4.1.3: `app\uff0eexample\uff0ecom` (fullwidth dots, IDNA-equivalent) does not
    match the registered host."""
    r = await _authorize_redirect(h, "https://app\uff0eexample\uff0ecom/cb", APP)
    expect_untrusted_page(r, "invalid_request")


@case("authorize-redirect-fullwidth-digits-loopback-refused")
async def _(h: Harness):
    """OAuth 2.1 §8.4.2: `\uff11\uff12\uff17.0.0.1` is not the loopback address 127.0.0.1."""
    r = await _authorize_redirect(h, "http://\uff11\uff12\uff17.0.0.1:9876/callback")
    expect_untrusted_page(r, "invalid_request")


@case("authorize-redirect-uppercase-host-refused")
async def _(h: Harness):
    """OAuth 2.1 §4.1.1: simple string comparison; `APP.example.com` is not what was registered."""
    r = await _authorize_redirect(h, "https://APP.example.com/cb", APP)
    expect_untrusted_page(r, "invalid_request")


@case("authorize-redirect-trailing-dot-host-refused")
async def _(h: Harness):
    """OAuth 2.1 §4.1.1: `app.example.com.` is another string."""
    r = await _authorize_redirect(h, "https://app.example.com./cb", APP)
    expect_untrusted_page(r, "invalid_request")


@case("authorize-redirect-userinfo-at-trick-refused")
async def _(h: Harness):
    """RFC 9700 §4.1.3: `https://app.example.com@evil.example/cb` goes to evil.example."""
    r = await _authorize_redirect(h, "https://app.example.com@evil.example/cb", APP)
    expect_untrusted_page(r, "invalid_request")


@case("authorize-redirect-loopback-userinfo-trick-refused")
async def _(h: Harness):
    """OAuth 2.1 §8.4.2: only the port may differ: userinfo on a loopback redirect is refused."""
    r = await _authorize_redirect(h, "http://evil.example@127.0.0.1:9876/callback")
    expect_untrusted_page(r, "invalid_request")


@case("authorize-redirect-backslash-trick-refused")
async def _(h: Harness):
    """RFC 9700 §4.1.3: `http://127.0.0.1:9876\\@evil.example/callback` (browsers read the
    backslash as a slash) is refused."""
    r = await _authorize_redirect(h, "http://127.0.0.1:9876\\@evil.example/callback")
    expect_untrusted_page(r, "invalid_request")


@case(
    "authorize-redirect-ipv6-loopback-with-trailing-host-refused",
)
async def _(h: Harness):
    """OAuth 2.1 §8.4.2 / RFC 3986 §3.2.2: `[::1].evil.example` is not the registered `[::1]`;
    for a signed-in user the request must stop at an error page, never redirect a code there."""
    reg = await h.alice()
    await register(h.api, redirect_uris=["http://[::1]:9876/callback"])
    ipv6 = next(c for c in h.rows(Client) if c.redirect_uris == ["http://[::1]:9876/callback"])
    _, challenge = pkce()
    params = authorize_params(ipv6.id, challenge, redirect_uri="http://[::1].evil.example:9876/callback")
    r = await h.browser.get("/authorize", params=params)
    if r.status_code == 303 and "/consent/" in r.headers["location"]:
        location = r.headers["location"]
        page = await h.browser.get(location)
        try:
            done = await h.browser.post(location, data={"decision": "allow", "csrf_token": csrf_from(page.text)})
        except httpx.RemoteProtocolError as exc:  # httpx cannot even parse where the code was sent
            pytest.fail(f"the authorization code was redirected to an unregistered authority: {exc}")
        pytest.fail(f"the authorization code was redirected to {done.headers.get('location')}")
    expect_untrusted_page(r, "invalid_request")
    assert reg


@case(
    "authorize-redirect-uppercase-scheme-loopback-refused",
)
async def _(h: Harness):
    """OAuth 2.1 §4.1.1 (simple string comparison) / §8.4.2 (only the loopback port may differ):
    `HTTP://` is not the registered `http://` (registration refuses uppercase schemes for this
    very reason)."""
    r = await _authorize_redirect(h, "HTTP://127.0.0.1:9876/callback")
    expect_untrusted_page(r, "invalid_request")


@case(
    "authorize-redirect-loopback-empty-query-refused",
)
async def _(h: Harness):
    """OAuth 2.1 §4.1.1 / §8.4.2: `/callback?` is another string than `/callback`."""
    r = await _authorize_redirect(h, REDIRECT + "?")
    expect_untrusted_page(r, "invalid_request")


@case("authorize-redirect-localhost-for-registered-127-refused")
async def _(h: Harness):
    """RFC 8252 §8.3 / OAuth 2.1 §8.4.2: `localhost` does not match a registered 127.0.0.1."""
    r = await _authorize_redirect(h, "http://localhost:9876/callback")
    expect_untrusted_page(r, "invalid_request")


# == other protocol refusals ===========================================================================


@case("authorize-unknown-client-400-page-no-redirect")
async def _(h: Harness):
    """RFC 6749 §4.1.2.1: an unknown client with an attacker's redirect_uri: a page, no redirect."""
    r = await h.browser.get(
        "/authorize", params={"response_type": "code", "client_id": "nobody", "redirect_uri": "https://evil.example/cb"}
    )
    expect_untrusted_page(r, "invalid_client")


@case("authorize-response-type-with-quotes-unsupported-response-type")
async def _(h: Harness):
    """RFC 6749 §4.1.2.1: response_type `code"\\` is unsupported_response_type, redirected to
    the trusted redirect URI (and the `"` `\\` do not break the error body: RFC 6749 §5.2)."""
    reg = await h.registered()
    _, challenge = pkce()
    r = await h.browser.get("/authorize", params=authorize_params(reg["client_id"], challenge, response_type='code"\\'))
    expect_error_redirect(r, "unsupported_response_type")


@case("introspect-without-credentials-401-invalid-client")
async def _(h: Harness):
    """RFC 7662 §2.1: the caller must authenticate: invalid_client, 401."""
    r = await h.api.post("/introspect", data={"token": "x"})
    expect_json(r, 401, "invalid_client")


@case("revoke-without-token-invalid-request")
async def _(h: Harness):
    """RFC 7009 §2.1: `token` is REQUIRED."""
    reg = await h.registered()
    r = await h.api.post("/revoke", data={"client_id": reg["client_id"]})
    expect_json(r, 400, "invalid_request")


@case("userinfo-basic-scheme-401-invalid-token")
async def _(h: Harness):
    """RFC 6750 §3.1: userinfo takes a Bearer token; Basic credentials are invalid_token."""
    r = await h.api.get("/userinfo", headers={"Authorization": "Basic YTpi"})
    expect_json(r, 401, "invalid_token")


@case("metadata-post-405")
async def _(h: Harness):
    """RFC 8414 §3.1: the metadata document is fetched with GET; POST is 405."""
    r = await h.api.post("/.well-known/oauth-authorization-server", content=b"x")
    expect_json(r, 405, "invalid_request")


@case("metadata-unknown-path-suffix-404")
async def _(h: Harness):
    """RFC 8414 §3.1: no metadata at `/.well-known/oauth-authorization-server/evil`."""
    r = await h.api.get("/.well-known/oauth-authorization-server/evil")
    expect_json(r, 404, "not_found")


@case("openid-configuration-traversal-path-404")
async def _(h: Harness):
    """OIDC Discovery §4: `/.well-known/openid-configuration/../../admin` is no document."""
    r = await h.api.get("/.well-known/openid-configuration/..%2F..%2Fadmin")
    expect_json(r, 404, "not_found")


@case("jwks-put-405")
async def _(h: Harness):
    """The JWKS is read-only."""
    r = await h.api.put("/jwks", json={"keys": []})
    expect_json(r, 405, "invalid_request")
    assert (await h.api.get("/jwks")).json()["keys"]


@case("healthz-post-405")
async def _(h: Harness):
    """Liveness is a GET."""
    r = await h.api.post("/healthz", content=b"x")
    expect_json(r, 405, "invalid_request")


@case("admin-as-non-admin-403-page")
async def _(h: Harness):
    """A signed-in user who is not an admin gets a 403 page from every console page."""
    await h.alice()
    r = await h.browser.get("/admin/users")
    expect_page(r, 403, "Only administrators")


@case("admin-resource-id-not-an-integer-400-page")
async def _(h: Harness):
    """A console path parameter that is not an integer is a 400 page, not a JSON error."""
    c = await h.admin()
    r = await c.get("/admin/resources/1%20OR%201=1")
    expect_page(r, 400, "Invalid parameter")


# == CSRF on every HTML form ==========================================================================


@case("csrf-login-missing-400-page-not-signed-in")
async def _(h: Harness):
    """RFC 6749 §10.12 (CSRF): a sign-in form without the token is refused; no session."""
    h.add_user("alice")
    await h.browser.get("/login")
    r = await h.browser.post("/login", data={"username": "alice", "password": "correct horse battery staple"})
    expect_expired_form(r)
    assert (await h.browser.get("/account")).status_code == 303


@case("csrf-login-forged-token-400-page")
async def _(h: Harness):
    """RFC 6749 §10.12: a made-up token is refused."""
    h.add_user("alice")
    await h.browser.get("/login")
    r = await h.browser.post(
        "/login", data={"username": "alice", "password": "correct horse battery staple", "csrf_token": "A" * 43}
    )
    expect_expired_form(r)


@case("csrf-login-without-csrf-cookie-400-page")
async def _(h: Harness):
    """RFC 6749 §10.12: a token copied from another browser, posted with no CSRF cookie (a
    cross-site form post), is refused."""
    h.add_user("alice")
    token = csrf_from((await h.http(html=True).get("/login")).text)
    r = await h.browser.post(
        "/login", data={"username": "alice", "password": "correct horse battery staple", "csrf_token": token}
    )
    expect_expired_form(r)


@case("csrf-logout-missing-400-page-session-kept")
async def _(h: Harness):
    """RFC 6749 §10.12: logout CSRF (forced sign-out) is refused; the session stays."""
    await h.alice()
    r = await h.browser.post("/logout", data={})
    expect_expired_form(r)
    assert (await h.browser.get("/account")).status_code == 200


@case("csrf-logout-other-browsers-token-400-page")
async def _(h: Harness):
    """RFC 6749 §10.12: a token of another browser's session is useless in this one."""
    await h.alice()
    token = csrf_from((await h.http(html=True).get("/login")).text)
    r = await h.browser.post("/logout", data={"csrf_token": token})
    expect_expired_form(r)


@case("csrf-consent-allow-missing-400-no-code")
async def _(h: Harness):
    """RFC 6749 §10.12 / RFC 9700 §4.7: a forged "Allow" without the token issues no code and
    stores no grant."""
    reg = await h.alice()
    location, _ = await h.consent_handle(reg)
    r = await h.browser.post(location, data={"decision": "allow"})
    expect_page(r, 400, "This form has expired")
    assert h.rows(Consent) == []


@case("csrf-consent-deny-forged-400-no-redirect")
async def _(h: Harness):
    """RFC 6749 §10.12: a forged "Deny" does not end the request either."""
    reg = await h.alice()
    location, token = await h.consent_handle(reg)
    r = await h.browser.post(location, data={"decision": "deny", "csrf_token": "A" * 43})
    expect_page(r, 400, "This form has expired")
    # The real form still works.
    done = await h.browser.post(location, data={"decision": "allow", "csrf_token": token})
    assert done.status_code == 302 and "code" in query(done.headers["location"])


@case("csrf-consent-allow-with-pre-sign-in-token-400")
async def _(h: Harness):
    """RFC 6749 §10.12: tokens are bound to the session: the token of the page before sign-in
    (a fixated one) is refused after it."""
    create_resource(h.runtime)
    reg = await register(h.api)
    h.add_user("alice")
    before = csrf_from((await h.browser.get("/login")).text)
    assert (await login(h.browser)).status_code == 303
    location, _ = await h.consent_handle(reg)
    r = await h.browser.post(location, data={"decision": "allow", "csrf_token": before})
    expect_page(r, 400, "This form has expired")
    assert h.rows(Consent) == []


@case("csrf-account-disconnect-missing-400-grant-kept")
async def _(h: Harness):
    """RFC 6749 §10.12: "Disconnect" without the token revokes nothing."""
    _, grant_id = await h.grant_for_alice()
    r = await h.browser.post("/account/disconnect", data={"grant_id": str(grant_id), "confirm": "yes"})
    expect_expired_form(r)
    assert [g.id for g in h.rows(Consent)] == [grant_id]


@case("csrf-account-password-other-browsers-token-400-unchanged")
async def _(h: Harness):
    """RFC 6749 §10.12: a password change with another session's token changes nothing."""
    await h.alice()
    before = h.user("alice").password_hash
    token = csrf_from((await h.http(html=True).get("/login")).text)
    r = await h.browser.post(
        "/account/password",
        data={
            "current_password": "correct horse battery staple",
            "new_password": "n" * 20,
            "repeat_password": "n" * 20,
            "csrf_token": token,
        },
    )
    expect_expired_form(r)
    assert h.user("alice").password_hash == before


@case("csrf-account-mfa-enrol-missing-400")
async def _(h: Harness):
    """RFC 6749 §10.12: enrolling TOTP without the token is refused."""
    await h.alice()
    await h.browser.get("/account/mfa")
    r = await h.browser.post("/account/mfa", data={"code": "123456"})
    expect_expired_form(r)
    assert h.user("alice").totp_enabled_at is None


@case("csrf-login-otp-missing-400-still-owes-code")
async def _(h: Harness):
    """RFC 6749 §10.12: the second sign-in step without the token is refused."""
    await h.alice()
    await enrol_totp(h.browser)
    other = h.http(html=True)
    first = await login(other)
    assert first.status_code == 303 and "/login/otp" in first.headers["location"], first.headers
    r = await other.post("/login/otp", data={"code": "000000"})
    expect_expired_form(r)
    assert (await other.get("/account")).status_code == 303


@case("csrf-setup-password-missing-400-link-still-unused")
async def _(h: Harness):
    """RFC 6749 §10.12: the one-time password link's form without the token sets nothing and
    does not spend the link."""
    bob = h.add_user("bob", password=False)
    root = h.add_user("root", admin=True)
    with h.runtime.sessions() as db:
        link = user_service.new_password_link(db, h.runtime.keyring, h.runtime.settings.issuer, bob, actor_id=root.id)
        db.commit()
    path = urlsplit(link).path
    await h.browser.get(path)
    r = await h.browser.post(path, data={"password": "p" * 20, "repeat_password": "p" * 20})
    expect_expired_form(r)
    assert h.user("bob").password_hash is None
    assert (await h.browser.get(path)).status_code == 200


@case("csrf-admin-create-user-missing-400-not-created")
async def _(h: Harness):
    """RFC 6749 §10.12: the console's "create user" without the token creates nobody."""
    c = await h.admin()
    r = await c.post("/admin/users", data={"username": "mallory", "password": "p" * 20, "is_admin": "on"})
    expect_expired_form(r)
    assert h.user("mallory") is None


@case("csrf-admin-disable-user-confirmed-with-other-admins-token-400")
async def _(h: Harness):
    """RFC 6749 §10.12: the confirmed second step of "disable" with another admin's token."""
    c = await h.admin()
    other = await h.admin(username="root2")
    bob = h.add_user("bob")
    token = csrf_from((await other.get(f"/admin/users/{bob.id}")).text)
    r = await c.post(f"/admin/users/{bob.id}/disable", data={"csrf_token": token, "confirm": "yes"})
    expect_expired_form(r)
    assert not h.user("bob").disabled


@case("csrf-admin-enable-user-missing-400-still-disabled")
async def _(h: Harness):
    """RFC 6749 §10.12: "enable" without the token."""
    c = await h.admin()
    bob = h.add_user("bob")
    with h.runtime.sessions() as db:
        users_store.set_disabled(db, bob.id, 1)
        db.commit()
    r = await c.post(f"/admin/users/{bob.id}/enable", data={})
    expect_expired_form(r)
    assert h.user("bob").disabled


@case("csrf-admin-grant-admin-flag-missing-400")
async def _(h: Harness):
    """RFC 6749 §10.12: making someone an admin without the token (privilege escalation)."""
    c = await h.admin()
    bob = h.add_user("bob")
    r = await c.post(f"/admin/users/{bob.id}/admin", data={"is_admin": "yes"})
    expect_expired_form(r)
    assert not h.user("bob").is_admin


@case("csrf-admin-set-groups-forged-400")
async def _(h: Harness):
    """RFC 6749 §10.12: changing groups with a made-up token."""
    c = await h.admin()
    bob = h.add_user("bob")
    r = await c.post(f"/admin/users/{bob.id}/groups", data={"groups": "admins", "csrf_token": "A" * 43})
    expect_expired_form(r)
    assert h.user("bob").groups == []


@case("csrf-admin-reset-mfa-missing-400")
async def _(h: Harness):
    """RFC 6749 §10.12: resetting someone's MFA without the token."""
    c = await h.admin()
    bob = h.add_user("bob")
    r = await c.post(f"/admin/users/{bob.id}/reset-mfa", data={"confirm": "yes"})
    expect_expired_form(r)


@case("csrf-admin-password-link-missing-400-no-link")
async def _(h: Harness):
    """RFC 6749 §10.12: creating a password link (an account takeover path) without the token."""
    c = await h.admin()
    bob = h.add_user("bob")
    r = await c.post(f"/admin/users/{bob.id}/password-link", data={})
    page = expect_expired_form(r)
    assert "/setup-password/" not in page


@case("csrf-admin-revoke-consent-missing-400-grant-kept")
async def _(h: Harness):
    """RFC 6749 §10.12: revoking a consent without the token."""
    _, grant_id = await h.grant_for_alice()
    c = await h.admin()
    r = await c.post("/admin/consents/revoke", data={"grant_id": str(grant_id), "confirm": "yes"})
    expect_expired_form(r)
    assert [g.id for g in h.rows(Consent)] == [grant_id]


@case("csrf-admin-revoke-all-consents-missing-400-grants-kept")
async def _(h: Harness):
    """RFC 6749 §10.12: bulk revocation without the token."""
    _, grant_id = await h.grant_for_alice()
    c = await h.admin()
    r = await c.post("/admin/consents/revoke-all", data={"user_id": h.user("alice").id, "confirm": "yes"})
    expect_expired_form(r)
    assert [g.id for g in h.rows(Consent)] == [grant_id]


@case("csrf-admin-delete-client-missing-400-client-kept")
async def _(h: Harness):
    """RFC 6749 §10.12: deleting a client without the token."""
    reg = await h.registered()
    c = await h.admin()
    r = await c.post("/admin/clients/delete", data={"client_id": reg["client_id"], "confirm": "yes"})
    expect_expired_form(r)
    assert [row.id for row in h.rows(Client)] == [reg["client_id"]]


@case("csrf-admin-create-resource-missing-400-not-created")
async def _(h: Harness):
    """RFC 6749 §10.12: adding an MCP server (a new token audience) without the token."""
    c = await h.admin()
    r = await c.post("/admin/resources/new", data={"uri": "https://evil.example/mcp", "name": "Evil"})
    expect_expired_form(r)
    assert h.rows(Resource) == []


@case("csrf-admin-edit-resource-forged-400-unchanged")
async def _(h: Harness):
    """RFC 6749 §10.12: re-pointing an MCP server's URI with a made-up token."""
    resource = create_resource(h.runtime)
    c = await h.admin()
    r = await c.post(
        f"/admin/resources/{resource.id}", data={"uri": "https://evil.example/mcp", "name": "Evil", "csrf_token": "A" * 43}
    )
    expect_expired_form(r)
    assert [row.uri for row in h.rows(Resource)] == [RESOURCE]


@case("csrf-admin-rotate-keys-missing-400-keys-unchanged")
async def _(h: Harness):
    """RFC 6749 §10.12: "Rotate now" without the token rotates nothing."""
    c = await h.admin()
    before = {(k.kid, k.state) for k in h.rows(SigningKey)}
    r = await c.post("/admin/keys/rotate", data={"confirm": "yes", "force": "on"})
    expect_expired_form(r)
    assert {(k.kid, k.state) for k in h.rows(SigningKey)} == before


# == the table ==========================================================================================


# The paths each case's requests went to (before the health check after it), by case id.
REACHED: dict[str, set[str]] = {}

# Every endpoint, and whether a request path reaches it by being it or by starting with it.
ENDPOINTS = [
    ("/.well-known/oauth-authorization-server", "prefix"),
    ("/.well-known/openid-configuration", "prefix"),
    ("/jwks", "exact"),
    ("/authorize", "exact"),
    ("/login", "prefix"),
    ("/logout", "exact"),
    ("/consent/", "prefix"),
    ("/token", "exact"),
    ("/register", "exact"),
    ("/register/", "prefix"),
    ("/revoke", "exact"),
    ("/introspect", "exact"),
    ("/userinfo", "exact"),
    ("/account", "prefix"),
    ("/admin/", "prefix"),
    ("/healthz", "exact"),
    ("/readyz", "exact"),
    ("/metrics", "exact"),
]


@pytest.fixture
async def harness(app, runtime, settings):
    """A case's Harness; every client it opened is closed after the case."""
    h = Harness(app, runtime, settings)
    try:
        yield h
    finally:
        await h.close()


@pytest.mark.parametrize(("scenario", "settings_overrides"), CASES)
async def test_hostile_input(request, scenario, settings_overrides, harness: Harness):
    """Run one hostile case (see its docstring for what it proves and the RFC), then check that
    no response of the case was a 5xx or split a header, and that the server is still healthy."""
    try:
        await scenario(harness)
    finally:
        REACHED[request.node.callspec.id] = set(harness.paths)
    harness.assert_no_server_error_nor_header_split()
    await harness.assert_healthy()


def test_the_table_is_big_and_covers_every_endpoint():
    """At least 45 named cases over every endpoint: the requests the cases above sent (recorded
    as they ran) reached each one."""
    assert len(CASES) >= 45
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    if not_run := set(ids) - REACHED.keys():
        pytest.skip(f"{len(not_run)} of the {len(ids)} cases did not run here: coverage is checked with the whole table")
    reached = set().union(*REACHED.values())
    for endpoint, match in ENDPOINTS:
        hit = [p for p in reached if (p.startswith(endpoint) if match == "prefix" else p == endpoint)]
        assert hit, f"no hostile case for {endpoint}"
