"""/login and /logout: sign-in with a username and password, server-side sessions."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from sqlalchemy.orm import Session

from app.http.body import FormDep
from app.http.deps import DbDep
from app.security.hosts import client_ip
from app.security.passwords import verify_password
from app.services import audit
from app.stores import identities as identity_store
from app.stores import users as users_store
from app.web.authorize import pending_request
from app.web.browser import Browser, BrowserDep, safe_next

router = APIRouter()

BAD_CREDENTIALS = "Incorrect username or password."
EXPIRED_FORM = "This form has expired. Please try again."
LOCKED = "Too many failed sign-ins for this account from your network."
SLOWED = "Many sign-ins for this account have failed recently. Please wait a moment."
ACCOUNT_LOCKED = (
    "This account is locked after too many wrong codes. Ask an administrator to unlock it, or use a password link from them."
)


def _page(browser: Browser, db: Session, status: int, *, next: str, **context: str | None) -> Response:
    """The sign-in page: the password form and a button per identity provider, and, during an
    app's request, which app wants which MCP server."""
    return browser.render(
        "login.html",
        status,
        providers=identity_store.sign_in_providers(db),
        next=next,
        pending=pending_request(db, browser.runtime, next),
        **context,
    )


@router.get("/login")
def login_page(browser: BrowserDep, db: DbDep, next: str | None = None, prompt: str | None = None) -> Response:
    # prompt=login (OIDC Core §3.1.2.1): the app asked for a fresh sign-in.
    if browser.signed_in and prompt != "login":
        return browser.redirect(safe_next(next))
    username = browser.user.username if browser.user and prompt == "login" else ""
    return _page(browser, db, 200, next=safe_next(next, ""), username=username, error=None)


@router.post("/login")
def login(request: Request, browser: BrowserDep, db: DbDep, form: FormDep) -> Response:
    next_url = safe_next(str(form.get("next") or ""))
    username = str(form.get("username") or "")[:150]
    password = str(form.get("password") or "")
    if not browser.runtime.settings.local_sign_in:
        return browser.render(
            "error.html", 403, title="Sign in with your organisation", message="Passwords are not used on this server."
        )
    if not browser.csrf_ok(form):
        return _page(browser, db, 400, next=next_url, username=username, error=EXPIRED_FORM)
    settings, limiter = browser.runtime.settings, browser.runtime.limiter
    limited = browser.limited(client_ip(request), settings.login_rate_per_ip, "login-ip")
    if limited is not None:
        return limited
    # Failures per username and address, in tiers ("5/minute;10/5minutes;20/hour"): each tier a
    # longer wait, the last a temporary lock of that address; per username from every address,
    # a short wait only, so that nobody can lock the real user out from everywhere
    # (docs/decisions.md#failed-sign-ins-lock-one-source-and-only-slow-the-rest). Counted for
    # any name, known or not, so the answer tells nothing about which accounts exist.
    subject = users_store.normalize_username(username)
    source = f"{subject} {client_ip(request)}"
    wait = limiter.blocked(settings.login_failures_per_source, "login-source", source)
    if wait is not None:
        return browser.too_many_requests(wait, LOCKED)
    wait = limiter.blocked(settings.login_failures_per_user, "login-user", subject)
    if wait is not None:
        return browser.too_many_requests(wait, SLOWED)
    user = users_store.by_username(db, username) if username else None
    # Same work and the same answer for an unknown user, a wrong password and a disabled account.
    ok, new_hash = verify_password(user.password_hash if user else None, password)
    if not ok or user is None or user.disabled:
        limiter.count(settings.login_failures_per_source, "login-source", source)
        limiter.count(settings.login_failures_per_user, "login-user", subject)
        audit.record(
            db,
            "login.failed",
            user_id=user.id if user else None,
            username=user.username if user else None,
            reason="disabled" if ok and user and user.disabled else "bad_credentials",
        )
        db.commit()
        return _page(browser, db, 401, next=next_url, username=username, error=BAD_CREDENTIALS)
    limiter.reset(settings.login_failures_per_source, "login-source", source)
    limiter.reset(settings.login_failures_per_user, "login-user", subject)
    if user.locked_at is not None:
        # Locked after too many wrong second-factor codes
        # (docs/decisions.md#wrong-totp-codes-lock-the-account-after-twenty-in-a-row): the
        # password was right, so saying so tells nothing new to whoever typed it.
        audit.record(db, "login.failed", user_id=user.id, username=user.username, reason="locked")
        db.commit()
        return browser.render("error.html", 403, title="Account locked", message=ACCOUNT_LOCKED)
    if new_hash:
        users_store.set_password_hash(db, user.id, new_hash)
    users_store.mark_login(db, user.id)
    needs_otp = user.totp_enabled_at is not None
    browser.start_session(db, user, request, status="mfa" if needs_otp else "active", amr=["pwd"])
    audit.record(db, "login.password_ok" if needs_otp else "login.succeeded", user_id=user.id, username=user.username)
    db.commit()
    if needs_otp:
        return browser.redirect("/login/otp?next=" + quote(next_url, safe=""))
    return browser.redirect(next_url)


def _signed_out_to(next_url: str) -> str:
    """Where a browser goes once signed out: the sign-in page, and from there back to `next_url`
    (an app's request, when the user switches account on its consent page)."""
    return "/login?next=" + quote(next_url, safe="") if next_url else "/login"


@router.get("/logout")
def logout_page(browser: BrowserDep, db: DbDep, next: str | None = None) -> Response:
    next_url = safe_next(next, "")
    if browser.session is None:
        return browser.redirect(_signed_out_to(next_url))
    return browser.render("logout.html", next=next_url, pending=pending_request(db, browser.runtime, next_url))


@router.post("/logout")
def logout(browser: BrowserDep, db: DbDep, form: FormDep) -> Response:
    next_url = safe_next(str(form.get("next") or ""), "")
    if not browser.csrf_ok(form):
        pending = pending_request(db, browser.runtime, next_url)
        return browser.render("logout.html", 400, error=EXPIRED_FORM, next=next_url, pending=pending)
    if browser.user is not None:
        audit.record(db, "logout", user_id=browser.user.id, username=browser.user.username)
    browser.end_session(db)
    db.commit()
    browser.say_next("signed-out")
    return browser.redirect(_signed_out_to(next_url))
