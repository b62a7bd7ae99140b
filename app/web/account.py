"""/account: the signed-in user's own page: connected apps (Disconnect), password, two-step
verification."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from app.http.body import FormDep
from app.http.deps import DbDep
from app.models.client import KIND_DYNAMIC
from app.services import Refused, consents, mfa
from app.services import users as user_service
from app.stores import clients as clients_store
from app.stores import consents as consents_store
from app.stores import resources as resources_store
from app.web.browser import Browser, BrowserDep

router = APIRouter()

EXPIRED_FORM = "This form has expired. Please try again."


@router.get("/")
def home(browser: BrowserDep) -> Response:
    return browser.redirect("/account" if browser.signed_in else "/login")


def _page(browser: Browser, db: Session, status: int = 200, *, password_error: str | None = None, done: str = "") -> Response:
    user = browser.user
    assert user is not None  # the callers required sign-in
    rows = consents_store.search(db, user_id=user.id, limit=500)
    return browser.render(
        "account.html",
        status,
        rows=rows,
        any_unverified=any(client.kind == KIND_DYNAMIC for _, _, client, _ in rows),
        recovery_left=mfa.recovery_codes_left(db, user) if user.mfa_enabled else 0,
        # templates/_sessions.html
        sessions=user_service.browser_sessions(db, user, idle_timeout=browser.runtime.settings.session_idle_timeout),
        this_session=browser.session_hash,
        password_error=password_error,
        done=done,
    )


@router.get("/account")
def account(browser: BrowserDep, db: DbDep, done: str = "") -> Response:
    if not browser.signed_in:
        return browser.login_redirect("/account")
    return _page(browser, db, done=done[:20])


@router.post("/account/disconnect")
def disconnect(browser: BrowserDep, db: DbDep, form: FormDep) -> Response:
    """Revoke the user's consent for one app: the same revocation as the admin's."""
    if not browser.signed_in:
        return browser.login_redirect("/account")
    if not browser.csrf_ok(form):
        return browser.render("error.html", 400, title="Form expired", message=EXPIRED_FORM)
    raw = str(form.get("grant_id") or "")
    grant = consents_store.by_id(db, int(raw)) if raw.isdigit() else None
    if grant is None or grant.user_id != browser.me.id:
        return browser.render("error.html", 404, title="Not found", message="This app is not connected to your account.")
    if form.get("confirm") != "yes":
        client, resource = clients_store.get(db, grant.client_id), resources_store.get(db, grant.resource_id)
        assert client is not None and resource is not None  # the consent's foreign keys
        return browser.render(
            "confirm.html",
            title=f"Disconnect {client.name}?",
            message=f"{client.name} can no longer use {resource.name} for you: it is signed out at once. "
            "If you use it again, it asks for your permission again.",
            action="/account/disconnect",
            fields={"grant_id": str(grant.id)},
            back="/account",
        )
    consents.revoke(db, grant, actor_id=browser.me.id, via="account")
    db.commit()
    return browser.redirect("/account?done=disconnected")


@router.post("/account/password")
def change_password(browser: BrowserDep, db: DbDep, form: FormDep) -> Response:
    if not browser.signed_in:
        return browser.login_redirect("/account")
    if not browser.csrf_ok(form):
        return _page(browser, db, 400, password_error=EXPIRED_FORM)
    user = browser.user
    assert user is not None and browser.session is not None  # signed in
    current, new, repeat = (str(form.get(k) or "") for k in ("current_password", "new_password", "repeat_password"))
    try:
        user_service.change_password(
            db,
            user,
            current=current,
            new=new,
            repeat=repeat,
            keep_session_hash=browser.session.id_hash,
            keep_apps=form.get("keep_apps") == "on",
        )
    except Refused as exc:
        db.commit()  # a wrong current password is audited
        return _page(browser, db, 400, password_error=str(exc))
    db.commit()
    return browser.redirect("/account?done=password")


@router.post("/account/sessions/sign-out-others")
def sign_out_others(browser: BrowserDep, db: DbDep, form: FormDep) -> Response:
    """Sign out every other browser of this user (templates/_sessions.html); this one stays."""
    if not browser.signed_in:
        return browser.login_redirect("/account")
    if not browser.csrf_ok(form):
        return browser.render("error.html", 400, title="Form expired", message=EXPIRED_FORM)
    assert browser.session is not None  # signed in
    user_service.sign_out_others(db, browser.me, keep_session_hash=browser.session.id_hash)
    db.commit()
    return browser.redirect("/account?done=signed-out-elsewhere#sessions")
