"""Signing in through an organisation's OpenID Connect provider (OIDC Core §3.1, Ostiary as
the relying party): /login/{name} sends the browser there with state, nonce and PKCE S256;
/login/{name}/callback checks state (and RFC 9207 `iss`), redeems the code, verifies the ID
token and signs the linked user in (app/services/identities.py provisions one on first sight).

What the callback needs from the start (state, nonce, PKCE verifier, where to go next) travels
in a short-lived cookie encrypted under the keyring: any replica can finish a sign-in another
one started, and nothing is stored for abandoned ones.
"""

from __future__ import annotations

import hmac
import json
import logging

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from app.http.deps import DbDep, RuntimeDep
from app.infra.db import now
from app.models import IdentityProvider
from app.oauth import upstream
from app.oauth.upstream import SignInRefused, UpstreamError
from app.runtime import Runtime
from app.security.hosts import client_ip
from app.security.secrets import DecryptError
from app.services import Refused, audit, identities
from app.stores import identities as identity_store
from app.stores import users as users_store
from app.web.browser import Browser, BrowserDep, safe_next

router = APIRouter()
log = logging.getLogger("ostiary.upstream")

PENDING_TTL = 600
CONTEXT = b"upstream-sign-in"
STARTED_AGAIN = "This sign-in has expired or was started in another browser. Please start again."


def _cookie(runtime: Runtime) -> str:
    return ("__Host-" if runtime.settings.is_https else "") + "ostiary-upstream"


def _provider(db: DbDep, name: str) -> IdentityProvider | None:
    provider = identity_store.get(db, name[:64])
    return provider if provider is not None and provider.enabled and provider.client_id else None


def _refused(browser: Browser, status: int, message: str) -> Response:
    return browser.render("error.html", status, title="Sign-in did not complete", message=message)


def _registration(runtime: Runtime, provider: IdentityProvider) -> upstream.Registration:
    assert provider.client_id is not None and provider.client_secret_enc is not None  # sign-in providers (services)
    secret = runtime.keyring.decrypt(provider.client_secret_enc, identities.secret_context(provider.name)).decode()
    redirect_uri = f"{runtime.settings.issuer}/login/{provider.name}/callback"
    return upstream.Registration(provider.issuer, provider.client_id, secret, provider.scopes, redirect_uri)


def _unknown(browser: Browser) -> Response:
    return browser.render("error.html", 404, title="Unknown sign-in option", message="There is no such way to sign in here.")


@router.get("/login/{name}")
def start(name: str, request: Request, browser: BrowserDep, db: DbDep, runtime: RuntimeDep, next: str | None = None) -> Response:
    provider = _provider(db, name)
    if provider is None:
        return _unknown(browser)
    limited = browser.limited(client_ip(request), runtime.settings.login_rate_per_ip, "login-ip")
    if limited is not None:
        return limited
    try:
        started = upstream.start(runtime.server.upstreams, _registration(runtime, provider))
    except (SignInRefused, UpstreamError) as exc:
        log.warning("sign-in through %s could not start: %s", provider.name, exc)
        return _refused(browser, 502, f"{provider.name} could not be reached. Please try again later.")
    pending = {
        "idp": provider.name,
        "state": started.state,
        "nonce": started.nonce,
        "verifier": started.verifier,
        "next": safe_next(next),
        "exp": now() + PENDING_TTL,
    }
    browser.cookies_to_set.append((_cookie(runtime), runtime.keyring.encrypt(json.dumps(pending).encode(), CONTEXT), PENDING_TTL))
    return browser.apply_cookies(RedirectResponse(started.url, status_code=303))


@router.get("/login/{name}/callback")
def callback(name: str, request: Request, browser: BrowserDep, db: DbDep, runtime: RuntimeDep) -> Response:
    provider = _provider(db, name)
    if provider is None:
        return _unknown(browser)
    pending = _pending(request, runtime, provider.name)
    browser.cookies_to_set.append((_cookie(runtime), "", 0))  # used once, whatever happens
    if pending is None:
        return _refused(browser, 400, STARTED_AGAIN)
    params = request.query_params
    if "error" in params:
        audit.record(db, "login.failed", reason="upstream_error", idp=provider.name, error=params["error"][:100])
        db.commit()
        return _refused(browser, 400, f"{provider.name} did not sign you in.")
    # RFC 6749 §10.12: the state binds the answer to this browser's request.
    if not hmac.compare_digest(str(params.get("state", "")), pending["state"]):
        return _refused(browser, 400, STARTED_AGAIN)
    # RFC 9207 §2.4: when the provider says who answered, it must be the provider we asked.
    if "iss" in params and params["iss"] != provider.issuer:
        return _refused(browser, 400, "The answer came from another identity provider than the one you chose.")
    code = params.get("code")
    if not code or len(code) > 4096:
        return _refused(browser, 400, STARTED_AGAIN)
    try:
        claims = upstream.finish(
            runtime.server.upstreams,
            _registration(runtime, provider),
            code=code,
            verifier=pending["verifier"],
            nonce=pending["nonce"],
        )
        user = identities.user_for(db, provider, claims)
    except (SignInRefused, UpstreamError, Refused) as exc:
        log.warning("sign-in through %s refused: %s", provider.name, exc)
        audit.record(db, "login.failed", reason="upstream_refused", idp=provider.name, detail=str(exc)[:200])
        db.commit()
        return _refused(browser, 403 if isinstance(exc, Refused) else 400, f"Signing in through {provider.name} failed.")
    if user.disabled or user.locked_at is not None:
        audit.record(db, "login.failed", user_id=user.id, username=user.username, reason="disabled", idp=provider.name)
        db.commit()
        return _refused(browser, 403, "This account cannot sign in here. Ask an administrator.")
    users_store.mark_login(db, user.id)
    browser.start_session(db, user, request, status="active", amr=["ext"])  # RFC 8176: not ours to name
    audit.record(db, "login.succeeded", user_id=user.id, username=user.username, idp=provider.name)
    db.commit()
    return browser.redirect(pending["next"])


def _pending(request: Request, runtime: Runtime, name: str) -> dict[str, str] | None:
    value = request.cookies.get(_cookie(runtime))
    if not value or len(value) > 4096:
        return None
    try:
        pending = json.loads(runtime.keyring.decrypt(value, CONTEXT))
    except (DecryptError, ValueError):
        return None
    if not isinstance(pending, dict) or pending.get("idp") != name or int(pending.get("exp", 0)) < now():
        return None
    return pending
