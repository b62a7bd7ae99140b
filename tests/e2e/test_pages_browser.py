"""Every page a user sees outside the admin console, in a real browser, as a user meets them:
an app's authorization request, sign-in (a wrong password, then TOTP), consent, switching
account, the error pages, the account page and its confirmation, two-step verification
enrolment, a password link and signing out.

Real processes: the app under uvicorn on 127.0.0.1 (a throwaway database), headless Chromium
(Playwright). Each page is photographed at a desktop and a phone width (390 px) into
test-artifacts/screenshots/pages/ (gitignored) for a reviewer, must not scroll sideways on the
phone, and is checked with axe-core (tests/node/node_modules/axe-core, WCAG 2.0/2.1 A and AA,
best practices and WCAG 2.2's target size): no serious or critical finding, the admin console's
pages included; test-artifacts/screenshots/pages/axe.json lists every finding of every page, with
counts by impact.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock
from urllib.parse import urlencode

import httpx
import pyotp
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.infra.db import make_engine
from app.models import IdentityProvider
from app.runtime import Runtime
from app.services import users as user_service
from app.stores import schema
from app.stores import users as users_store
from tests import support
from tests.support import CHROMIUM_ARGS, PASSWORD, ROOT, chromium_or_skip, create_resource, create_user, empty_database, pkce

pytestmark = pytest.mark.slow

SHOTS = ROOT / "test-artifacts" / "screenshots" / "pages"
AXE = ROOT / "tests" / "node" / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
BLOCKING = ("serious", "critical")
# axe's default rules (WCAG 2.0/2.1 A and AA, best practices) and WCAG 2.2's target size (2.5.8).
AXE_RUN = """async () => (await axe.run(document, {
  resultTypes: ['violations'], rules: {'target-size': {enabled: true}},
})).violations"""

RESOURCE = "https://notes-and-documents.example.com/workspaces/engineering-team/mcp/streamable-http"
APP_NAME = "Notes Helper for the Engineering Team"
APP_SITE = "https://notes-helper.example.com"
LOGO = f"{APP_SITE}/static/notes-helper-logo.png"
# A 1x1 PNG: what the app's logo host answers (the browser's request never leaves the machine).
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d4944415478da63f8cff0bf1e0005ff02fe45f5bd9c0000000049454e44ae426082"
)


# -- the site ----------------------------------------------------------------------------------


class Callback:
    """The app's loopback redirect URI (RFC 8252 §7.3)."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"<!doctype html><html lang=en><title>Done</title><main><h1>Done</h1></main>"
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

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Site:
    base: str
    runtime: Runtime
    client_id: str
    callback: str

    def authorize_url(self, **extra: str) -> str:
        _, challenge = pkce()
        query = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.callback,
            "scope": "mcp:read mcp:write",
            "state": secrets.token_urlsafe(8),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            "resource": RESOURCE,
            **extra,
        }
        return f"{self.base}/authorize?{urlencode(query)}"

    def password_link(self, username: str) -> str:
        """What an admin hands a user: a one-time link to set a password."""
        with self.runtime.sessions() as db:
            user = users_store.by_username(db, username)
            assert user is not None
            link = user_service.new_password_link(db, self.runtime.keyring, self.runtime.settings.issuer, user, actor_id=user.id)
            db.commit()
        return link


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Site]:
    """The app under uvicorn, its issuer the address the browser uses; users, an MCP server with
    a long URI, and a self-registered app with a homepage, policy, terms and logo (RFC 7591 §2)."""
    tmp = tmp_path_factory.mktemp("pages")
    port = support.free_port()
    callback = Callback()
    try:
        with empty_database(tmp, "ostiary_pages") as url:
            engine = make_engine(url)
            try:
                schema.upgrade(engine)
            finally:
                engine.dispose()
            settings = support.make_settings(url, issuer=f"http://127.0.0.1:{port}")
            with mock.patch.object(support, "free_port", return_value=port):  # the issuer's port
                server = support.UvicornServer(settings)
            with server as base:
                runtime = server.app.state.runtime
                for name in ("alice", "bob", "dave", "erin"):
                    create_user(runtime, name)
                create_user(runtime, "carol", password=secrets.token_urlsafe(16))  # gets a password link
                create_user(runtime, "root", admin=True)
                create_resource(runtime, uri=RESOURCE, name="Team notes")
                with runtime.sessions() as db:  # an organisation's provider, offered on the sign-in page
                    db.add(IdentityProvider(name="acme", issuer="https://idp.acme.example", client_id="ostiary"))
                    db.commit()
                metadata = {
                    "client_name": APP_NAME,
                    "redirect_uris": [callback.url],
                    "client_uri": f"{APP_SITE}/about/the-engineering-notes-helper-for-teams",
                    "logo_uri": LOGO,
                    "policy_uri": f"{APP_SITE}/legal/privacy-policy.html",
                    "tos_uri": "https://legal.notes-helper.example.com/terms-of-service.html",
                }
                registered = httpx.post(base + "/register", json=metadata)
                assert registered.status_code == 201, registered.text
                yield Site(base, runtime, registered.json()["client_id"], callback.url)
    finally:
        callback.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    path = chromium_or_skip()
    if not AXE.exists():
        support.unavailable("tests/node/node_modules/axe-core is missing (run `npm ci` in tests/node)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Browser, site: Site) -> Iterator:
    """Fresh browser profiles, closed after the test."""
    opened = []

    def make() -> Page:
        context = browser.new_context(viewport=DESKTOP, base_url=site.base)
        context.set_default_timeout(10_000)
        context.add_init_script(path=str(AXE))  # injected by the browser: not subject to the pages' CSP
        # The app's logo host, answered here: the request never leaves the machine, but the
        # page's CSP still decides whether the browser may make it.
        context.route(f"{APP_SITE}/**", lambda route: route.fulfill(status=200, content_type="image/png", body=PNG))
        opened.append(context)
        return context.new_page()

    yield make
    for context in opened:
        context.close()


# -- helpers -----------------------------------------------------------------------------------


@dataclass
class Survey:
    """What each page looked like: axe's findings and how far the phone layout scrolls sideways."""

    findings: dict[str, list[dict]] = field(default_factory=dict)
    overflow: dict[str, int] = field(default_factory=dict)

    def look(self, page: Page, name: str) -> None:
        """Screenshots at both widths, axe at both widths, sideways scrolling at the phone's."""
        SHOTS.mkdir(parents=True, exist_ok=True)
        found: dict[str, dict] = {}
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(size)
            page.screenshot(path=str(SHOTS / f"{name}-{label}.png"), full_page=True)
            for v in page.evaluate(AXE_RUN):
                seen = found.setdefault(v["id"], {"id": v["id"], "impact": v["impact"], "help": v["help"], "targets": []})
                for node in v["nodes"]:
                    target = " ".join(map(str, node["target"]))
                    if target not in seen["targets"]:
                        seen["targets"].append(target)
            if label == "phone":
                self.overflow[name] = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        page.set_viewport_size(DESKTOP)
        self.findings[name] = list(found.values())

    def write(self) -> None:
        counts: dict[str, dict[str, int]] = {"pages": {}, "admin": {}}
        for name, found in self.findings.items():
            kind = counts["admin" if name.startswith("admin") else "pages"]
            for v in found:
                kind[v["impact"]] = kind.get(v["impact"], 0) + 1
        (SHOTS / "axe.json").write_text(json.dumps({"counts": counts, "pages": self.findings}, indent=2) + "\n")

    def blocking(self, *, admin: bool) -> dict[str, list[str]]:
        return {
            name: [f"{v['id']} ({v['impact']}): {', '.join(v['targets'][:3])}" for v in found if v["impact"] in BLOCKING]
            for name, found in self.findings.items()
            if name.startswith("admin") == admin and any(v["impact"] in BLOCKING for v in found)
        }


def sign_in(page: Page, username: str, password: str = PASSWORD) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def line_breaks(page: Page, selector: str) -> list[str]:
    """The characters a wrapped element's lines end with (from the layout of its text)."""
    return page.locator(selector).evaluate(
        """el => {
          const text = el.textContent, range = document.createRange(), ends = [];
          let walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT), node, top = null, last = '';
          while ((node = walker.nextNode())) {
            for (let i = 0; i < node.length; i++) {
              range.setStart(node, i); range.setEnd(node, i + 1);
              const rect = range.getClientRects()[0];
              if (!rect) continue;
              if (top !== null && rect.top > top + 2) ends.push(last);
              top = rect.top; last = node.data[i];
            }
          }
          return ends;
        }"""
    )


def contrast(page: Page, foreground: str, background: str) -> float:
    """WCAG 2.x contrast ratio of two CSS colours as the browser computes them."""
    return page.evaluate(
        """([a, b]) => {
          const lum = c => {
            const [r, g, b] = c.match(/\\d+(\\.\\d+)?/g).slice(0, 3).map(Number).map(v => v / 255)
              .map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
            return 0.2126 * r + 0.7152 * g + 0.0722 * b;
          };
          const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
          return (x + 0.05) / (y + 0.05);
        }""",
        [foreground, background],
    )


# -- the pages ---------------------------------------------------------------------------------


def test_every_page_is_photographed_checked_with_axe_and_fits_a_phone(new_page, site):
    """Every page, reached as a user reaches it (the admin console's too): no serious or critical
    axe finding (WCAG 2.2 AA), and no page outside the console scrolls sideways at 390 px."""
    survey = Survey()
    try:
        walk(new_page, site, survey)
    finally:
        survey.write()
    assert survey.blocking(admin=False) == {}, "serious or critical axe findings"
    assert survey.blocking(admin=True) == {}, "serious or critical axe findings in the admin console"
    assert {name: px for name, px in survey.overflow.items() if px > 0} == {}, (
        f"pages that scroll sideways at {PHONE['width']} px"
    )


def walk(new_page, site: Site, survey: Survey) -> None:
    # An app asks; nobody is signed in: the sign-in page names the request.
    page = new_page()
    page.goto(site.authorize_url())
    expect(page).to_have_url(re.compile(r"/login\?next="))
    survey.look(page, "sign-in")
    sign_in(page, "alice", "not the password")
    expect(page.get_by_role("alert")).to_be_visible()
    survey.look(page, "sign-in-error")
    sign_in(page, "alice")
    expect(page.get_by_role("button", name="Allow")).to_be_visible()
    survey.look(page, "consent")
    page.get_by_role("link", name="Switch account").click()
    survey.look(page, "switch-account")
    page.go_back()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(lambda u: u.startswith(site.callback))

    # The account page, and the confirmation before disconnecting.
    page.goto("/account")
    survey.look(page, "account")
    page.get_by_role("button", name="Disconnect").click()
    survey.look(page, "confirm-disconnect")

    # Two-step verification: enrolment, recovery codes, the page after.
    page.goto("/account/mfa")
    survey.look(page, "mfa-enrolment")
    totp = pyotp.TOTP(page.locator("#totp-secret").get_attribute("data-secret"))
    page.get_by_label("Authentication code").fill(totp.now())
    page.get_by_role("button", name="Turn on").click()
    expect(page.get_by_role("heading", name="Two-step verification is on")).to_be_visible()
    survey.look(page, "mfa-codes")
    page.get_by_role("link", name="Continue").click()
    expect(page.get_by_role("status")).to_contain_text("Two-step verification is on")
    survey.look(page, "after-mfa")

    # Signing out.
    page.goto("/logout")
    survey.look(page, "sign-out")
    page.get_by_role("main").get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_have_text("You have signed out.")
    survey.look(page, "signed-out")

    # The second step of a sign-in, during an app's request.
    page.goto(site.authorize_url())
    sign_in(page, "alice")
    expect(page).to_have_url(re.compile(r"/login/otp"))
    survey.look(page, "sign-in-totp")

    # Error pages.
    page = new_page()
    page.goto("/consent/not-a-real-handle")
    survey.look(page, "error-request-not-found")
    page.goto(site.authorize_url(scope="nonexistent:scope"))
    expect(page.get_by_role("heading", name="The app's request cannot be completed")).to_be_visible()
    survey.look(page, "error-self-registered-app")
    page.goto(site.authorize_url(redirect_uri="https://elsewhere.example/callback"))
    expect(page.get_by_role("heading", name="This app's request cannot be completed")).to_be_visible()
    survey.look(page, "error-untrusted-redirect")

    # A password link, and the page after it.
    page.goto(site.password_link("carol"))
    survey.look(page, "setup-password")
    page.get_by_label("New password").fill("a brand new password")
    page.get_by_label("Repeat password").fill("a brand new password")
    page.get_by_role("button", name="Set password").click()
    expect(page.get_by_role("status")).to_have_text("Your password is set. Sign in with it.")
    survey.look(page, "password-set")

    # The admin console, for the record.
    page = new_page()
    page.goto("/admin")
    sign_in(page, "root")
    expect(page.get_by_role("navigation", name="Admin console")).to_be_visible()
    for name, path in {
        "admin-overview": "/admin",
        "admin-consents": "/admin/consents",
        "admin-users": "/admin/users",
        "admin-clients": "/admin/clients",
        "admin-client": "/admin/clients/detail?" + urlencode({"id": site.client_id}),
        "admin-resources": "/admin/resources",
        "admin-idps": "/admin/idps",
        "admin-keys": "/admin/keys",
        "admin-audit": "/admin/audit",
    }.items():
        response = page.goto(path)
        assert response is not None and response.status == 200, (path, response and response.status)
        survey.look(page, name)
    page.goto("/admin/users")
    page.locator("table.users").get_by_role("link", name="alice").click()
    survey.look(page, "admin-user")
    page.goto("/admin/resources")
    page.locator("table.resources").get_by_role("link", name="Team notes").click()
    survey.look(page, "admin-resource")


# -- context on the pages ----------------------------------------------------------------------


def test_sign_in_and_consent_say_who_asks_and_switch_account_returns_to_the_request(new_page, site):
    """A user who did not expect the request, or is signed in as someone else: the sign-in page
    names the app and the MCP server; the consent page shows the app's logo (the page's CSP lets
    exactly that image in), its links with their hosts, what "unverified" means and the
    localhost warning; "Switch account" signs out and the other account finishes the same
    request."""
    page = new_page()
    page.goto(site.authorize_url())
    context = page.locator("[data-pending]")
    expect(context).to_contain_text(f"{APP_NAME} unverified wants to use Team notes for you.")
    expect(context).to_contain_text("notes-and-documents.example.com")
    expect(context).to_contain_text("registered itself")
    sign_in(page, "bob")

    consent = page.locator("section.consent")
    logo = consent.get_by_role("img", name=f"{APP_NAME} logo")
    expect(logo).to_be_visible()
    assert logo.evaluate("img => img.complete && img.naturalWidth") == 1  # loaded: the CSP let it in
    box = logo.bounding_box()
    assert box is not None and box["width"] == box["height"] == 40
    expect(consent.locator(".unverified-note")).to_be_visible()
    expect(consent.locator(".unverified-note")).to_contain_text("nobody has checked")
    for label, host in (
        ("Website", "notes-helper.example.com"),
        ("Privacy policy", "notes-helper.example.com"),
        ("Terms of service", "legal.notes-helper.example.com"),
    ):
        item = consent.locator(f"[data-link='{label}']")
        expect(item.get_by_role("link", name=label)).to_be_visible()
        expect(item.locator(".link-host")).to_have_text(host)
    expect(page.get_by_role("note")).to_contain_text("localhost")
    expect(consent).to_contain_text("Signed in as")

    # On a phone, the MCP server's long URI wraps after "/", "." or "-", never inside a word.
    page.set_viewport_size(PHONE)
    ends = line_breaks(page, ".resource-uri")
    assert ends and set(ends) <= set("/.-?&"), ends
    assert page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth") == 0
    page.set_viewport_size(DESKTOP)

    consent_url = page.url
    page.get_by_role("link", name="Switch account").click()
    expect(page.get_by_role("heading", name="Switch account")).to_be_visible()
    expect(page.locator("[data-pending]")).to_contain_text(APP_NAME)
    page.get_by_role("button", name="Sign out and switch").click()
    expect(page.get_by_role("status")).to_have_text("You have signed out.")
    expect(page.locator("[data-pending]")).to_contain_text(APP_NAME)
    sign_in(page, "dave")
    expect(page).to_have_url(consent_url)
    expect(page.locator("dl.facts")).to_contain_text("dave")
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(lambda u: u.startswith(site.callback) and "code=" in u)


# -- keyboard ----------------------------------------------------------------------------------


def test_keyboard_users_skip_to_the_content_and_always_see_where_focus_is(new_page, site):
    """The first Tab reaches a visible "Skip to content" link that moves focus to the page's
    content; every focused control has a ring of at least 3:1 against the page behind it (WCAG
    2.2 §2.4.7, §1.4.11); the confirm button is as wide as its label, not the whole row."""
    page = new_page()
    page.goto(site.authorize_url())
    sign_in(page, "erin")
    expect(page.get_by_role("button", name="Allow")).to_be_visible()
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
    page.keyboard.press("Tab")  # past the top bar, into the page
    expect(page.locator("section.consent a").first).to_be_focused()

    page.reload()
    seen = 0
    for _ in range(12):
        page.keyboard.press("Tab")
        ring = page.evaluate(
            """() => {
              const el = document.activeElement, style = getComputedStyle(el);
              let bg = 'rgb(255, 255, 255)';
              for (let p = el.parentElement; p; p = p.parentElement) {
                const c = getComputedStyle(p).backgroundColor;
                if (c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') { bg = c; break; }
              }
              return {tag: el.tagName, text: el.textContent.trim().slice(0, 30), style: style.outlineStyle,
                      width: parseFloat(style.outlineWidth), colour: style.outlineColor, bg};
            }"""
        )
        if ring["tag"] in ("BODY", "MAIN"):  # no control: the page itself, or the skip link's target
            continue
        seen += 1
        assert ring["style"] == "solid" and ring["width"] >= 2, ring
        assert contrast(page, ring["colour"], ring["bg"]) >= 3, ring
    assert seen >= 8  # the top bar, the switch link, the app's links, Deny and Allow

    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(lambda u: u.startswith(site.callback))
    page.goto("/account")
    page.get_by_role("button", name="Disconnect").first.click()
    confirm = page.get_by_role("button", name="Confirm")
    label = confirm.evaluate(
        "b => { const r = document.createRange(); r.selectNodeContents(b); return r.getBoundingClientRect().width; }"
    )
    width = confirm.bounding_box()["width"]
    card = page.locator("section.confirm").bounding_box()["width"]
    assert width < label + 120 and width < card / 2, (width, label, card)
    assert confirm.bounding_box()["height"] >= 44
