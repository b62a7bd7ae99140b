"""/setup-password/{token}: a one-time link an admin created for a user to set their password.
Only the link token's HMAC is stored; the link works once and expires."""

from __future__ import annotations

from fastapi import APIRouter

from app.http.body import FormDep
from app.http.deps import DbDep, RuntimeDep
from app.infra.db import now
from app.security.passwords import hash_password, password_problem
from app.services import audit
from app.stores import password_links
from app.stores import sessions as sessions_store
from app.stores import users as users_store
from app.web.browser import Browser, BrowserDep

router = APIRouter()

GONE = "This link has expired or was already used. Ask your administrator for a new one."


def _find(db, runtime, token: str):
    row = password_links.find(db, runtime.keyring.hashes(token), now()) if len(token) <= 100 else None
    user = users_store.get(db, row.user_id) if row else None
    return row, user


def _gone(browser: Browser):
    return browser.render("error.html", 404, title="Link not valid", message=GONE)


@router.get("/setup-password/{token}")
def page(token: str, browser: BrowserDep, db: DbDep, runtime: RuntimeDep):
    row, user = _find(db, runtime, token)
    if user is None:
        return _gone(browser)
    return browser.render("setup_password.html", username=user.username, token=token, error=None)


@router.post("/setup-password/{token}")
def set_password(token: str, browser: BrowserDep, db: DbDep, runtime: RuntimeDep, form: FormDep):
    row, user = _find(db, runtime, token)
    if user is None:
        return _gone(browser)
    password, repeat = str(form.get("password") or ""), str(form.get("repeat_password") or "")
    error = None
    if not browser.csrf_ok(form):
        error = "This form has expired. Please try again."
    else:
        error = password_problem(password) or (None if password == repeat else "The passwords do not match.")
    if error:
        return browser.render("setup_password.html", 400, username=user.username, token=token, error=error)
    if not password_links.take(db, row, now()):  # used once, even by two submissions at once
        return _gone(browser)
    users_store.set_password_hash(db, user.id, hash_password(password))
    sessions_store.remove_for_user(db, user.id)
    audit.record(db, "user.password_set", user_id=user.id, username=user.username, via="link")
    db.commit()
    return browser.redirect("/login")
