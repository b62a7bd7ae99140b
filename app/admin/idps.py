"""/admin/idps: the organisation's identity providers: list, add, enable or disable, and
"Test connection" (fetch the discovery document and the keys now)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from app.admin.pages import AdminDep, done_notice, not_found, require_csrf
from app.http.body import FormDep
from app.http.deps import DbDep, RuntimeDep
from app.oauth.upstream import UpstreamError
from app.services import Refused
from app.services import identities as service
from app.stores import identities as store
from app.web.browser import Browser

router = APIRouter()


def _page(
    browser: Browser,
    db: Session,
    status: int = 200,
    *,
    error: str | None = None,
    done: str = "",
    form: dict[str, str] | None = None,
) -> Response:
    return browser.render(
        "admin/idps.html",
        status,
        section="idps",
        providers=store.all_providers(db),
        error=error,
        done=done,
        form=form or {},
    )


@router.get("/admin/idps")
def idps_page(browser: AdminDep, db: DbDep, done: str = "") -> Response:
    return _page(browser, db, done=done_notice(done, "added", "enabled", "disabled", "removed"))


@router.post("/admin/idps")
def add(browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    require_csrf(browser, form)
    values = {k: str(form.get(k) or "").strip() for k in ("name", "issuer", "client_id", "groups_claim", "allowed_domains")}
    try:
        service.add_provider(
            db,
            runtime.keyring,
            name=values["name"],
            issuer=values["issuer"],
            client_id=values["client_id"] or None,
            client_secret=str(form.get("client_secret") or "").strip() or None,
            groups_claim=values["groups_claim"] or None,
            allowed_domains=[d for d in values["allowed_domains"].replace(",", " ").split() if d],
            id_jag=form.get("id_jag") == "on",
            actor_id=browser.me.id,
            via="console",
        )
    except Refused as exc:
        db.rollback()
        return _page(browser, db, 400, error=str(exc), form=values)
    db.commit()
    return browser.redirect("/admin/idps?done=added")


@router.post("/admin/idps/{name}/enabled")
def set_enabled(name: str, browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    require_csrf(browser, form)
    provider = store.get(db, name[:64])
    if provider is None:
        return not_found(browser, "identity provider")
    enabled = form.get("enabled") == "1"
    service.set_enabled(db, provider, enabled, actor_id=browser.me.id)
    db.commit()
    return browser.redirect("/admin/idps?done=" + ("enabled" if enabled else "disabled"))


@router.post("/admin/idps/{name}/test")
def test_connection(name: str, browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    require_csrf(browser, form)
    provider = store.get(db, name[:64])
    if provider is None:
        return not_found(browser, "identity provider")
    try:
        runtime.server.upstreams.keys(provider.issuer, None)
    except UpstreamError as exc:
        return _page(browser, db, 502, error=f"{provider.name}: {exc.description}")
    return _page(browser, db, done=f"{provider.name} answered: discovery document and keys are usable.")
