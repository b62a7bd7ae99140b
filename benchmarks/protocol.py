"""One target's OAuth requests: discovery, registration, the authorization code through the real
sign-in and consent pages, the token endpoint and introspection.

Every worker signs in through the server's pages, by plain form submission (no browser, no
backdoor): authorization request, sign-in form, consent form, code. The worker keeps the
cookies, so from then on it is a returning user whose authorization request is answered with a
code at once. Forms are found generically (a form with a password field is a sign-in page; a
form with an "allow" button a consent page), so the same code drives every target.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any
from urllib.parse import parse_qsl, quote

from yarl import URL

from benchmarks.browser import Fail, Http, Jar, Page, Response
from benchmarks.targets import Target

REDIRECTS = (301, 302, 303, 307, 308)
MAX_STEPS = 16  # requests of one sign-in, redirects included


def _basic(client_id: str, secret: str) -> str:
    # RFC 6749 §2.3.1: both form-urlencoded before they are joined and base64-encoded.
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _pkce() -> tuple[str, str]:
    """RFC 7636 §4.1-4.2: a verifier and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _loopback(url: URL) -> bool:
    host = url.host or ""
    if host == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class Worker:
    index: int
    jar: Jar = field(default_factory=Jar)
    access_token: str | None = None
    refresh_token: str | None = None


@dataclass
class TargetState:
    """What the driver learned and set up at a target: its metadata, its clients, the workers."""

    target: Target
    metadata: dict[str, Any] = field(default_factory=dict)
    discovery_url: str = ""
    client_id: str = ""
    introspector: tuple[str, str] | None = None
    workers: list[Worker] = field(default_factory=list)
    next_first_user: int = 0
    stale: bool = False  # its clients and sessions may have been evicted (see Target.client_store_limit)

    def endpoint(self, name: str) -> URL:
        value = self.metadata.get(name)
        if not isinstance(value, str) or not value:
            raise Fail(f"no {name} in the metadata")
        url = URL(value)
        if not _loopback(url):
            raise Fail(f"{name} is not a loopback URL", value)
        return url


class Protocol:
    """The OAuth requests of one target, over one run's HTTP client."""

    def __init__(self, state: TargetState, http: Http) -> None:
        self.s = state
        self.t = state.target
        self.http = http

    # -- discovery and registration (RFC 8414, RFC 7591) -----------------------------------------

    async def discover(self) -> None:
        problems = []
        for path in self.t.discovery_paths:
            url = URL(self.t.issuer + path)
            r = await self.http.request("GET", url)
            if r.status != 200:
                problems.append(f"{path}: HTTP {r.status}")
                continue
            metadata = r.json()
            if metadata.get("issuer") != self.t.issuer:  # RFC 8414 §3.3
                raise Fail("discovery: issuer mismatch", f"{metadata.get('issuer')!r} at {url}")
            self.s.metadata, self.s.discovery_url = metadata, str(url)
            return
        raise Fail("discovery failed", "; ".join(problems))

    async def register(self, *, confidential: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {
            "client_name": f"bench-{secrets.token_hex(4)}",
            "redirect_uris": [self.t.redirect_uri],
            "token_endpoint_auth_method": "client_secret_basic" if confidential else "none",
            "grant_types": ["authorization_code"] if confidential else ["authorization_code", "refresh_token"],
            "response_types": ["code"],
        }
        r = await self.http.request("POST", self.s.endpoint("registration_endpoint"), json_body=body)
        if r.status != 201:  # RFC 7591 §3.2.1
            raise Fail(f"register: HTTP {r.status} {r.oauth_error()}".rstrip(), r.body[:200].decode(errors="replace"))
        client = r.json()
        if not client.get("client_id") or (confidential and not client.get("client_secret")):
            raise Fail("register: no client_id or client_secret")
        return client

    # -- the authorization code (RFC 6749 §4.1, PKCE RFC 7636, RFC 8707, RFC 9207) ---------------

    def authorization(self, extra: dict[str, str] | None = None) -> tuple[URL, str, str]:
        verifier, challenge = _pkce()
        state = secrets.token_urlsafe(16)
        params = {
            "response_type": "code",
            "client_id": self.s.client_id,
            "redirect_uri": self.t.redirect_uri,
            "scope": self.t.scope,
            "resource": self.t.resource,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **(extra or {}),
        }
        return self.s.endpoint("authorization_endpoint").with_query(params), state, verifier

    def is_redirect_uri(self, url: URL) -> bool:
        expected = URL(self.t.redirect_uri)
        return (url.scheme, url.host, url.port, url.path) == (expected.scheme, expected.host, expected.port, expected.path)

    def code_from(self, url: URL, state: str) -> str:
        params = dict(parse_qsl(url.raw_query_string))
        if "error" in params:
            raise Fail(f"authorize: error={params['error']}", params.get("error_description", ""))
        if params.get("state") != state:
            raise Fail("authorize: state mismatch")
        # RFC 9207 §2.4: a server that says it sends `iss` must send its own issuer.
        iss_expected = self.s.metadata.get("authorization_response_iss_parameter_supported") or "iss" in params
        if iss_expected and params.get("iss") != self.t.issuer:
            raise Fail("authorize: iss mismatch", repr(params.get("iss")))
        if not params.get("code"):
            raise Fail("authorize: no code")
        return params["code"]

    async def authorize_returning(self, jar: Jar) -> tuple[str, str]:
        """A signed-in user whose consent covers the request: one redirect to redirect_uri."""
        url, state, verifier = self.authorization()
        r = await self.http.request("GET", url, jar=jar)
        location = r.headers.get("Location", "")
        if r.status not in (302, 303) or not location:
            raise Fail(f"authorize: HTTP {r.status}", _describe(r))
        target = url.join(URL(location))
        if not self.is_redirect_uri(target):
            raise Fail("authorize: not redirected to redirect_uri", target.path)
        return self.code_from(target, state), verifier

    async def sign_in(self, jar: Jar, username: str, password: str, extra: dict[str, str] | None = None) -> tuple[str, str]:
        """The authorization request through whatever pages the server shows (sign-in,
        consent), submitted as a browser would, until the redirect to redirect_uri."""
        url, state, verifier = self.authorization(extra)
        method, data = "GET", None
        logins = consents = 0
        for _ in range(MAX_STEPS):
            r = await self.http.request(method, url, jar=jar, data=data)
            if r.status in REDIRECTS:
                location = r.headers.get("Location")
                if not location:
                    raise Fail(f"sign-in: HTTP {r.status} without Location")
                following = url.join(URL(location))
                if self.is_redirect_uri(following):
                    return self.code_from(following, state), verifier
                if not _loopback(following):
                    raise Fail("sign-in: redirected off loopback", str(following.origin()))
                if r.status in (301, 302, 303):  # RFC 9110 §15.4: a GET follows
                    method, data = "GET", None
                url = following
                continue
            page = Page(r.body.decode("utf-8", errors="replace"))
            login = next((f for f in page.forms if f.is_login()), None)
            consent = next((f for f in page.forms if f.allow_button() is not None), None)
            if login is not None:
                if logins:
                    raise Fail(f"sign-in refused: HTTP {r.status}", page.describe())
                logins += 1
                url, method, data = url.join(URL(login.action)), login.method, login.login_fields(username, password)
            elif consent is not None:
                if consents > 1:
                    raise Fail("consent asked again", page.describe())
                consents += 1
                url, method, data = url.join(URL(consent.action)), consent.method, consent.consent_fields()
            else:
                raise Fail(f"sign-in: HTTP {r.status} page without a form", page.describe())
            if method != "POST":
                raise Fail("sign-in: a form that is not POST", f"{method} {url.path}")
        raise Fail("sign-in: too many steps")

    # -- the token endpoint (RFC 6749 §4.1.3, §6) and introspection (RFC 7662) --------------------

    async def token(self, what: str, form: dict[str, str]) -> dict[str, Any]:
        form = {**form, "client_id": self.s.client_id, "resource": self.t.resource}  # RFC 8707 §2.2
        r = await self.http.request("POST", self.s.endpoint("token_endpoint"), data=form, headers={"Accept": "application/json"})
        if r.status != 200:
            error = r.oauth_error()
            detail = r.json().get("error_description", "") if error else r.body[:200].decode(errors="replace")
            raise Fail(f"{what}: HTTP {r.status} {error}".rstrip(), str(detail))
        body = r.json()
        if not body.get("access_token"):
            raise Fail(f"{what}: no access_token")
        return body

    async def exchange(self, code: str, verifier: str) -> dict[str, Any]:
        form = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": self.t.redirect_uri}
        return await self.token("token", form)

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        return await self.token("refresh", {"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def introspect(self, token: str) -> None:
        assert self.s.introspector is not None
        form = {"token": token, "token_type_hint": self.t.introspect_kind}
        headers = {"Authorization": _basic(*self.s.introspector), "Accept": "application/json"}
        r = await self.http.request("POST", self.s.endpoint("introspection_endpoint"), data=form, headers=headers)
        if r.status != 200:
            raise Fail(f"introspect: HTTP {r.status} {r.oauth_error()}".rstrip(), r.body[:200].decode(errors="replace"))
        if r.json().get("active") is not True:
            raise Fail("introspect: not active")


def _describe(r: Response) -> str:
    if r.headers.get("Content-Type", "").startswith("text/html"):
        return Page(r.body.decode("utf-8", errors="replace")).describe()
    return r.body[:200].decode(errors="replace")
