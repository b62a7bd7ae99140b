"""Second-factor guessing is capped (NIST SP 800-63B §5.2.2;
docs/decisions.md#wrong-totp-codes-lock-the-account-after-twenty-in-a-row).

Consecutive wrong codes are counted on the user: the first five are free, then each attempt
waits 2^(n-5) seconds, and the twentieth locks the account until an admin unlocks it or the
user sets a password with an admin's link. The count is reserved before a code is checked, so
parallel guesses cannot pass it (tested on SQLite and PostgreSQL alike).
"""

from __future__ import annotations

import asyncio
import re

import pytest

from app.services.mfa import FREE_FAILURES, LOCK_AFTER, delay_after
from tests.support import (
    PASSWORD,
    audit_events,
    create_user,
    csrf_from,
    enrol_totp,
    login,
    sql,
    submit,
    totp_code,
    user_row,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
async def alice(client, runtime, new_client):
    """alice with TOTP on (enrolled in `client`); returns her TOTP secret."""
    create_user(runtime, "alice")
    assert (await login(client)).status_code == 303
    secret, _ = await enrol_totp(client)
    return secret


async def code_page(browser):
    response = await login(browser, "alice", next_url="/account")
    assert response.status_code == 303 and response.headers["location"].startswith("/login/otp")
    return await browser.get(response.headers["location"])


async def send(browser, page, code: str):
    return await browser.post("/login/otp", data={"csrf_token": csrf_from(page.text), "code": code, "next": "/account"})


def wrong_code(secret: str) -> str:
    right = {totp_code(secret, d) for d in (-1, 0, 1, 2)}
    return next(c for c in ("123456", "654321", "111111", "222222") if c not in right)


def time_passes(settings) -> None:
    """The wait before the next attempt is over (instead of sleeping through it)."""
    sql(settings, "UPDATE users SET mfa_retry_at = NULL WHERE username = 'alice'")


def test_delay_doubles_after_five_failures_up_to_fifteen_minutes():
    """Progressive delay before the cap (NIST SP 800-63B §5.2.2)."""
    assert [delay_after(n) for n in range(FREE_FAILURES)] == [0] * FREE_FAILURES
    assert [delay_after(n) for n in range(5, 10)] == [1, 2, 4, 8, 16]
    assert delay_after(40) == 900


async def test_after_five_wrong_codes_the_next_attempt_waits(alice, new_client, settings):
    browser = new_client()
    page = await code_page(browser)
    wrong = wrong_code(alice)
    for _ in range(FREE_FAILURES):
        assert (await send(browser, page, wrong)).status_code == 401
    early = await send(browser, page, totp_code(alice, +1))  # even a right code waits
    assert early.status_code == 429 and early.headers["retry-after"] == "1"
    time_passes(settings)
    assert (await send(browser, page, wrong)).status_code == 401
    again = await send(browser, page, wrong)
    assert again.status_code == 429 and int(again.headers["retry-after"]) <= 2


async def test_a_right_code_clears_the_count(alice, new_client, runtime):
    browser = new_client()
    page = await code_page(browser)
    for _ in range(FREE_FAILURES - 1):
        assert (await send(browser, page, wrong_code(alice))).status_code == 401
    assert user_row(runtime, "alice").mfa_failures == FREE_FAILURES - 1
    assert (await send(browser, page, totp_code(alice, +1))).status_code == 303
    assert user_row(runtime, "alice").mfa_failures == 0


async def test_twenty_wrong_codes_lock_the_account_until_an_admin_unlocks_it(alice, new_client, runtime, settings):
    browser = new_client()
    page = await code_page(browser)
    wrong = wrong_code(alice)
    for _ in range(LOCK_AFTER - 1):
        assert (await send(browser, page, wrong)).status_code == 401
        time_passes(settings)
    locked = await send(browser, page, wrong)
    assert locked.status_code == 403 and "locked" in locked.text
    assert user_row(runtime, "alice").locked_at is not None
    event = audit_events(runtime, "user.locked")[-1]
    assert event.username == "alice" and event.details["failures"] == LOCK_AFTER
    # The pending sign-in ended, and the password alone no longer signs in (even a right one).
    assert (await browser.get("/login/otp")).headers["location"].startswith("/login")
    relogin = await login(new_client(), "alice", PASSWORD)
    assert relogin.status_code == 403 and "locked" in relogin.text

    # The console shows it; an admin unlocks.
    create_user(runtime, "root", admin=True)
    admin = new_client()
    assert (await login(admin, "root", next_url="/admin")).status_code == 303
    overview = await admin.get("/admin")
    assert 'data-notice="locked"' in overview.text and "1 account is locked" in overview.text
    alice_id = user_row(runtime, "alice").id
    assert "Unlock" in (await admin.get(f"/admin/users/{alice_id}")).text
    done = await submit(admin, f"/admin/users/{alice_id}/unlock", {}, csrf_page="/admin")
    assert done.status_code == 303 and done.headers["location"].endswith("done=unlocked")
    row = user_row(runtime, "alice")
    assert (row.locked_at, row.mfa_failures) == (None, 0)
    assert audit_events(runtime, "user.unlocked")[-1].actor_id is not None
    fresh = new_client()
    assert (await send(fresh, await code_page(fresh), totp_code(alice, +1))).status_code == 303


async def test_a_password_link_lifts_the_lock(alice, new_client, runtime):
    sql(runtime.settings, "UPDATE users SET locked_at = 1, mfa_failures = 20 WHERE username = 'alice'")
    create_user(runtime, "root", admin=True)
    admin = new_client()
    assert (await login(admin, "root", next_url="/admin")).status_code == 303
    alice_id = user_row(runtime, "alice").id
    made = await submit(admin, f"/admin/users/{alice_id}/password-link", {}, csrf_page="/admin")
    link = re.search(r'value="(http[^"]+/setup-password/[^"]+)"', made.text).group(1)
    path = "/setup-password/" + link.rsplit("/", 1)[1]
    browser = new_client()
    form = await browser.get(path)
    new = "a fresh long passphrase"
    done = await browser.post(path, data={"csrf_token": csrf_from(form.text), "password": new, "repeat_password": new})
    assert done.status_code == 303
    assert user_row(runtime, "alice").locked_at is None
    assert audit_events(runtime, "user.unlocked")[-1].details["via"] == "password_link"


async def test_parallel_guesses_cannot_pass_the_count(alice, new_client, runtime):
    """The failure is counted before the code is checked, with one conditional UPDATE: of 40
    parallel wrong codes, every one that was checked is counted, and no more than the free
    attempts get through before the first wait."""
    browser = new_client()
    page = await code_page(browser)
    wrong = wrong_code(alice)
    responses = await asyncio.gather(*(send(browser, page, wrong) for _ in range(40)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {401, 429}, statuses
    checked = statuses.count(401)
    row = user_row(runtime, "alice")
    assert row.mfa_failures == checked
    # A second may tick while they run, allowing the next (delayed) attempt.
    assert 1 <= checked <= FREE_FAILURES + 2
    reasons = [e.details["reason"] for e in audit_events(runtime, "login.mfa_failed")]
    assert reasons.count("wrong_code") == checked
