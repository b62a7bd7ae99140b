"""/admin/clients: every client with its kind, name, redirect hosts, creation and last use;
a detail page with its metadata and grants; edit (name, an admin-created client's redirect URIs),
disable and enable, trust, delete (revokes everything issued to it); the block list; the trust
policy for the hosts of metadata-document client_ids."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from app.admin.pages import AdminDep, Pager, confirm, confirmed, done_notice, not_found, page_number, require_csrf
from app.http.body import FormDep
from app.http.deps import DbDep, RuntimeDep
from app.models import Client
from app.models.client import KIND_ADMIN, KIND_DYNAMIC, KIND_METADATA_DOCUMENT
from app.oauth.redirect_uris import InvalidRedirectUri, validate_registered
from app.services import Refused
from app.services.clients import (
    add_host_rule,
    block,
    create_machine_client,
    delete_client,
    edit,
    remove_host_rule,
    set_disabled,
    set_trusted,
    unblock,
)
from app.settings import Settings, host_pattern
from app.stores import cimd_hosts as hosts_store
from app.stores import clients as store
from app.stores import consents as consents_store
from app.stores import resources as resources_store
from app.web.browser import Browser

router = APIRouter()

KINDS = {KIND_DYNAMIC: "dynamic", KIND_METADATA_DOCUMENT: "metadata document", KIND_ADMIN: "admin-created"}


@router.get("/admin/clients")
def clients_page(
    browser: AdminDep,
    db: DbDep,
    runtime: RuntimeDep,
    kind: str = "",
    unused: str = "",
    q: str = "",
    page: str | None = None,
    done: str = "",
) -> Response:
    kind = kind if kind in KINDS else ""
    # "dynamic, never used": what registration hygiene would prune next.
    never_used = unused == "1"
    if never_used:
        kind = KIND_DYNAMIC
    q = q.strip()[:200]
    where: dict[str, Any] = {"kind": kind or None, "never_used": never_used, "search": q or None}
    pager = Pager(page_number(page), store.count(db, **where), {"kind": kind, "unused": unused if never_used else "", "q": q})
    return browser.render(
        "admin/clients.html",
        section="clients",
        clients=store.search(db, **where, limit=pager.per_page, offset=pager.offset),
        pager=pager,
        kinds=KINDS,
        filters={"kind": kind, "unused": never_used, "q": q},
        blocked=store.blocked(db),
        resources=resources_store.all_resources(db),
        host_rules=hosts_store.all_rules(db),
        settings_host_rules=[("allow", h) for h in runtime.settings.cimd_allowed_client_hosts]
        + [("deny", h) for h in runtime.settings.cimd_denied_client_hosts],
        done=done_notice(done, "deleted", "blocked", "unblocked", "host-added", "host-removed"),
    )


CLIENT_NOTICES = ("trusted", "untrusted", "saved", "unchanged", "disabled", "enabled")


def _client_page(
    browser: Browser,
    db: Session,
    client: Client,
    *,
    done: str = "",
    status: int = 200,
    error: str | None = None,
    form: dict[str, str] | None = None,
) -> Response:
    return browser.render(
        "admin/client.html",
        status,
        section="clients",
        client=client,
        error=error,
        form=form or {"name": client.name, "redirect_uris": "\n".join(client.redirect_uris or [])},
        uris_editable=_uris_editable(client),
        kind_label=KINDS.get(client.kind, client.kind),
        metadata_json=json.dumps(client.client_metadata or {}, indent=2, sort_keys=True),
        mcp_server=resources_store.get(db, client.resource_id) if client.resource_id else None,
        machine_server=resources_store.get(db, client.grant_resource_id) if client.grant_resource_id else None,
        rows=consents_store.search(db, client_id=client.id, limit=500),
        done=done,
    )


@router.get("/admin/clients/detail")
def client_page(browser: AdminDep, db: DbDep, id: str = "", done: str = "") -> Response:
    client = store.get(db, id[:2048]) if id else None
    if client is None:
        return not_found(browser, "client")
    return _client_page(browser, db, client, done=done_notice(done, *CLIENT_NOTICES))


def _uris_editable(client: Client) -> bool:
    """An admin-created client that signs users in: its redirect URIs are the operator's."""
    return client.kind == KIND_ADMIN and "authorization_code" in (client.grant_types or [])


def _detail(client_id: str, done: str) -> str:
    return "/admin/clients/detail?id=" + quote(client_id, safe="") + "&done=" + done


@router.post("/admin/clients/edit")
def edit_client(browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    """Rename a client; replace an admin-created client's redirect URIs (one per line). Users'
    consents name the client and its redirect hosts: they are asked again
    (docs/decisions.md#consent-is-bound-to-what-the-user-saw)."""
    require_csrf(browser, form)
    client = store.get(db, str(form.get("client_id") or "")[:2048])
    if client is None:
        return not_found(browser, "client")
    name = str(form.get("name") or "")[:300]
    typed = str(form.get("redirect_uris") or "")[:20000]
    try:
        uris = None
        if _uris_editable(client) and "redirect_uris" in form:
            try:
                uris = [validate_registered(u.strip(), runtime.settings.native_app_schemes) for u in typed.split() if u.strip()]
            except InvalidRedirectUri as exc:
                raise Refused(f"Redirect URI: {exc}.") from None
        changed = edit(db, client, name=name, redirect_uris=uris, actor_id=browser.me.id, via="console")
    except Refused as exc:
        db.rollback()
        db.refresh(client)
        return _client_page(browser, db, client, status=400, error=str(exc), form={"name": name, "redirect_uris": typed})
    db.commit()
    return browser.redirect(_detail(client.id, "saved" if changed else "unchanged"))


@router.post("/admin/clients/disable")
def disable_client(browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    """Refuse a client at /authorize and /token until it is enabled again; nothing is revoked
    (docs/decisions.md#a-disabled-client-is-refused-until-enabled)."""
    require_csrf(browser, form)
    client = store.get(db, str(form.get("client_id") or "")[:2048])
    if client is None:
        return not_found(browser, "client")
    disabled = form.get("disabled") == "1"
    set_disabled(db, client, disabled, actor_id=browser.me.id, via="console")
    db.commit()
    return browser.redirect(_detail(client.id, "disabled" if disabled else "enabled"))


@router.post("/admin/clients/delete")
def delete(browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    require_csrf(browser, form)
    client = store.get(db, str(form.get("client_id") or "")[:2048])
    if client is None:
        return not_found(browser, "client")
    if not confirmed(form):
        return confirm(
            browser,
            title=f"Delete client {client.name}?",
            message="Its consents, codes and refresh tokens are deleted and its access tokens are reported inactive. "
            + ("It can register again. " if client.kind == KIND_DYNAMIC else "")
            + (
                "Its metadata document would be fetched again if it is used again."
                if client.kind == KIND_METADATA_DOCUMENT
                else ""
            ),
            action="/admin/clients/delete",
            fields={"client_id": client.id},
            back="/admin/clients/detail?id=" + quote(client.id, safe=""),
        )
    delete_client(db, client, reason="admin", actor_id=browser.me.id, via="console")
    db.commit()
    return browser.redirect("/admin/clients?done=deleted")


@router.post("/admin/clients/trust")
def trust(browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    """Vouch for a self-registered client, or withdraw it: its errors may then redirect before
    sign-in (docs/decisions.md#errors-of-self-registered-clients-stay-on-ostiary-until-sign-in)."""
    require_csrf(browser, form)
    client = store.get(db, str(form.get("client_id") or "")[:2048])
    if client is None or client.kind == KIND_ADMIN:
        return not_found(browser, "client")
    trusted = form.get("trusted") == "1"
    set_trusted(db, client, trusted, actor_id=browser.me.id, via="console")
    db.commit()
    return browser.redirect(
        "/admin/clients/detail?id=" + quote(client.id, safe="") + "&done=" + ("trusted" if trusted else "untrusted")
    )


@router.post("/admin/clients/block")
def block_client(browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    """Block a client id, above all a metadata-document URL that would otherwise be fetched
    again after a delete."""
    require_csrf(browser, form)
    client_id = str(form.get("client_id") or "").strip()[:2048]
    if not client_id:
        return browser.redirect("/admin/clients")
    if not confirmed(form):
        known = store.get(db, client_id)
        return confirm(
            browser,
            title=f"Block {known.name if known else client_id}?",
            message="It can no longer sign anyone in: "
            + ("its consents, codes and refresh tokens are deleted, its access tokens reported inactive, and " if known else "")
            + "its metadata document is not fetched again until you unblock it.",
            action="/admin/clients/block",
            fields={"client_id": client_id, "reason": str(form.get("reason") or "")[:500]},
            back="/admin/clients",
        )
    block(db, client_id, reason=str(form.get("reason") or ""), actor_id=browser.me.id, via="console")
    db.commit()
    return browser.redirect("/admin/clients?done=blocked")


@router.post("/admin/clients/unblock")
def unblock_client(browser: AdminDep, db: DbDep, form: FormDep) -> Response:
    require_csrf(browser, form)
    unblock(db, str(form.get("client_id") or "")[:2048], actor_id=browser.me.id, via="console")
    db.commit()
    return browser.redirect("/admin/clients?done=unblocked")


@router.post("/admin/clients/machine")
def add_machine_client(browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    """A machine client (client_credentials) for one MCP server and some of its scopes; with a
    JWK Set it authenticates with private_key_jwt, otherwise its secret is shown once."""
    require_csrf(browser, form)
    name = str(form.get("name") or "").strip()[:200]
    resource = resources_store.by_uri(db, str(form.get("resource") or ""))
    scopes = [s for s in str(form.get("scopes") or "").replace(",", " ").split() if s]
    keys_text = str(form.get("jwks") or "").strip()
    try:
        if not name or resource is None or not scopes:
            raise Refused("Give a name, an MCP server and at least one of its scopes.")
        try:
            jwks = json.loads(keys_text) if keys_text else None
        except ValueError:
            raise Refused("The keys must be a JWK Set in JSON.") from None
        client, secret = create_machine_client(
            db, runtime.keyring, name=name, resource=resource, scopes=scopes, jwks=jwks, actor_id=browser.me.id, via="console"
        )
    except Refused as exc:
        db.rollback()
        return browser.render("error.html", 400, title="The machine client was not created", message=str(exc))
    db.commit()
    # Shown once: only its HMAC is stored.
    return browser.render("admin/machine_client.html", section="clients", client=client, secret=secret)


# -- the trust policy for metadata-document client hosts (docs/decisions.md#cimd-client-host-trust-policy)


def _allow_rules(db: Session, settings: Settings) -> list[str]:
    return [*settings.cimd_allowed_client_hosts, *(r.host for r in hosts_store.all_rules(db) if r.rule == "allow")]


@router.post("/admin/clients/hosts")
def add_host(browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    """Allow or deny the hosts of metadata-document client_ids. The first allow rule turns the
    policy into an allow list, so it asks for confirmation."""
    require_csrf(browser, form)
    rule, note = str(form.get("rule") or ""), str(form.get("note") or "")[:500]
    try:
        host = host_pattern(str(form.get("host") or "")[:300])
    except ValueError as exc:
        return browser.render("error.html", 400, title="The rule was not added", message=str(exc))
    if rule == "allow" and not _allow_rules(db, runtime.settings) and not confirmed(form):
        return confirm(
            browser,
            title=f"Accept only apps from {host}?",
            message="This is the first allow rule: from now on, every app whose metadata document is published on a "
            "host that no allow rule matches is refused, the apps already in use included.",
            action="/admin/clients/hosts",
            fields={"host": host, "rule": rule, "note": note},
            button="Allow only these",
            back="/admin/clients",
        )
    try:
        add_host_rule(db, host, rule, note=note, actor_id=browser.me.id, via="console")
    except Refused as exc:
        db.rollback()
        return browser.render("error.html", 400, title="The rule was not added", message=str(exc))
    db.commit()
    runtime.server.documents.host_rules_changed()
    return browser.redirect("/admin/clients?done=host-added")


@router.post("/admin/clients/hosts/remove")
def remove_host(browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    """Remove a console rule. Removing the last allow rule accepts every host again (but denied
    ones), so it asks for confirmation."""
    require_csrf(browser, form)
    existing = hosts_store.get(db, str(form.get("host") or "")[:300])
    if existing is None:
        return not_found(browser, "host rule")
    if existing.rule == "allow" and _allow_rules(db, runtime.settings) == [existing.host] and not confirmed(form):
        return confirm(
            browser,
            title=f"Remove the last allow rule ({existing.host})?",
            message="With no allow rule left, apps whose metadata document is published on any host are accepted "
            "again, except on denied hosts.",
            action="/admin/clients/hosts/remove",
            fields={"host": existing.host},
            button="Remove",
            back="/admin/clients",
        )
    remove_host_rule(db, existing.host, actor_id=browser.me.id, via="console")
    db.commit()
    runtime.server.documents.host_rules_changed()
    return browser.redirect("/admin/clients?done=host-removed")
