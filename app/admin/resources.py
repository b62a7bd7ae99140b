"""/admin/resources: the MCP servers (RFC 8707 resources): list, create, edit, delete, and the
snippet for each server's author."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from app.admin import resource_form
from app.admin.pages import AdminDep, confirm, confirmed, done_notice, not_found, require_csrf
from app.admin.resource_form import ResourceForm
from app.http.body import FormDep
from app.http.deps import DbDep, RuntimeDep
from app.models import Resource
from app.runtime import Runtime
from app.services import Refused
from app.services import resources as resource_service
from app.stores import consents as consents_store
from app.stores import resources as store
from app.web.browser import Browser

router = APIRouter()


@router.get("/admin/resources")
def resources_page(browser: AdminDep, db: DbDep, done: str = "") -> Response:
    grants = Counter(resource_id for resource_id, *_ in consents_store.scope_rows(db))
    return browser.render(
        "admin/resources.html",
        section="resources",
        resources=store.all_resources(db),
        grants=grants,
        done=done_notice(done, "deleted"),
    )


def _form_page(
    browser: Browser, resource: Resource | None, form: ResourceForm, status: int = 200, error: str | None = None, done: str = ""
) -> Response:
    settings = browser.runtime.settings
    return browser.render(
        "admin/resource.html",
        status,
        section="resources",
        resource=resource,
        form=form,
        error=error,
        done=done,
        default_ttl=settings.access_token_ttl,
        snippet=resource_form.snippet(settings, resource) if resource is not None else None,
        too_many=resource is not None and len(resource.scopes) > resource_form.MAX_ROWS,
    )


@router.get("/admin/resources/new")
def new_page(browser: AdminDep) -> Response:
    return _form_page(browser, None, resource_form.from_resource(None))


@router.get("/admin/resources/{resource_id}")
def edit_page(resource_id: int, browser: AdminDep, db: DbDep, done: str = "") -> Response:
    resource = store.get(db, resource_id)
    if resource is None:
        return not_found(browser, "MCP server")
    return _form_page(browser, resource, resource_form.from_resource(resource), done=done_notice(done, "created", "saved"))


@router.post("/admin/resources/new")
def create(browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    return _save(browser, db, runtime, None, form)


@router.post("/admin/resources/{resource_id}")
def update(resource_id: int, browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    resource = store.get(db, resource_id)
    if resource is None:
        return not_found(browser, "MCP server")
    return _save(browser, db, runtime, resource, form)


def _save(browser: Browser, db: Session, runtime: Runtime, resource: Resource | None, form: FormData) -> Response:
    require_csrf(browser, form)
    submitted = resource_form.from_form(form)
    try:
        if resource is not None and len(resource.scopes) > resource_form.MAX_ROWS:
            raise Refused(f"This MCP server has more than {resource_form.MAX_ROWS} scopes; edit it with the ostiary command.")
        spec = resource_form.to_spec(submitted)
        if resource is None:
            saved = resource_service.create(db, spec, actor_id=browser.me.id, via="admin")
        else:
            saved = resource_service.update(db, resource, spec, actor_id=browser.me.id)
    except Refused as exc:
        db.rollback()
        return _form_page(browser, resource, submitted.with_empty_rows(), 400, error=str(exc))
    db.commit()
    runtime.invalidate_catalogue()  # every replica re-reads the catalogue within seconds; this one at once
    return browser.redirect(f"/admin/resources/{saved.id}?done={'created' if resource is None else 'saved'}")


@router.post("/admin/resources/{resource_id}/delete")
def delete(resource_id: int, browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    """Delete an MCP server after a confirmation page. While users have consented to it, the
    page asks to revoke their consents too (the command line's --force), and refuses without
    (docs/decisions.md#removing-an-mcp-server-that-users-consented-to-needs-confirmation)."""
    require_csrf(browser, form)
    resource = store.get(db, resource_id)
    if resource is None:
        return not_found(browser, "MCP server")
    usage = resource_service.usage(db, resource)
    consents = f"{usage.consents} consent{'s' if usage.consents != 1 else ''}"
    message = f"Clients can no longer get tokens for {resource.uri}, and its tokens are refused at introspection."
    if usage.consents:
        message += f" Users gave it {consents}: they are revoked with every token issued under them."
    if usage.clients:
        message += f" {usage.clients} client(s) bound to it (its credentials, machine clients) are kept, unbound."
    ask: dict[str, Any] = {
        "title": f"Delete MCP server {resource.name}?",
        "message": message,
        "action": f"/admin/resources/{resource.id}/delete",
        "fields": {},
        "button": "Delete",
        "back": f"/admin/resources/{resource.id}",
        "option": ("force", f"Revoke its {consents} too") if usage.consents else None,
    }
    if not confirmed(form):
        return confirm(browser, **ask)
    try:
        resource_service.remove(db, resource, force=form.get("force") == "on", actor_id=browser.me.id, via="admin")
    except resource_service.InUse as exc:
        db.rollback()
        return confirm(browser, **ask, status=409, error=f"{exc} Tick the box to revoke them, or cancel.")
    db.commit()
    runtime.invalidate_catalogue()  # every replica re-reads the catalogue within seconds; this one at once
    return browser.redirect("/admin/resources?done=deleted")
