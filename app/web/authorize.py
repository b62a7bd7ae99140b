"""/authorize and the consent page: the browser side of app/oauth/authorize.py."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse

from app.http import endpoints
from app.http.body import FormDep
from app.http.deps import DbDep, RuntimeDep
from app.models.client import KIND_DYNAMIC, KIND_METADATA_DOCUMENT
from app.oauth import authorize as flow
from app.oauth.redirect_uris import is_loopback_redirect
from app.oauth.server import oauth_request
from app.security.hosts import client_ip
from app.services import audit
from app.stores import grants as grants_store
from app.stores import requests as requests_store
from app.web.browser import Browser, BrowserDep

router = APIRouter()

GONE = "This sign-in request has expired or was already completed. Go back to the app and start again."


def _error_page(browser: Browser, error) -> object:
    description = getattr(error, "description", None) or "The request is not valid."
    return browser.render(
        "error.html",
        400,
        title="This app's request cannot be completed",
        message=description,
        detail=f"error: {error.error}. The app's redirect address could not be trusted, so you were not sent back to it.",
    )


def _login(browser: Browser, handle: str, force: bool) -> RedirectResponse:
    url = "/login?next=" + quote(f"/consent/{handle}", safe="")
    if force:
        url += "&prompt=login"
    return browser.redirect(url)


def _start(request: Request, browser: Browser, db, runtime, params: list[tuple[str, str]]):
    # Before any work (a metadata-document fetch above all): one address cannot make us fetch
    # URLs or fill the authorization_requests table as fast as it likes.
    limited = browser.limited(client_ip(request), runtime.settings.authorize_rate_per_ip, "authorize-ip")
    if limited is not None:
        return limited
    server = runtime.server
    req = oauth_request(
        request.method, runtime.settings.issuer + "/authorize", request.headers, params, form=request.method == "POST"
    )
    result = flow.validate(server, db, req)
    db.commit()  # a client metadata document fetched (or refused) while validating
    if isinstance(result, flow.Untrusted):
        return _error_page(browser, result.error)
    if isinstance(result, RedirectResponse):
        return result
    grant = result
    prompts = grant.request.prompts
    user = browser.user if browser.signed_in and "login" not in prompts else None
    if user is None:
        if "none" in prompts:
            return flow.prompt_error(server, grant, flow.LoginRequiredError)
        handle = flow.store_request(db, runtime, grant)
        db.commit()
        return _login(browser, handle, force="login" in prompts)
    return _continue(browser, db, runtime, grant, handle=None)


def _continue(browser: Browser, db, runtime, grant, handle: str | None):
    """Signed in: skip consent when it already covers the request, else show the page."""
    server = runtime.server
    req = grant.request
    user = browser.user
    scopes = flow.permitted_scopes(req.scopes, req.resource, user)
    if flow.asks_resource_scopes(req.scopes) and not flow.asks_resource_scopes(scopes):
        _finish(db, runtime, handle)
        response = flow.deny(server, db, grant, user, "policy")
        db.commit()
        return response
    grant_id, granted = flow.current_grant_scopes(db, user, grant)
    _, new = flow.split_consent(scopes, granted)
    if new or "consent" in req.prompts:
        if "none" in req.prompts:
            return flow.prompt_error(server, grant, flow.ConsentRequiredError)
        if handle is None:
            handle = flow.store_request(db, runtime, grant)
            db.commit()
            return browser.redirect(f"/consent/{handle}")
        return None  # the caller renders the consent page
    if handle is not None and not _finish(db, runtime, handle):
        return browser.render("error.html", 400, title="Request already completed", message=GONE)
    response = flow.issue_code(server, db, grant, user, scopes=scopes, auth_time=browser.session.auth_time, grant_id=grant_id)
    db.commit()
    return response


def _finish(db, runtime, handle: str | None) -> bool:
    if handle is None:
        return True
    return requests_store.take(db, runtime.keyring.hashes(handle))


@router.get(endpoints.AUTHORIZE.path, name="authorize")
def authorize_get(request: Request, browser: BrowserDep, db: DbDep, runtime: RuntimeDep):
    return _start(request, browser, db, runtime, list(request.query_params.multi_items()))


@router.post(endpoints.AUTHORIZE.path)
def authorize_post(request: Request, browser: BrowserDep, db: DbDep, runtime: RuntimeDep, form: FormDep):
    # OAuth 2.1 §4.1.1: the authorization endpoint supports POST with a form body too.
    return _start(request, browser, db, runtime, [(k, v) for k, v in form.multi_items() if isinstance(v, str)])


def _resume(request: Request, browser: Browser, db, runtime, handle: str):
    """(grant, row) for a stored request, or a response to return instead."""
    if len(handle) > 100:
        return browser.render("error.html", 404, title="Request not found", message=GONE)
    from app.infra.db import now

    row = requests_store.find(db, runtime.keyring.hashes(handle), now())
    if row is None:
        return browser.render("error.html", 404, title="Request not found", message=GONE)
    force_login = "login" in (row.prompt or "").split()
    if not browser.signed_in or (force_login and browser.session.auth_time < row.created_at):
        return _login(browser, handle, force=force_login)
    resource = runtime.catalogue.by_id(row.resource_id)
    if resource is None:
        return browser.render(
            "error.html", 400, title="Resource removed", message="The MCP server of this request no longer exists."
        )
    params = flow.replay_params(row, resource.uri)
    req = oauth_request("GET", runtime.settings.issuer + "/authorize", request.headers, params, form=False)
    result = flow.validate(runtime.server, db, req)
    db.commit()  # a client metadata document fetched (or refused) while validating
    if isinstance(result, flow.Untrusted):
        return _error_page(browser, result.error)
    if isinstance(result, RedirectResponse):
        _finish(db, runtime, handle)
        db.commit()
        return result
    return result


@router.get("/consent/{handle}")
def consent_page(handle: str, request: Request, browser: BrowserDep, db: DbDep, runtime: RuntimeDep):
    grant = _resume(request, browser, db, runtime, handle)
    if not hasattr(grant, "request"):
        return grant
    answer = _continue(browser, db, runtime, grant, handle)
    if answer is not None:
        return answer
    return _render_consent(browser, db, grant, handle)


def _render_consent(browser: Browser, db, grant, handle: str, status: int = 200, error: str | None = None):
    req = grant.request
    user = browser.user
    client = req.client.row
    resource = req.resource
    scopes = flow.permitted_scopes(req.scopes, resource, user)
    _, granted = flow.current_grant_scopes(db, user, grant)
    already, new = flow.split_consent(scopes, granted)
    refused = [s for s in req.scopes if s not in scopes]

    def describe(name: str) -> str:
        if name in resource.scopes:
            return resource.scopes[name].description
        return {
            "openid": "Know who you are (your user id and username)",
            "offline_access": "Stay connected when you are not using the app",
        }.get(name, "")

    redirect_host = urlsplit(grant.redirect_uri).netloc or urlsplit(grant.redirect_uri).scheme + ":"
    client_host = urlsplit(client.id).netloc if client.kind == KIND_METADATA_DOCUMENT else None
    return browser.render(
        "consent.html",
        status,
        handle=handle,
        client=client,
        client_host=client_host,
        unverified=client.kind == KIND_DYNAMIC,
        all_localhost=all(is_loopback_redirect(u) for u in client.redirect_uris or []),
        redirect_host=redirect_host,
        resource=resource,
        already=[(s, describe(s)) for s in already],
        new=[(s, describe(s)) for s in new],
        refused=refused,
        error=error,
    )


@router.post("/consent/{handle}")
def consent_decision(handle: str, request: Request, browser: BrowserDep, db: DbDep, runtime: RuntimeDep, form: FormDep):
    grant = _resume(request, browser, db, runtime, handle)
    if not hasattr(grant, "request"):
        return grant
    if not browser.csrf_ok(form):
        return _render_consent(browser, db, grant, handle, 400, error="This form has expired. Please decide again.")
    decision = form.get("decision")
    if decision not in ("allow", "deny"):
        return _render_consent(browser, db, grant, handle, 400, error="Choose Allow or Deny.")
    if not _finish(db, runtime, handle):
        return browser.render("error.html", 400, title="Request already completed", message=GONE)
    server = runtime.server
    user = browser.user
    req = grant.request
    if decision == "deny":
        response = flow.deny(server, db, grant, user, "user")
        db.commit()
        return response
    scopes = flow.permitted_scopes(req.scopes, req.resource, user)
    if flow.asks_resource_scopes(req.scopes) and not flow.asks_resource_scopes(scopes):
        response = flow.deny(server, db, grant, user, "policy")
        db.commit()
        return response
    row = grants_store.merge(db, user.id, req.client.client_id, req.resource.id, set(scopes))
    audit.record(
        db,
        "consent.granted",
        user_id=user.id,
        username=user.username,
        client_id=req.client.client_id,
        resource=req.resource.uri,
        scope=" ".join(scopes),
        grant_scope=row.scope,
    )
    response = flow.issue_code(server, db, grant, user, scopes=scopes, auth_time=browser.session.auth_time, grant_id=row.id)
    db.commit()
    return response
