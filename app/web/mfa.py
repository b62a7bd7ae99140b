"""Two-step verification pages: enrolling TOTP at /account/mfa, and the code asked after the
password at /login/otp (RFC 6238; recovery codes accepted there too)."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from app.http.body import FormDep
from app.http.deps import DbDep, RuntimeDep
from app.infra.db import now
from app.runtime import Runtime
from app.services import audit, mfa
from app.stores import sessions as sessions_store
from app.web.authorize import pending_request
from app.web.browser import Browser, BrowserDep, safe_next
from app.web.login import ACCOUNT_LOCKED

router = APIRouter()

EXPIRED_FORM = "This form has expired. Please try again."
WRONG = {
    "reused_code": "That code was already used. Wait for the next code and enter it.",
    "wrong_recovery_code": "That recovery code is not valid (each one works once).",
}
WRONG_CODE = "That code is not right. Check your authenticator app and try again."
TOO_MANY = "Too many wrong codes. Wait a moment, then try again."


# -- enrolment ----------------------------------------------------------------------------------


def _enrol_page(
    browser: Browser, db: Session, runtime: Runtime, next_url: str, status: int = 200, error: str | None = None
) -> Response:
    user = browser.user
    assert user is not None  # the callers required sign-in
    if user.mfa_enabled:
        return browser.render(
            "mfa.html", status, enabled=True, recovery_left=mfa.recovery_codes_left(db, user), next=next_url, error=error
        )
    secret = mfa.pending_secret(db, runtime.keyring, user)
    db.commit()
    required = user.is_admin and runtime.settings.admin_mfa_required
    return browser.render(
        "mfa.html",
        status,
        enabled=False,
        required=required,
        next=next_url,
        error=error,
        **mfa.enrolment(runtime.settings.issuer, user, secret),
    )


@router.get("/account/mfa")
def enrol_page(browser: BrowserDep, db: DbDep, runtime: RuntimeDep, next: str | None = None) -> Response:
    if not browser.signed_in:
        return browser.login_redirect("/account/mfa")
    return _enrol_page(browser, db, runtime, safe_next(next, ""))


@router.post("/account/mfa")
def enrol(browser: BrowserDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    if not browser.signed_in:
        return browser.login_redirect("/account/mfa")
    assert browser.user is not None and browser.session is not None  # signed in
    next_url = safe_next(str(form.get("next") or ""), "")
    if not browser.csrf_ok(form):
        return _enrol_page(browser, db, runtime, next_url, 400, EXPIRED_FORM)
    codes = mfa.confirm_enrolment(db, runtime.keyring, browser.user, str(form.get("code") or ""))
    if codes is None:
        return _enrol_page(browser, db, runtime, next_url, 400, WRONG_CODE)
    # This browser just proved the second factor; every other one signs in again with it.
    session = browser.session
    sessions_store.promote(db, session.id_hash, sorted(set(session.amr or []) | {"otp"}), session.auth_time)
    sessions_store.remove_others(db, browser.user.id, session.id_hash)
    db.commit()
    browser.say_next("mfa-on")  # on the page "Continue" leads to
    # Shown once: only their HMACs are stored.
    return browser.render("mfa_codes.html", codes=codes, next=next_url or "/account")


# -- sign-in, second step ----------------------------------------------------------------------


def _owes_code(browser: Browser) -> bool:
    return browser.session is not None and browser.user is not None and browser.session.status == "mfa"


def _code_page(browser: Browser, db: Session, status: int, next_url: str, error: str | None) -> Response:
    """The second step, and, during an app's request, which app wants which MCP server."""
    pending = pending_request(db, browser.runtime, next_url)
    return browser.render("login_otp.html", status, next=next_url, pending=pending, error=error)


@router.get("/login/otp")
def code_page(browser: BrowserDep, db: DbDep, next: str | None = None) -> Response:
    if browser.signed_in:
        return browser.redirect(safe_next(next))
    if not _owes_code(browser):
        return browser.redirect("/login?next=" + quote(safe_next(next), safe=""))
    return _code_page(browser, db, 200, safe_next(next, ""), None)


@router.post("/login/otp")
def check_code(browser: BrowserDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    next_url = safe_next(str(form.get("next") or ""))
    if browser.signed_in:
        return browser.redirect(next_url)
    if not _owes_code(browser):
        return browser.redirect("/login?next=" + quote(next_url, safe=""))
    if not browser.csrf_ok(form):
        return _code_page(browser, db, 400, next_url, EXPIRED_FORM)
    user = browser.user
    assert user is not None and browser.session is not None  # _owes_code checked both
    verdict = mfa.verify(db, runtime.keyring, user, str(form.get("code") or ""))
    if verdict.method is None:
        audit.record(db, "login.mfa_failed", user_id=user.id, username=user.username, reason=verdict.why)
        if verdict.why == "locked" or verdict.locked_now:
            browser.end_session(db)  # the password step is undone too
            db.commit()
            return browser.render("error.html", 403, title="Account locked", message=ACCOUNT_LOCKED)
        db.commit()
        if verdict.why == "wait":
            return browser.too_many_requests(verdict.retry_after, TOO_MANY)
        return _code_page(browser, db, 401, next_url, WRONG.get(verdict.why, WRONG_CODE))
    # RFC 8176 amr: a password, then a one-time password (TOTP or a recovery code).
    sessions_store.promote(db, browser.session.id_hash, ["pwd", "otp"], now())
    audit.record(db, "login.mfa_ok", user_id=user.id, username=user.username, method=verdict.method)
    db.commit()
    return browser.redirect(next_url)
