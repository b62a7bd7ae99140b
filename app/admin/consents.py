"""/admin/consents: every grant, filterable; revoke one, or all of a user's or a client's."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Response

from app.admin.pages import AdminDep, Pager, confirm, confirmed, done_notice, not_found, page_number, require_csrf
from app.http.body import FormDep
from app.http.deps import DbDep
from app.services import consents
from app.stores import clients as clients_store
from app.stores import consents as consents_store
from app.stores import resources as resources_store
from app.stores import users as users_store
from app.web.browser import safe_next

router = APIRouter()


@router.get("/admin/consents")
def consents_page(
    browser: AdminDep, db: DbDep, user: str = "", client: str = "", resource: str = "", page: str | None = None, done: str = ""
) -> Response:
    user, client = user.strip()[:150], client.strip()[:2048]
    found_user = users_store.by_username(db, user) if user else None
    resource_id = int(resource) if resource.isdigit() else None
    where: dict[str, Any] = {
        "user_id": found_user.id if found_user else ("-" if user else None),  # unknown user: nothing
        "client_search": client or None,
        "resource_id": resource_id,
    }
    pager = Pager(page_number(page), consents_store.count(db, **where), {"user": user, "client": client, "resource": resource})
    exact_client = clients_store.get(db, client) if client else None
    return browser.render(
        "admin/consents.html",
        section="consents",
        rows=consents_store.search(db, **where, limit=pager.per_page, offset=pager.offset),
        pager=pager,
        filters={"user": user, "client": client, "resource": resource},
        resources=resources_store.all_resources(db),
        found_user=found_user,
        exact_client=exact_client,
        done=done_notice(done),
    )


@router.post("/admin/consents/revoke")
def revoke(browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    require_csrf(browser, form)
    raw = str(form.get("grant_id") or "")
    grant = consents_store.by_id(db, int(raw)) if raw.isdigit() else None
    back = safe_next(str(form.get("back") or ""), "/admin/consents")
    back = back if back.startswith("/admin") else "/admin/consents"
    if grant is None:
        return not_found(browser, "consent")
    if not confirmed(form):
        user = users_store.get(db, grant.user_id)
        client = clients_store.get(db, grant.client_id)
        resource = resources_store.get(db, grant.resource_id)
        return confirm(
            browser,
            title="Revoke this consent?",
            message=(
                f"{client.name if client else grant.client_id} loses access to {resource.name if resource else 'the MCP server'} "
                f"for {user.username if user else grant.user_id}: its refresh tokens stop working at once and its access "
                "tokens are reported inactive. The user is asked for consent again next time."
            ),
            action="/admin/consents/revoke",
            fields={"grant_id": str(grant.id), "back": back},
            back=back,
        )
    consents.revoke(db, grant, actor_id=browser.me.id, via="admin")
    db.commit()
    return browser.redirect(_with_done(back, "1"))


@router.post("/admin/consents/revoke-all")
def revoke_all(browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    """Bulk revocation: every consent of one user, or every consent given to one client."""
    require_csrf(browser, form)
    user = users_store.get(db, str(form.get("user_id") or "")) if form.get("user_id") else None
    client = clients_store.get(db, str(form.get("client_id") or "")) if form.get("client_id") and user is None else None
    if user is not None:
        ids = consents_store.ids_for(db, user_id=user.id)
        back = f"/admin/users/{user.id}"
        whose, fields = f"user {user.username}", {"user_id": user.id}
    elif client is not None:
        ids = consents_store.ids_for(db, client_id=client.id)
        back = "/admin/clients/detail?id=" + quote(client.id, safe="")
        whose, fields = f"client {client.name}", {"client_id": client.id}
    else:
        return not_found(browser, "user or client")
    if not confirmed(form):
        return confirm(
            browser,
            title=f"Revoke all {len(ids)} consents of {whose}?",
            message="Every refresh token issued under them stops working at once and their access tokens are reported inactive.",
            action="/admin/consents/revoke-all",
            fields=fields,
            back=back,
        )
    count = consents.revoke_many(db, ids, actor_id=browser.me.id, via="admin")
    db.commit()
    return browser.redirect(_with_done(back, str(count)))


def _with_done(url: str, count: str) -> str:
    return url + ("&" if "?" in url else "?") + "done=" + count
