"""Browser journeys through the admin console and the account page.

Real processes: `ostiary serve` on 127.0.0.1 with OSTIARY_ADMIN_MFA=required and a throwaway
database (SQLite, or PostgreSQL with OSTIARY_TEST_DATABASE_URL), set up with the real CLI; headless
Chromium (Playwright) on the real pages; httpx on the protocol endpoints (/register, /token,
/introspect, /jwks). Each journey ends where the issue says it must: at /token (invalid_grant),
/introspect (inactive), /jwks (a new next key) or in the token's scope.

Every console page is also photographed at a desktop and a phone width into
test-artifacts/screenshots/ (gitignored) for a reviewer, and must not scroll sideways on the
phone (tables scroll inside their own box).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pyotp
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.e2e.servers import ostiary_cli, ostiary_env, ostiary_server
from tests.support import CHROMIUM_ARGS, PASSWORD, ROOT, chromium_or_skip, empty_database, free_port, jwt_claims, pkce

pytestmark = pytest.mark.slow

SHOTS = ROOT / "test-artifacts" / "screenshots"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ADMIN = "root"
USERS = ("alice", "bob", "carol", "dave", "erin")


# -- the stack ---------------------------------------------------------------------------------


class Callback:
    """The clients' loopback redirect URI (RFC 8252 §7.3): records each answer by its state."""

    def __init__(self):
        self.results: dict[str, dict[str, str]] = {}
        results = self.results

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parts = urlsplit(self.path)
                if parts.path == "/callback":
                    params = {k: v[0] for k, v in parse_qs(parts.query).items()}
                    results[params.get("state", "")] = params
                body = b"<!doctype html><title>Done</title><p>You can close this window."
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self, state: str, timeout: float = 10.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while state not in self.results:
            assert time.monotonic() < deadline, f"no redirect to the callback for state {state}"
            time.sleep(0.05)
        return self.results.pop(state)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack:
    issuer: str
    notes: str  # an MCP server (resource) for the revocation journeys
    wiki: str  # an MCP server whose scopes the access-policy journey limits to a group
    rs_id: str  # a confidential client for /introspect, as a resource server has
    rs_secret: str
    user_ids: dict[str, str]
    callback: Callback


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console")
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    notes, wiki = f"http://127.0.0.1:{free_port()}/mcp", f"http://127.0.0.1:{free_port()}/wiki/mcp"
    callback = Callback()
    try:
        with empty_database(tmp, "ostiary_e2e") as database_url:
            # Admins must enrol TOTP before they reach the console (the default off loopback).
            env = ostiary_env(issuer, database_url, admin_mfa="required")
            with ostiary_server(env, port, tmp / "ostiary.log"):
                commands = [
                    ("users", "create", ADMIN, "--admin", "--password-stdin"),
                    *(("users", "create", name, "--password-stdin") for name in USERS),
                    ("resources", "add", notes, "--name", "Notes", "--scope", "mcp:read=Read your notes",
                     "--scope", "mcp:write=Change your notes", "--default-scope", "mcp:read"),
                    ("resources", "add", wiki, "--name", "Team wiki", "--scope", "wiki:read=Read the wiki",
                     "--scope", "wiki:edit=Edit wiki pages"),
                    # introspects tokens for both MCP servers (docs/decisions.md#introspection-is-for-the-tokens-mcp-server)
                    ("clients", "add", "--name", "rs", "--confidential", "--introspect-any"),
                ]  # fmt: skip
                with ThreadPoolExecutor(max_workers=3) as pool:  # each CLI start is about a second
                    outputs = list(pool.map(lambda args: ostiary_cli(env, *args, stdin=PASSWORD + "\n"), commands))
                user_ids = {}
                for out in outputs:
                    if out.startswith("created"):  # "created [admin ]user NAME (ID)"
                        name, uid = out.split("user ", 1)[1].strip().split(" ")
                        user_ids[name] = uid.strip("()")
                credentials = dict(line.split(": ", 1) for line in outputs[-1].splitlines() if ": " in line)
                yield Stack(issuer, notes, wiki, credentials["client_id"], credentials["client_secret"], user_ids, callback)
    finally:
        callback.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Asked for before the stack, so a missing browser skips before any server starts.
    path = chromium_or_skip()
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_context(browser: Browser, stack: Stack) -> Iterator:
    """Fresh browser profiles (optionally with a saved session), closed after the test."""
    opened: list[BrowserContext] = []

    def make(storage_state: dict | None = None) -> Page:
        context = browser.new_context(viewport=DESKTOP, base_url=stack.issuer, storage_state=storage_state)
        context.set_default_timeout(10_000)
        opened.append(context)
        return context.new_page()

    yield make
    for context in opened:
        context.close()


@dataclass
class Admin:
    totp: pyotp.TOTP
    state: dict  # a signed-in admin session (cookies), for journeys that start in the console


@pytest.fixture(scope="module")
def admin(browser: Browser, stack: Stack) -> Admin:
    """The admin's first visit: anonymous -> sign-in -> forced TOTP enrolment (OSTIARY_ADMIN_MFA=
    required), reading the key from the enrolment page -> recovery codes -> the console."""
    context = browser.new_context(viewport=DESKTOP, base_url=stack.issuer)
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        page.goto("/admin")
        expect(page).to_have_url(f"{stack.issuer}/login?next=%2Fadmin")
        sign_in(page, ADMIN)
        expect(page).to_have_url(f"{stack.issuer}/account/mfa?next=%2Fadmin")
        expect(page.get_by_role("note")).to_contain_text("Administrators must use two-step verification")
        shoot(page, "mfa-enrolment")
        totp = pyotp.TOTP(page.locator("#totp-secret").get_attribute("data-secret"))
        page.get_by_label("Authentication code").fill(totp.now())
        page.get_by_role("button", name="Turn on").click()
        expect(page.get_by_role("heading", name="Two-step verification is on")).to_be_visible()
        expect(page.locator("ul.recovery-codes li")).to_have_count(10)
        shoot(page, "mfa-recovery-codes")
        page.get_by_role("link", name="Continue").click()
        expect(page).to_have_url(f"{stack.issuer}/admin")
        expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
        return Admin(totp, context.storage_state())
    finally:
        context.close()


# -- helpers: pages ----------------------------------------------------------------------------


def sign_in(page: Page, username: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def shoot(page: Page, name: str) -> int:
    """Full-page screenshots at desktop and phone width; returns how many pixels the phone
    layout scrolls sideways (0 when everything fits or scrolls inside its own box)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    try:
        page.screenshot(path=str(SHOTS / f"{name}-phone.png"), full_page=True)
        return page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    finally:
        page.set_viewport_size(DESKTOP)


def grant_row(page: Page, text: str):
    return page.locator("table.grants tbody tr").filter(has_text=text)


# -- helpers: OAuth over HTTP, consent in the browser ------------------------------------------


@dataclass
class Tokens:
    client_id: str
    access: str
    refresh: str
    scope: str
    offered: dict[str, list[str]]  # the consent page's scopes by data-scope-status


def register(stack: Stack, name: str) -> str:
    metadata = {
        "client_name": name,
        "redirect_uris": [stack.callback.url],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    response = httpx.post(stack.issuer + "/register", json=metadata)
    assert response.status_code == 201, response.text
    return response.json()["client_id"]


def authorize_url(stack: Stack, client_id: str, scope: str, resource: str) -> tuple[str, str, str]:
    """(URL, state, code_verifier) of an authorization request with PKCE S256 and a resource."""
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(12)
    query = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": stack.callback.url,
        "scope": scope,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": resource,
    }
    return f"{stack.issuer}/authorize?{urlencode(query)}", state, verifier


def open_consent(page: Page, url: str, username: str) -> None:
    """Start an authorization in the browser; sign in if asked; stop on the consent page."""
    page.goto(url)
    if page.get_by_role("button", name="Sign in").count():
        sign_in(page, username)
    expect(page.get_by_role("button", name="Allow")).to_be_visible()


def offered_scopes(page: Page) -> dict[str, list[str]]:
    items = page.locator("[data-scope]").evaluate_all("els => els.map(e => [e.dataset.scope, e.dataset.scopeStatus])")
    seen: dict[str, list[str]] = {"new": [], "granted": []}
    for scope, status in items:
        seen[status].append(scope)
    return seen


def connect(page: Page, stack: Stack, *, app: str, username: str, scope: str, resource: str) -> Tokens:
    """A new public client, authorized by `username` in the browser; its tokens, over HTTP."""
    client_id = register(stack, app)
    url, state, verifier = authorize_url(stack, client_id, scope, resource)
    open_consent(page, url, username)
    offered = offered_scopes(page)
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(lambda u: u.startswith(stack.callback.url))
    answer = stack.callback.take(state)
    assert "code" in answer and answer.get("iss") == stack.issuer, answer
    response = httpx.post(
        stack.issuer + "/token",
        data={
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": stack.callback.url,
            "client_id": client_id,
            "code_verifier": verifier,
            "resource": resource,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body.get("refresh_token"), body
    return Tokens(client_id, body["access_token"], body["refresh_token"], body["scope"], offered)


def refresh(stack: Stack, tokens: Tokens, resource: str) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": tokens.refresh, "client_id": tokens.client_id, "resource": resource}
    return httpx.post(stack.issuer + "/token", data=data)


def introspect(stack: Stack, token: str) -> dict:
    response = httpx.post(stack.issuer + "/introspect", data={"token": token}, auth=(stack.rs_id, stack.rs_secret))
    assert response.status_code == 200, response.text
    return response.json()


def assert_revoked(stack: Stack, tokens: Tokens, resource: str) -> None:
    """The end of a revocation journey: the refresh token is refused, the access token (a JWT
    that is still unexpired) is reported inactive."""
    answer = refresh(stack, tokens, resource)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant", answer.text
    assert introspect(stack, tokens.access) == {"active": False}
    assert introspect(stack, tokens.refresh)["active"] is False


def jwks_kids(stack: Stack) -> set[str]:
    return {k["kid"] for k in httpx.get(stack.issuer + "/jwks").json()["keys"]}


# -- the journeys ------------------------------------------------------------------------------


def test_admin_signs_in_with_totp_revokes_a_users_consent_for_a_client_and_its_tokens_die(new_context, stack, admin):
    """An admin signs in with TOTP, finds a user's consent for a client, revokes it, and that
    client's refresh token is then rejected at /token with invalid_grant and its access token is
    inactive at /introspect (docs/decisions.md#revoking-a-consent-ends-every-family-under-it)."""
    user = new_context()
    doomed = connect(user, stack, app="Journey A desktop", username="alice", scope="mcp:read mcp:write", resource=stack.notes)
    kept = connect(user, stack, app="Journey A phone", username="alice", scope="mcp:read", resource=stack.notes)
    assert introspect(stack, doomed.access)["active"] is True

    page = new_context()
    page.goto("/admin")
    sign_in(page, ADMIN)
    # The second step: a code from the authenticator (the next time step: the enrolment used this one).
    expect(page).to_have_url(f"{stack.issuer}/login/otp?next=%2Fadmin")
    page.get_by_label("Authentication code").fill(admin.totp.at(time.time() + 30))
    page.get_by_role("button", name="Verify").click()
    expect(page).to_have_url(f"{stack.issuer}/admin")

    page.get_by_role("navigation", name="Admin console").get_by_role("link", name="Consents").click()
    page.get_by_label("User", exact=True).fill("alice")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.grants tbody tr")).to_have_count(2)  # both of alice's apps
    page.get_by_label("Client", exact=True).fill("Journey A desktop")
    page.get_by_role("button", name="Filter").click()
    row = grant_row(page, "Journey A desktop")
    expect(page.locator("table.grants tbody tr")).to_have_count(1)
    expect(row).to_contain_text("alice")
    expect(row).to_contain_text("Notes")
    expect(row).to_contain_text("mcp:write")

    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("heading", name="Revoke this consent?")).to_be_visible()
    expect(page.locator("section.confirm")).to_contain_text("Journey A desktop loses access to Notes for alice")
    shoot(page, "admin-consent-revoke-confirm")
    page.get_by_role("button", name="Confirm").click()
    expect(page.get_by_role("status")).to_have_text("Revoked 1 consent.")
    expect(page.locator("table.grants")).to_have_count(0)
    assert urlsplit(page.url).path == "/admin/consents" and "client=Journey+A+desktop" in page.url  # back to the filter

    assert_revoked(stack, doomed, stack.notes)
    # Only that consent: alice's other app keeps working.
    assert introspect(stack, kept.access)["active"] is True
    assert refresh(stack, kept, stack.notes).status_code == 200

    # Audited, with the acting admin.
    page.goto("/admin/audit?" + urlencode({"event": "consent.revoked", "client": doomed.client_id}))
    event = page.locator("tr[data-event='consent.revoked']")
    expect(event).to_have_count(1)
    expect(event).to_contain_text("alice")
    expect(event).to_contain_text(f"by {ADMIN}")
    expect(event).to_contain_text("via=admin")


def test_user_disconnects_an_app_on_the_account_page_and_its_tokens_die(new_context, stack):
    """A user disconnects an app from /account with the same effect
    (docs/decisions.md#revoking-a-consent-ends-every-family-under-it)."""
    page = new_context()
    tokens = connect(page, stack, app="Journey B assistant", username="bob", scope="mcp:read", resource=stack.notes)
    assert introspect(stack, tokens.access)["active"] is True

    page.goto("/account")
    apps = page.locator("#apps")
    expect(apps.get_by_role("heading", name="Connected apps")).to_be_visible()
    row = grant_row(apps, "Journey B assistant")
    expect(row).to_contain_text("Notes")
    expect(row).to_contain_text("mcp:read")
    row.get_by_role("button", name="Disconnect").click()
    expect(page.get_by_role("heading", name="Disconnect Journey B assistant?")).to_be_visible()
    page.get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(f"{stack.issuer}/account?done=disconnected")
    expect(page.get_by_role("status")).to_have_text("App disconnected.")
    expect(apps).to_contain_text("No apps are connected to your account.")

    assert_revoked(stack, tokens, stack.notes)


def test_admin_rotates_keys_now_and_jwks_publishes_a_new_next_key(new_context, stack, admin):
    """An admin rotates keys and the JWKS shows the new next key
    (docs/decisions.md#a-new-key-is-published-before-it-signs)."""
    published_before = jwks_kids(stack)
    page = new_context(admin.state)
    page.goto("/admin/keys")

    def states() -> dict[str, str]:
        rows = page.locator("table.keys tbody tr").evaluate_all("rs => rs.map(r => [r.dataset.kid, r.dataset.state])")
        return dict(rows)

    before = states()
    active = [kid for kid, state in before.items() if state == "active"]
    upcoming = [kid for kid, state in before.items() if state == "next"]
    assert len(active) == 1 and len(upcoming) == 1, before
    assert {*active, *upcoming} <= published_before  # the next key is published before it signs

    page.get_by_role("button", name="Rotate now").click()
    expect(page.get_by_role("heading", name="Rotate the signing keys now?")).to_be_visible()
    page.get_by_role("button", name="Confirm").click()
    # The next key was published moments ago (this server just started): resource servers may
    # not have it yet, so the console refuses and offers to rotate anyway.
    expect(page.get_by_role("alert")).to_contain_text("Rotation refused")
    shoot(page, "admin-keys-rotation-refused")
    page.get_by_label("Rotate anyway").check()
    page.get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(f"{stack.issuer}/admin/keys?done={upcoming[0][:16]}")
    expect(page.get_by_role("status")).to_contain_text("is now the active key")

    after = states()
    assert after[upcoming[0]] == "active"
    assert after[active[0]] == "retired"
    new_next = [kid for kid, state in after.items() if state == "next"]
    assert len(new_next) == 1 and new_next[0] not in before and new_next[0] not in published_before
    published_after = jwks_kids(stack)
    assert new_next[0] in published_after
    assert {upcoming[0], active[0]} <= published_after  # the retired key stays until its tokens expire


def test_user_outside_a_scopes_group_is_offered_only_the_permitted_subset_and_the_token_carries_only_that(
    new_context, stack, admin
):
    """A user outside a scope's group is offered only the permitted subset and the token carries
    only that (docs/decisions.md#access-policy-by-groups-is-applied-at-every-refresh); the policy
    is set in the console (MCP servers, Users)."""
    console = new_context(admin.state)
    # wiki:edit only for the group "contributors" ...
    console.goto("/admin/resources")
    console.locator("table.resources").get_by_role("link", name="Team wiki").click()
    expect(console.get_by_label("Scope 2 name")).to_have_value("wiki:edit")
    console.get_by_label("Scope 2 allowed groups").fill("contributors")
    console.get_by_role("button", name="Save").click()
    expect(console.get_by_role("status")).to_have_text("Saved.")
    expect(console.get_by_label("Scope 2 allowed groups")).to_have_value("contributors")
    # ... of which dave is a member, and carol is not.
    console.goto("/admin/users")
    console.get_by_label("Search").fill("dave")
    console.get_by_role("button", name="Search").click()
    console.locator("table.users").get_by_role("link", name="dave").click()
    console.get_by_label("Groups").fill("contributors")
    console.get_by_role("button", name="Save groups").click()
    expect(console.get_by_role("status")).to_have_text("Groups saved.")

    scope = "wiki:read wiki:edit"
    carol = new_context()
    tokens = connect(carol, stack, app="Journey D editor", username="carol", scope=scope, resource=stack.wiki)
    assert tokens.offered == {"new": ["wiki:read"], "granted": []}
    assert tokens.scope == "wiki:read"
    assert jwt_claims(tokens.access)["scope"] == "wiki:read"
    assert introspect(stack, tokens.access)["scope"] == "wiki:read"
    # A refresh does not bring the scope back either.
    refreshed = refresh(stack, tokens, stack.wiki)
    assert refreshed.status_code == 200 and refreshed.json()["scope"] == "wiki:read", refreshed.text

    # The consent page says what was left out.
    client_id = register(stack, "Journey D second look")
    url, state, _ = authorize_url(stack, client_id, scope, stack.wiki)
    open_consent(carol, url, "carol")
    expect(carol.locator("section.consent")).to_contain_text("Not available to your account: wiki:edit.")
    assert offered_scopes(carol) == {"new": ["wiki:read"], "granted": []}
    # Nothing left: access_denied, without a consent page.
    url, state, _ = authorize_url(stack, client_id, "wiki:edit", stack.wiki)
    carol.goto(url)
    carol.wait_for_url(lambda u: u.startswith(stack.callback.url))
    assert stack.callback.take(state)["error"] == "access_denied"

    # A member is offered and granted both.
    dave = new_context()
    tokens = connect(dave, stack, app="Journey D editor", username="dave", scope=scope, resource=stack.wiki)
    assert tokens.offered == {"new": ["wiki:read", "wiki:edit"], "granted": []}
    assert set(tokens.scope.split()) == {"wiki:read", "wiki:edit"}
    assert set(jwt_claims(tokens.access)["scope"].split()) == {"wiki:read", "wiki:edit"}


def test_screenshots_of_every_console_page_at_desktop_and_phone_width(new_context, stack, admin):
    """A screenshot of each console page, so that a reviewer can look; and the console works on a
    narrow window (no page scrolls sideways at 390 px)."""
    overflow: dict[str, int] = {}

    login = new_context()
    login.goto("/login")
    overflow["login"] = shoot(login, "login")

    user = new_context()
    first = connect(user, stack, app="Screenshot assistant", username="erin", scope="mcp:read mcp:write", resource=stack.notes)
    connect(user, stack, app="Screenshot wiki client", username="erin", scope="wiki:read", resource=stack.wiki)
    long_name = register(stack, "A rather long client name from a dynamic registration")
    url, _, _ = authorize_url(stack, long_name, "mcp:read mcp:write", stack.notes)
    open_consent(user, url, "erin")
    overflow["consent"] = shoot(user, "consent")
    user.goto("/account")
    expect(grant_row(user, "Screenshot assistant")).to_have_count(1)
    overflow["account"] = shoot(user, "account")

    console = new_context(admin.state)
    pages = {
        "admin-overview": "/admin",
        "admin-consents": "/admin/consents",
        "admin-users": "/admin/users",
        "admin-user": f"/admin/users/{stack.user_ids['erin']}",
        "admin-clients": "/admin/clients",
        "admin-client": "/admin/clients/detail?" + urlencode({"id": first.client_id}),
        "admin-resources": "/admin/resources",
        "admin-keys": "/admin/keys",
        "admin-audit": "/admin/audit",
    }
    for name, path in pages.items():
        response = console.goto(path)
        assert response.status == 200, (path, response.status)
        expect(console.get_by_role("navigation", name="Admin console")).to_be_visible()
        overflow[name] = shoot(console, name)
    console.goto("/admin/resources")
    console.locator("table.resources").get_by_role("link", name="Notes").click()
    expect(console.get_by_label("Canonical URI")).to_have_value(stack.notes)
    overflow["admin-resource"] = shoot(console, "admin-resource")

    assert {name: px for name, px in overflow.items() if px > 0} == {}, f"pages that scroll sideways at {PHONE['width']} px"
