"""The account page and TOTP two-step verification, over HTTP on the real app.

/account: connected apps with Disconnect (the same revocation as the admin's: RFC 6749 §5.2
invalid_grant at /token, RFC 7662 active=false at /introspect), password change. TOTP (RFC 6238):
enrolment with a server-rendered QR code and a confirmation code, the code asked after the
password, a code accepted once (§5.2), recovery codes shown once, stored as HMACs and each usable
once; OSTIARY_ADMIN_MFA=required sends admins to enrol before the console.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import select, text

from app.models import BrowserSession
from app.settings import Settings
from tests.support import (
    PASSWORD,
    admin_client,
    audit_events,
    authorize_params,
    create_resource,
    create_user,
    csrf_from,
    database_text,
    enrol_totp,
    exchange,
    grant_rows,
    introspect,
    login,
    page_csrf,
    pkce,
    query,
    refresh,
    register,
    secret_from_page,
    submit,
    tokens_for,
    totp_code,
    user_row,
)

pytestmark = pytest.mark.anyio

NEW_PASSWORD = "a much better passphrase"


@pytest.fixture
async def alice(client, runtime):
    """`client` is alice's browser, signed in, with one connected app holding tokens."""
    user = create_user(runtime, "alice")
    create_resource(runtime)
    reg = await register(client)
    assert (await login(client)).status_code == 303
    tokens = await tokens_for(client, reg["client_id"], scope="mcp:read")
    return {"user": user, "client_id": reg["client_id"], "tokens": tokens, "rs": admin_client(runtime)}


async def sign_out(browser) -> None:
    response = await browser.post("/logout", data={"csrf_token": await page_csrf(browser, "/logout")})
    assert response.status_code == 303


async def password_then_code_page(browser, username: str = "alice", next_url: str = "/account"):
    response = await login(browser, username, next_url=next_url)
    assert response.status_code == 303
    assert response.headers["location"] == "/login/otp?next=" + next_url.replace("/", "%2F")
    page = await browser.get(response.headers["location"])
    assert page.status_code == 200
    return page


async def send_code(browser, page, code: str):
    return await browser.post("/login/otp", data={"csrf_token": csrf_from(page.text), "code": code, "next": "/account"})


# -- who may use the account pages ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/account"),
        ("GET", "/account/mfa"),
        ("POST", "/account/disconnect"),
        ("POST", "/account/password"),
        ("POST", "/account/mfa"),
    ],
)
async def test_account_pages_send_anonymous_browsers_to_sign_in(client, method, path):
    response = await client.request(method, path, data={} if method == "POST" else None)
    assert response.status_code == 303 and response.headers["location"].startswith("/login?next=%2Faccount")


async def test_account_forms_refuse_a_missing_csrf_token(alice, client, runtime, new_client):
    grant = grant_rows(runtime)[0]
    for path, data in (
        ("/account/disconnect", {"grant_id": grant.id, "confirm": "yes"}),
        ("/account/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD}),
        ("/account/mfa", {"code": "123456"}),
    ):
        response = await client.post(path, data=data)
        assert response.status_code == 400, path
    assert grant_rows(runtime) and (await login(new_client())).status_code == 303  # nothing changed


# -- connected apps -----------------------------------------------------------------------------


async def test_connected_apps_lists_the_users_grants(alice, client, runtime):
    page = (await client.get("/account")).text
    grant = grant_rows(runtime)[0]
    row = page[page.index(f'data-grant-id="{grant.id}"') :]
    row = row[: row.index("</tr>")]
    assert "Test MCP Client" in row and "Example MCP" in row and "<code>mcp:read</code>" in row
    assert ">Disconnect</button>" in row
    assert "never" not in row  # last used: when the tokens were issued


async def test_disconnect_revokes_like_the_admin_action(alice, client, runtime, new_client):
    grant = grant_rows(runtime)[0]
    ask = await submit(client, "/account/disconnect", {"grant_id": grant.id})
    assert ask.status_code == 200 and "Disconnect Test MCP Client?" in ask.text and ">Confirm</button>" in ask.text
    assert grant_rows(runtime)
    done = await submit(client, "/account/disconnect", {"grant_id": grant.id}, confirm=True)
    assert done.status_code == 303 and done.headers["location"] == "/account?done=disconnected"
    assert grant_rows(runtime) == []
    assert "No apps are connected" in (await client.get("/account")).text

    rejected = await refresh(client, alice["client_id"], alice["tokens"]["refresh_token"])
    assert rejected.status_code == 400 and rejected.json()["error"] == "invalid_grant"
    inactive = await introspect(new_client(), alice["tokens"]["access_token"], alice["rs"])
    assert inactive.json() == {"active": False}
    [event] = audit_events(runtime, "consent.revoked")
    assert (event.actor_id, event.user_id, event.details["via"]) == (alice["user"].id, alice["user"].id, "account")


async def test_a_user_cannot_disconnect_someone_elses_app(alice, client, runtime, new_client):
    create_user(runtime, "bob")
    bob = new_client()
    assert (await login(bob, "bob")).status_code == 303
    grant = grant_rows(runtime)[0]
    response = await submit(bob, "/account/disconnect", {"grant_id": grant.id}, confirm=True)
    assert response.status_code == 404 and grant_rows(runtime)


# -- password -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "new", "repeat", "message"),
    [
        pytest.param("wrong password", NEW_PASSWORD, NEW_PASSWORD, "current password is not correct", id="wrong current"),
        pytest.param(PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "x", "do not match", id="mismatch"),
        pytest.param(PASSWORD, "short", "short", "at least 8 characters", id="too short"),
    ],
)
async def test_change_password_refusals(alice, client, new_client, current, new, repeat, message):
    response = await submit(
        client, "/account/password", {"current_password": current, "new_password": new, "repeat_password": repeat}
    )
    assert response.status_code == 400 and message in response.text
    assert (await login(new_client())).status_code == 303  # the old password still works


async def test_change_password_signs_out_other_browsers(alice, client, runtime, new_client):
    other = new_client()
    assert (await login(other)).status_code == 303
    response = await submit(
        client, "/account/password", {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD}
    )
    assert response.status_code == 303 and response.headers["location"] == "/account?done=password"
    assert (await client.get("/account")).status_code == 200  # this browser stays signed in
    assert (await other.get("/account")).status_code == 303  # the other one is signed out
    assert (await login(new_client())).status_code == 401
    assert (await login(new_client(), password=NEW_PASSWORD)).status_code == 303
    assert user_row(runtime, "alice").password_hash.startswith("$argon2id$")
    assert audit_events(runtime, "user.password_changed")[-1].user_id == alice["user"].id


# -- TOTP enrolment ---------------------------------------------------------------------------


async def test_enrolment_shows_a_qr_code_and_needs_a_right_code(alice, client, runtime, settings):
    page = await client.get("/account/mfa")
    assert page.status_code == 200
    start = page.text.index('<div class="qr"')
    qr = page.text[start : page.text.index("</div>", start)]
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in qr and "<path" in qr  # rendered server-side
    assert "style=" not in qr and "<script" not in page.text  # fits the CSP
    secret = secret_from_page(page.text)
    assert secret_from_page((await client.get("/account/mfa")).text) == secret  # a reload: same key
    assert secret not in database_text(settings.database_url.get_secret_value())  # stored encrypted

    wrong = await client.post(
        "/account/mfa", data={"csrf_token": csrf_from(page.text), "code": "000000" if totp_code(secret) != "000000" else "111111"}
    )
    assert wrong.status_code == 400 and "not right" in wrong.text
    assert user_row(runtime, "alice").totp_enabled_at is None

    shown = await client.post("/account/mfa", data={"csrf_token": csrf_from(page.text), "code": totp_code(secret)})
    assert shown.status_code == 200 and "shown only now" in shown.text
    codes = [c for c in shown.text.split("<li><code>")[1:]]
    assert len(codes) == 10
    assert user_row(runtime, "alice").totp_enabled_at is not None
    stored = database_text(settings.database_url.get_secret_value())
    assert all(c.split("</code>")[0] not in stored and c.split("</code>")[0].replace("-", "") not in stored for c in codes)
    status = (await client.get("/account/mfa")).text
    assert "Two-step verification is on. 10 recovery codes left." in status
    assert "10 recovery codes left" in (await client.get("/account")).text
    assert audit_events(runtime, "mfa.enabled")[-1].user_id == alice["user"].id


# -- sign-in with TOTP --------------------------------------------------------------------------


async def test_sign_in_asks_for_the_code_after_the_password(alice, client, runtime, new_client):
    # Codes below are named by the step the enrolment used, so that a step boundary passing
    # during the test changes nothing (each is still within the one step of drift allowed).
    if 30 - time.time() % 30 < 5:
        await asyncio.sleep(30 - time.time() % 30)
    enrolled = int(time.time()) // 30
    secret, _ = await enrol_totp(client)
    browser = new_client()
    page = await password_then_code_page(browser)
    assert '<label for="code">Authentication code</label>' in page.text and ">Verify</button>" in page.text
    assert (await browser.get("/account")).status_code == 303  # not signed in yet

    wrong = await send_code(browser, page, "999999" if totp_code(secret) != "999999" else "888888")
    assert wrong.status_code == 401 and "not right" in wrong.text
    assert audit_events(runtime, "login.mfa_failed")[-1].details["reason"] == "wrong_code"

    # The enrolment used the current code: RFC 6238 §5.2, it is not accepted a second time.
    reused = await send_code(browser, page, totp_code(secret, enrolled - int(time.time()) // 30))
    assert reused.status_code == 401 and "already used" in reused.text
    assert audit_events(runtime, "login.mfa_failed")[-1].details["reason"] == "reused_code"

    ok = await send_code(browser, page, totp_code(secret, enrolled + 1 - int(time.time()) // 30))  # drift allowed
    assert ok.status_code == 303 and ok.headers["location"] == "/account"
    assert (await browser.get("/account")).status_code == 200
    with runtime.sessions() as db:
        amrs = sorted(tuple(s.amr) for s in db.scalars(select(BrowserSession).where(BrowserSession.status == "active")))
    assert ("pwd", "otp") in amrs
    event = audit_events(runtime, "login.mfa_ok")[-1]
    assert event.user_id == alice["user"].id and event.details["method"] == "otp"

    # That code is spent too.
    again = new_client()
    page = await password_then_code_page(again)
    assert (await send_code(again, page, totp_code(secret, enrolled + 1 - int(time.time()) // 30))).status_code == 401


async def test_an_authorization_request_continues_after_the_code(alice, client, runtime, new_client):
    secret, _ = await enrol_totp(client)
    browser = new_client()
    verifier, challenge = pkce()
    start = await browser.get("/authorize", params=authorize_params(alice["client_id"], challenge, scope="mcp:read"))
    consent_path = query(start.headers["location"])["next"]
    assert consent_path.startswith("/consent/")
    signed = await login(browser, next_url=consent_path)
    page = await browser.get(signed.headers["location"])
    assert page.status_code == 200 and "Authentication code" in page.text
    ok = await browser.post(
        "/login/otp", data={"csrf_token": csrf_from(page.text), "code": totp_code(secret, +1), "next": consent_path}
    )
    assert ok.headers["location"] == consent_path
    # Alice already consented to mcp:read for this client: straight back with a code.
    back = await browser.get(consent_path)
    assert back.status_code == 302 and "code" in query(back.headers["location"])
    token = await exchange(browser, alice["client_id"], query(back.headers["location"])["code"], verifier)
    assert token.status_code == 200


async def test_a_recovery_code_works_once(alice, client, runtime, new_client):
    _, codes = await enrol_totp(client)
    browser = new_client()
    page = await password_then_code_page(browser)
    typed = " " + codes[3].upper().replace("-", " - ") + " "  # as a person might type it
    ok = await send_code(browser, page, typed)
    assert ok.status_code == 303 and (await browser.get("/account")).status_code == 200
    assert audit_events(runtime, "login.mfa_ok")[-1].details["method"] == "recovery"
    assert "9 recovery codes left" in (await browser.get("/account")).text

    await sign_out(browser)
    page = await password_then_code_page(browser)
    spent = await send_code(browser, page, codes[3])
    assert spent.status_code == 401 and "works once" in spent.text
    assert (await send_code(browser, page, codes[4])).status_code == 303


async def test_code_page_without_a_pending_sign_in_goes_to_the_password_page(client):
    response = await client.get("/login/otp", params={"next": "/account"})
    assert response.status_code == 303 and response.headers["location"] == "/login?next=%2Faccount"
    posted = await client.post("/login/otp", data={"code": "123456"})
    assert posted.status_code == 303 and posted.headers["location"].startswith("/login")


async def test_admin_reset_lets_the_user_sign_in_with_the_password_only(alice, client, runtime, new_client):
    await enrol_totp(client)
    create_user(runtime, "root", admin=True)
    admin = new_client()
    assert (await login(admin, "root")).status_code == 303
    path = f"/admin/users/{alice['user'].id}/reset-mfa"
    ask = await submit(admin, path, csrf_page="/admin")
    assert ask.status_code == 200 and ">Confirm</button>" in ask.text
    done = await submit(admin, path, confirm=True, csrf_page="/admin")
    assert done.status_code == 303
    row = user_row(runtime, "alice")
    assert row.totp_enabled_at is None and row.totp_secret_enc is None
    assert (await login(new_client())).headers["location"] == "/account"  # no code asked
    assert audit_events(runtime, "mfa.reset")[-1].actor_id != alice["user"].id


# -- OSTIARY_ADMIN_MFA --------------------------------------------------------------------------


def test_admin_mfa_is_required_by_default_unless_the_issuer_is_loopback():
    assert Settings(issuer="https://auth.example.com").admin_mfa_required
    assert not Settings(issuer="https://auth.example.com", admin_mfa="optional").admin_mfa_required
    assert not Settings(issuer="http://127.0.0.1:8000").admin_mfa_required
    assert Settings(issuer="http://127.0.0.1:8000", admin_mfa="required").admin_mfa_required


def test_admin_mfa_reads_the_environment(monkeypatch):
    monkeypatch.setenv("OSTIARY_ADMIN_MFA", "required")
    assert Settings(issuer="http://127.0.0.1:8000").admin_mfa_required
    monkeypatch.setenv("OSTIARY_ADMIN_MFA", "sometimes")
    with pytest.raises(ValueError):
        Settings()


@pytest.mark.parametrize("settings_overrides", [pytest.param({"admin_mfa": "required"}, id="OSTIARY_ADMIN_MFA=required")])
async def test_required_admin_mfa_sends_an_admin_to_enrol_first(client, runtime, new_client):
    create_user(runtime, "root", admin=True)
    signed_in = await login(client, "root", next_url="/admin")
    assert signed_in.headers["location"] == "/admin"
    for path in ("/admin", "/admin/users", "/admin/keys"):
        response = await client.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/account/mfa?next=" + path.replace("/", "%2F")
    posted = await client.post("/admin/keys/rotate", data={"csrf_token": await page_csrf(client), "confirm": "yes"})
    assert posted.status_code == 303 and posted.headers["location"].startswith("/account/mfa")

    page = await client.get("/account/mfa", params={"next": "/admin"})
    assert "Administrators must use two-step verification" in page.text
    secret = secret_from_page(page.text)
    shown = await client.post(
        "/account/mfa", data={"csrf_token": csrf_from(page.text), "code": totp_code(secret), "next": "/admin"}
    )
    assert shown.status_code == 200 and 'href="/admin">Continue</a>' in shown.text
    assert (await client.get("/admin")).status_code == 200

    # Next time: password, then code, then the console.
    browser = new_client()
    page = await password_then_code_page(browser, "root", next_url="/admin")
    ok = await browser.post(
        "/login/otp", data={"csrf_token": csrf_from(page.text), "code": totp_code(secret, +1), "next": "/admin"}
    )
    assert ok.headers["location"] == "/admin" and (await browser.get("/admin")).status_code == 200


@pytest.mark.parametrize("settings_overrides", [pytest.param({"admin_mfa": "required"}, id="OSTIARY_ADMIN_MFA=required")])
async def test_required_admin_mfa_does_not_concern_other_users(alice, client):
    assert (await client.get("/account")).status_code == 200
    assert (await client.get("/admin")).status_code == 403
    assert "Administrators must" not in (await client.get("/account/mfa")).text


@pytest.mark.parametrize("settings_overrides", [pytest.param({"admin_mfa": "required"}, id="OSTIARY_ADMIN_MFA=required")])
async def test_required_admin_mfa_is_a_property_of_the_session(client, runtime, new_client):
    """A browser signed in with the password alone before the admin enrolled elsewhere does not
    reach the console (it is signed out by the enrolment); a password-only session of an
    enrolled admin is sent to sign in again, and the code then opens the console."""
    create_user(runtime, "root", admin=True)
    early = new_client()
    assert (await login(early, "root")).status_code == 303  # password only, not enrolled yet
    assert (await login(client, "root")).status_code == 303
    secret, _ = await enrol_totp(client)
    assert (await client.get("/admin")).status_code == 200  # the browser that enrolled
    gone = await early.get("/admin")
    assert gone.status_code == 303 and gone.headers["location"].startswith("/login")

    # A session whose sign-in did not use the code (as if it predated the rule): sign in again.
    with runtime.sessions() as db:
        db.execute(text("UPDATE browser_sessions SET amr = :amr"), {"amr": '["pwd"]'})
        db.commit()
    again = await client.get("/admin")
    assert again.status_code == 303 and again.headers["location"] == "/login?prompt=login&next=%2Fadmin"
    page = await client.get(again.headers["location"])
    signed = await client.post(
        "/login", data={"username": "root", "password": PASSWORD, "csrf_token": csrf_from(page.text), "next": "/admin"}
    )
    assert signed.headers["location"].startswith("/login/otp")
    code_page = await client.get(signed.headers["location"])
    ok = await client.post(
        "/login/otp", data={"csrf_token": csrf_from(code_page.text), "code": totp_code(secret, +1), "next": "/admin"}
    )
    assert ok.headers["location"] == "/admin" and (await client.get("/admin")).status_code == 200


async def test_an_mfa_reset_signs_the_user_out_everywhere(alice, client, runtime, new_client):
    await enrol_totp(client)
    assert (await client.get("/account")).status_code == 200
    create_user(runtime, "root", admin=True)
    admin = new_client()
    assert (await login(admin, "root")).status_code == 303
    path = f"/admin/users/{alice['user'].id}/reset-mfa"
    assert (await submit(admin, path, confirm=True, csrf_page="/admin")).status_code == 303
    assert (await client.get("/account")).status_code == 303  # signed out
    assert (await admin.get("/admin")).status_code == 200  # the admin's own session stays
