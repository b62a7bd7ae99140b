"""/setup-password/{token}: a one-time link an admin created for a user to set their password.
Only the link token's HMAC is stored; the link works once and expires."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from app.http.body import FormDep
from app.http.deps import DbDep, RuntimeDep
from app.infra.db import now
from app.models import PasswordSetupToken, User
from app.runtime import Runtime
from app.services import Refused
from app.services import users as user_service
from app.stores import password_links
from app.stores import users as users_store
from app.web.browser import Browser, BrowserDep

router = APIRouter()

GONE = "This link has expired or was already used. Ask your administrator for a new one."


def _find(db: Session, runtime: Runtime, token: str) -> tuple[PasswordSetupToken | None, User | None]:
    row = password_links.find(db, runtime.keyring.hashes(token), now()) if len(token) <= 100 else None
    user = users_store.get(db, row.user_id) if row else None
    return row, user


def _gone(browser: Browser) -> Response:
    return browser.render("error.html", 404, title="Link not valid", message=GONE)


@router.get("/setup-password/{token}")
def page(token: str, browser: BrowserDep, db: DbDep, runtime: RuntimeDep) -> Response:
    _, user = _find(db, runtime, token)
    if user is None:
        return _gone(browser)
    return browser.render("setup_password.html", username=user.username, token=token, error=None)


@router.post("/setup-password/{token}")
def set_password(token: str, browser: BrowserDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    row, user = _find(db, runtime, token)
    if row is None or user is None:  # no user without a link
        return _gone(browser)
    password, repeat = str(form.get("password") or ""), str(form.get("repeat_password") or "")
    try:
        if not browser.csrf_ok(form):
            raise Refused("This form has expired. Please try again.")
        if not user_service.set_password_from_link(db, row, user, password=password, repeat=repeat):
            return _gone(browser)
    except Refused as exc:
        return browser.render("setup_password.html", 400, username=user.username, token=token, error=str(exc))
    db.commit()
    browser.say_next("password-set")
    return browser.redirect("/login")
