"""/admin/users: list, search, create, and one user's page (status, admin flag, groups, MFA,
password link, grants)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app.admin.pages import AdminDep, Pager, confirm, confirmed, done_notice, not_found, page_number, require_csrf
from app.http.body import FormDep
from app.http.deps import DbDep, RuntimeDep
from app.models import User
from app.services import Refused, mfa
from app.services import users as user_service
from app.stores import consents as consents_store
from app.stores import identities as identity_store
from app.stores import users as store
from app.web.browser import Browser

router = APIRouter()

USER_NOTICES = ("created", "disabled", "enabled", "admin", "groups", "mfa_reset", "unlocked")


@router.get("/admin/users")
def users_page(browser: AdminDep, db: DbDep, q: str = "", page: str | None = None) -> Response:
    q = q.strip()[:150]
    pager = Pager(page_number(page), store.count(db, q or None), {"q": q})
    return browser.render(
        "admin/users.html",
        section="users",
        users=store.all_users(db, q or None, limit=pager.per_page, offset=pager.offset),
        q=q,
        pager=pager,
        form={},
        error=None,
    )


@router.post("/admin/users")
def create(browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    require_csrf(browser, form)
    values = {k: str(form.get(k) or "") for k in ("username", "password", "password_mode", "groups")}
    is_admin = form.get("is_admin") == "on"
    by_link = values["password_mode"] == "link"
    try:
        user = user_service.create_user(
            db,
            username=values["username"],
            password=None if by_link else values["password"],
            is_admin=is_admin,
            groups=user_service.parse_groups(values["groups"]),
            actor_id=browser.me.id,
            via="admin",
        )
        link = (
            user_service.new_password_link(db, runtime.keyring, runtime.settings.issuer, user, actor_id=browser.me.id)
            if by_link
            else None
        )
    except Refused as exc:
        db.rollback()
        values.pop("password")
        return browser.render(
            "admin/users.html",
            400,
            section="users",
            users=store.all_users(db, limit=50),
            q="",
            pager=None,
            form={**values, "is_admin": is_admin},
            error=str(exc),
        )
    db.commit()
    if link:  # shown once: only its HMAC is stored
        return browser.render("admin/password_link.html", section="users", subject=user, link=link, created=True)
    return browser.redirect(f"/admin/users/{user.id}?done=created")


def _user_page(
    browser: Browser, db: Session, user: User, status: int = 200, error: str | None = None, done: str = ""
) -> Response:
    return browser.render(
        "admin/user.html",
        status,
        section="users",
        subject=user,
        rows=consents_store.search(db, user_id=user.id, limit=500),
        recovery_left=mfa.recovery_codes_left(db, user) if user.mfa_enabled else 0,
        identities=identity_store.identities_with_providers(db, user.id),
        is_self=user.id == browser.me.id,
        error=error,
        done=done,
    )


@router.get("/admin/users/{user_id}")
def user_page(user_id: str, browser: AdminDep, db: DbDep, done: str = "") -> Response:
    user = store.get(db, user_id[:36])
    if user is None:
        return not_found(browser, "user")
    return _user_page(browser, db, user, done=done_notice(done, *USER_NOTICES))


def _act(
    browser: Browser,
    db: Session,
    user_id: str,
    form: FormData,
    change: Callable[[User, str], object],
    done: str,
    ask: Callable[[User], dict[str, Any]] | None = None,
) -> Response:
    """One change to one user: CSRF, the user, the confirmation step if `ask` says what to ask,
    then the service call (a refusal is shown on the user's page)."""
    require_csrf(browser, form)
    user = store.get(db, user_id[:36])
    if user is None:
        return not_found(browser, "user")
    if ask is not None and not confirmed(form):
        return confirm(browser, **ask(user), back=f"/admin/users/{user.id}")
    actor_id = browser.me.id
    try:
        change(user, actor_id)
    except Refused as exc:
        db.rollback()
        db.refresh(user)
        return _user_page(browser, db, user, 409, error=str(exc))
    db.commit()
    return browser.redirect(f"/admin/users/{user.id}?done={done}")


@router.post("/admin/users/{user_id}/disable")
def disable(user_id: str, browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    def ask(user: User) -> dict[str, Any]:
        return {
            "title": f"Disable {user.username}?",
            "message": "They are signed out everywhere, cannot sign in, their refresh tokens are revoked and their "
            "access tokens are reported inactive. You can enable the account again later; their apps then "
            "ask them to sign in again.",
            "action": f"/admin/users/{user.id}/disable",
            "fields": {},
        }

    return _act(
        browser, db, user_id, form, lambda u, actor: user_service.set_disabled(db, u, True, actor_id=actor), "disabled", ask
    )


@router.post("/admin/users/{user_id}/enable")
def enable(user_id: str, browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    return _act(browser, db, user_id, form, lambda u, actor: user_service.set_disabled(db, u, False, actor_id=actor), "enabled")


@router.post("/admin/users/{user_id}/unlock")
def unlock(user_id: str, browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    return _act(browser, db, user_id, form, lambda u, actor: user_service.unlock(db, u, actor_id=actor), "unlocked")


@router.post("/admin/users/{user_id}/admin")
def admin_flag(user_id: str, browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    make_admin = form.get("is_admin") == "yes"

    def ask(user: User) -> dict[str, Any]:
        return {
            "title": f"Remove the admin flag of {user.username}?",
            "message": "They can no longer use the admin console." + (" That includes you." if user.id == browser.me.id else ""),
            "action": f"/admin/users/{user.id}/admin",
            "fields": {"is_admin": "no"},
        }

    def change(user: User, actor_id: str) -> None:
        user_service.set_admin(db, user, make_admin, actor_id=actor_id)

    response = _act(browser, db, user_id, form, change, "admin", None if make_admin else ask)
    if not make_admin and user_id == browser.me.id and response.status_code == 303:
        return browser.redirect("/account")  # they just left the console
    return response


@router.post("/admin/users/{user_id}/groups")
def groups(user_id: str, browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    def change(user: User, actor_id: str) -> None:
        user_service.set_groups(db, user, user_service.parse_groups(str(form.get("groups") or "")), actor_id=actor_id)

    return _act(browser, db, user_id, form, change, "groups")


@router.post("/admin/users/{user_id}/reset-mfa")
def reset_mfa(user_id: str, browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    def ask(user: User) -> dict[str, Any]:
        return {
            "title": f"Reset two-step verification of {user.username}?",
            "message": "Their authenticator app and recovery codes stop working; they sign in with their password only "
            "until they set up two-step verification again.",
            "action": f"/admin/users/{user.id}/reset-mfa",
            "fields": {},
        }

    return _act(browser, db, user_id, form, lambda u, actor: mfa.reset(db, u, actor_id=actor), "mfa_reset", ask)


@router.post("/admin/users/{user_id}/password-link")
def password_link(user_id: str, browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    require_csrf(browser, form)
    user = store.get(db, user_id[:36])
    if user is None:
        return not_found(browser, "user")
    link = user_service.new_password_link(db, runtime.keyring, runtime.settings.issuer, user, actor_id=browser.me.id)
    db.commit()
    return browser.render("admin/password_link.html", section="users", subject=user, link=link, created=False)
