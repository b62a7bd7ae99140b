"""/authorize and the consent page: the browser side of app/oauth/authorize.py.

Both entry points validate the request, ask `decide` for the next step and render it: an error
page, a redirect to the client, the sign-in page, the consent page, or a code. The request is
stored under an opaque handle while the user signs in and decides (/consent/{handle}).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.http import endpoints
from app.http.body import FormDep, form_params
from app.http.deps import DbDep, RuntimeDep
from app.http.middleware import CSP
from app.infra.db import now
from app.models import AuthorizationRequest, Client
from app.models.client import KIND_DYNAMIC, KIND_METADATA_DOCUMENT
from app.oauth import authorize as flow
from app.oauth.redirect_uris import is_loopback_redirect
from app.oauth.server import oauth_request
from app.runtime import Runtime
from app.security.hosts import client_ip
from app.services import consents
from app.stores import clients as clients_store
from app.stores import requests as requests_store
from app.web.browser import Browser, ReadOnlyBrowserDep
from app.web.browser import load as load_browser
from app.web.display import allow_image, client_links, client_logo

router = APIRouter()

GONE = "This sign-in request has expired or was already completed. Go back to the app and start again."
MAX_HANDLE = 100
PROTOCOL_SCOPE_TEXT = {
    "openid": "Know who you are (your user id and username)",
    "offline_access": "Stay connected when you are not using the app",
}
CONSENT_PATH = re.compile(rf"/consent/([A-Za-z0-9_-]{{1,{MAX_HANDLE}}})")


@dataclass(frozen=True)
class Pending:
    """The app's request a sign-in page is part of, as the page names it: which app (its
    metadata-document host, or where it sends the user back) wants which MCP server."""

    client_name: str
    client_host: str | None  # a metadata-document client's address (CIMD §8.5: shown prominently)
    unverified: bool  # registered itself (RFC 7591): its name is its own claim
    redirect_host: str
    resource_name: str
    resource_host: str


def pending_request(db: Session, runtime: Runtime, next_url: str) -> Pending | None:
    """The stored authorization request that `next_url` (/consent/{handle}) goes back to, or
    None. Read only: the consent page validates the request again."""
    match = CONSENT_PATH.fullmatch(next_url)
    row = requests_store.find(db, runtime.keyring.hashes(match.group(1)), now()) if match else None
    client = clients_store.get(db, row.client_id) if row is not None else None
    resource = runtime.catalogue.by_id(row.resource_id) if row is not None else None
    if row is None or client is None or resource is None:
        return None
    return Pending(
        client_name=client.name,
        client_host=_client_host(client),
        unverified=client.kind == KIND_DYNAMIC,
        redirect_host=_host(row.redirect_uri),
        resource_name=resource.name,
        resource_host=_host(resource.uri),
    )


def _host(uri: str) -> str:
    """The host[:port] of a URI, or "scheme:" for a private-use redirect (cursor:, vscode:)."""
    parts = urlsplit(uri)
    return parts.netloc or parts.scheme + ":"


def _client_host(client: Client) -> str | None:
    return urlsplit(client.id).netloc if client.kind == KIND_METADATA_DOCUMENT else None


@router.get(endpoints.AUTHORIZE.path, name="authorize")
async def authorize_get(request: Request) -> Response:
    # Every MCP client's sign-in starts here: no dependencies and one thread-pool call, as the
    # token endpoint (docs/decisions.md#the-token-endpoint-is-one-thread-pool-call).
    return await run_in_threadpool(_authorize_get, request.app.state.runtime, request)


def _authorize_get(runtime: Runtime, request: Request) -> Response:
    with runtime.sessions() as db:
        browser = load_browser(request, db, runtime, read_only=True)
        return _authorize(request, browser, db, runtime, list(request.query_params.multi_items()))


@router.post(endpoints.AUTHORIZE.path)
def authorize_post(request: Request, browser: ReadOnlyBrowserDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    # OAuth 2.1 §4.1.1: the authorization endpoint supports POST with a form body too.
    return _authorize(request, browser, db, runtime, form_params(form))


@router.get("/consent/{handle}")
def consent_page(handle: str, request: Request, browser: ReadOnlyBrowserDep, db: DbDep, runtime: RuntimeDep) -> Response:
    resumed = _resume(request, browser, db, runtime, handle)
    if isinstance(resumed, Response):
        return resumed
    v, row = resumed
    outcome, consent_id = _decide(browser, db, v, row)
    return _render(browser, db, runtime, v, outcome, consent_id, handle=handle)


@router.post("/consent/{handle}")
def consent_decision(
    handle: str, request: Request, browser: ReadOnlyBrowserDep, db: DbDep, runtime: RuntimeDep, form: FormDep
) -> Response:
    resumed = _resume(request, browser, db, runtime, handle)
    if isinstance(resumed, Response):
        return resumed
    v, row = resumed
    choice = form.get("decision")
    decision: flow.Decision = "allow" if choice == "allow" else "deny" if choice == "deny" else "show"
    problem = None if browser.csrf_ok(form) else "This form has expired. Please decide again."
    if problem is None and decision == "show":
        problem = "Choose Allow or Deny."
    outcome, consent_id = _decide(browser, db, v, row, "show" if problem else decision)
    return _render(browser, db, runtime, v, outcome, consent_id, handle=handle, problem=problem)


# -- the steps ----------------------------------------------------------------------------------


def _authorize(request: Request, browser: Browser, db: Session, runtime: Runtime, params: list[tuple[str, str]]) -> Response:
    # Before any work (a metadata-document fetch above all): one address cannot make us fetch
    # URLs or fill the authorization_requests table as fast as it likes.
    limited = browser.limited(client_ip(request), runtime.settings.authorize_rate_per_ip, "authorize-ip")
    if limited is not None:
        return limited
    req = oauth_request(
        request.method, runtime.settings.issuer + endpoints.AUTHORIZE.path, request.headers, params, form=request.method == "POST"
    )
    v = flow.validate(runtime.server, db, req)
    db.commit()  # a client metadata document fetched (or refused) while validating
    if not isinstance(v, flow.Validated):
        return _render_refusal(browser, v)
    outcome, consent_id = _decide(browser, db, v, None)
    return _render(browser, db, runtime, v, outcome, consent_id, handle=None)


def _resume(
    request: Request, browser: Browser, db: Session, runtime: Runtime, handle: str
) -> tuple[flow.Validated, AuthorizationRequest] | Response:
    """The stored request, validated again (the client may have changed meanwhile)."""
    row = requests_store.find(db, runtime.keyring.hashes(handle), now()) if len(handle) <= MAX_HANDLE else None
    if row is None:
        return browser.render("error.html", 404, title="Request not found", message=GONE)
    resource = runtime.catalogue.by_id(row.resource_id)
    if resource is None:
        return browser.render(
            "error.html", 400, title="Resource removed", message="The MCP server of this request no longer exists."
        )
    req = oauth_request(
        "GET",
        runtime.settings.issuer + endpoints.AUTHORIZE.path,
        request.headers,
        flow.stored_params(row, resource.uri),
        form=False,
    )
    v = flow.validate(runtime.server, db, req)
    if isinstance(v, flow.RedirectError):
        requests_store.take(db, [row.id_hash])
    db.commit()
    if not isinstance(v, flow.Validated):
        return _render_refusal(browser, v)
    return v, row


def _decide(
    browser: Browser, db: Session, v: flow.Validated, row: AuthorizationRequest | None, decision: flow.Decision | None = None
) -> tuple[flow.Outcome, int | None]:
    """The decision, and the id of the user's consent it was made from (read once)."""
    user = browser.user if browser.signed_in else None
    consent_id, consented = consents.current(db, user.id, v.client.row, v.resource.id) if user is not None else (None, set())
    outcome = flow.decide(
        prompts=v.prompts,
        scopes=v.scopes,
        resource=v.resource,
        user=user,
        auth_time=browser.session.auth_time if user is not None and browser.session is not None else None,
        requested_at=row.created_at if row is not None else None,
        consented=consented,
        decision=decision,
        max_age=v.max_age,
        now_=now(),
    )
    return outcome, consent_id


def _render_refusal(browser: Browser, refusal: flow.ShowError | flow.RedirectError) -> Response:
    if isinstance(refusal, flow.RedirectError):
        if refusal.may_redirect(browser.signed_in):
            return RedirectResponse(refusal.url, status_code=302)
        # RFC 9700 §4.11.2: a self-registered client's error, before sign-in, stays here.
        redirect = urlsplit(refusal.redirect_uri)
        host = redirect.hostname or redirect.scheme + ":"
        return browser.render(
            "authorize_error.html",
            400,
            description=getattr(refusal.error, "description", None) or "The request is not valid.",
            error=refusal.error.error,
            client_name=refusal.client.row.name if refusal.client is not None else "an unknown app",
            redirect_host=host,
            url=refusal.url,
        )
    description = getattr(refusal.error, "description", None) or "The request is not valid."
    return browser.render(
        "error.html",
        400,
        title="This app's request cannot be completed",
        message=description,
        detail=f"error: {refusal.error.error}. The app's redirect address could not be trusted, so you were not sent back to it.",
    )


def _render(
    browser: Browser,
    db: Session,
    runtime: Runtime,
    v: flow.Validated,
    outcome: flow.Outcome,
    consent_id: int | None,
    *,
    handle: str | None,
    problem: str | None = None,
) -> Response:
    if isinstance(outcome, flow.PromptError):
        return _render_refusal(browser, flow.prompt_error(runtime.server, v, outcome))
    if isinstance(outcome, flow.SignIn):
        if handle is None:
            handle = _store(db, runtime, v)
        url = "/login?next=" + quote(f"/consent/{handle}", safe="")
        return browser.redirect(url + ("&prompt=login" if outcome.force else ""))
    if isinstance(outcome, flow.AskConsent):
        if handle is None:
            return browser.redirect(f"/consent/{_store(db, runtime, v)}")
        return _consent_page(browser, v, outcome, handle, 400 if problem else 200, problem)
    # A final answer: the stored request is used up, once (two submissions: one wins).
    if handle is not None and not _finish(db, runtime, handle):
        return browser.render("error.html", 400, title="Request already completed", message=GONE)
    user = browser.user
    assert user is not None and browser.session is not None
    if isinstance(outcome, flow.Deny):
        response: Response = flow.deny(runtime.server, db, v, user, outcome.reason)
    else:
        if outcome.record_consent:
            consent_id = consents.give(db, user, v.client.row, v.resource, outcome.scopes).id
        response = flow.issue_code(
            runtime.server, db, v, user, scopes=outcome.scopes, auth_time=browser.session.auth_time, consent_id=consent_id
        )
    db.commit()
    return response


def _store(db: Session, runtime: Runtime, v: flow.Validated) -> str:
    handle = flow.store_request(db, runtime.keyring, runtime.settings.authorization_request_ttl, v)
    db.commit()
    return handle


def _finish(db: Session, runtime: Runtime, handle: str) -> bool:
    return requests_store.take(db, runtime.keyring.hashes(handle))


def _consent_page(
    browser: Browser, v: flow.Validated, ask: flow.AskConsent, handle: str, status: int, error: str | None
) -> Response:
    client = v.client.row
    resource = v.resource

    def describe(name: str) -> str:
        if name in resource.scopes:
            return resource.scopes[name].description
        return PROTOCOL_SCOPE_TEXT.get(name, "")

    def item(name: str) -> tuple[str, str, list[tuple[str, str]]]:
        """A scope as the page lists it: name, description, and the scopes it includes
        (docs/decisions.md#scope-hierarchy), so the user sees everything an Allow gives."""
        return name, describe(name), [(n, describe(n)) for n in resource.includes(name)]

    logo = client_logo(client.client_metadata)
    response = browser.render(
        "consent.html",
        status,
        handle=handle,
        client=client,
        client_host=_client_host(client),
        unverified=client.kind == KIND_DYNAMIC,
        links=client_links(client.client_metadata),
        logo=logo[0] if logo else None,
        # MCP (Client ID Metadata Documents, security): a warning when every address the app
        # may send the user back to is on this computer; whichever way the client registered,
        # since anyone can register a "Claude Code" with a localhost redirect.
        all_localhost=all(is_loopback_redirect(u) for u in client.redirect_uris or []),
        redirect_host=_host(v.redirect_uri),
        resource=resource,
        already=[item(s) for s in ask.already],
        new=[item(s) for s in ask.new],
        refused=ask.refused,
        error=error,
    )
    if logo is not None:
        # The page's policy lets images come from Ostiary only; this one logo may come too.
        response.headers["content-security-policy"] = allow_image(CSP, logo[1])
    return response
