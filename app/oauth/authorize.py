"""The authorization endpoint's interaction: validate, then sign-in, then consent, then a code.

Until the client and its redirect URI are trusted, errors are rendered as a page; after that they
go back to the client with `error`, `state` and `iss` (RFC 6749 §4.1.2.1, RFC 9207). A request
that needs a page (sign-in or consent) is stored under an opaque handle, so those pages are
pages of their own that survive a reload; a returning user whose consent covers the request gets
the code at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from authlib.oauth2.rfc6749 import AccessDeniedError, OAuth2Error
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import AuthorizationRequest, User
from app.oauth.catalogue import ResourceInfo
from app.oauth.scopes import PROTOCOL_SCOPES
from app.oauth.server import OstiaryServer, Request, error_redirect_url, using
from app.security.secrets import new_token
from app.services import audit
from app.stores import grants as grants_store
from app.stores import requests as requests_store


class LoginRequiredError(OAuth2Error):
    error = "login_required"  # OIDC Core §3.1.2.6


class ConsentRequiredError(OAuth2Error):
    error = "consent_required"  # OIDC Core §3.1.2.6


@dataclass
class Untrusted:
    """An error to render as a page: the client or its redirect URI is not trusted."""

    error: OAuth2Error


def validate(server: OstiaryServer, db: Session, req: Request):
    """The authlib grant for a valid request, a RedirectResponse carrying the error to a trusted
    redirect URI, or Untrusted."""
    with using(db, fetch_documents=True):
        try:
            return server.get_consent_grant(req)
        except OAuth2Error as error:
            if error.redirect_uri:
                return RedirectResponse(error_redirect_url(error, server.issuer), status_code=302)
            return Untrusted(error)


def permitted_scopes(scopes: list[str], resource: ResourceInfo, user: User) -> list[str]:
    """Access policy: the subset of scopes this user may grant (groups); protocol scopes always."""
    return [s for s in scopes if s in PROTOCOL_SCOPES or resource.scopes[s].permits(user.groups)]


def asks_resource_scopes(scopes: list[str]) -> bool:
    return any(s not in PROTOCOL_SCOPES for s in scopes)


def split_consent(scopes: list[str], granted: set[str]) -> tuple[list[str], list[str]]:
    """(already granted, new) in request order: incremental consent asks only for what is new."""
    return [s for s in scopes if s in granted], [s for s in scopes if s not in granted]


def store_request(db: Session, runtime, grant) -> str:
    """Persist the validated request; return the opaque handle the browser carries."""
    handle = new_token()
    req = grant.request
    data = req.payload.data
    t = now()
    requests_store.add(
        db,
        AuthorizationRequest(
            id_hash=runtime.keyring.hash(handle),
            client_id=req.client.client_id,
            redirect_uri=grant.redirect_uri,
            redirect_uri_in_request=bool(req.payload.redirect_uri),
            resource_id=req.resource.id,
            scope=" ".join(req.scopes),
            state=data.get("state"),
            code_challenge=data["code_challenge"],
            nonce=data.get("nonce"),
            prompt=" ".join(sorted(req.prompts)) or None,
            created_at=t,
            expires_at=t + runtime.settings.authorization_request_ttl,
        ),
    )
    return handle


def replay_params(row: AuthorizationRequest, resource_uri: str) -> list[tuple[str, str]]:
    """The stored request as authorization parameters again, to run through authlib once more
    when the user has decided (the client may have been deleted meanwhile)."""
    params = [
        ("response_type", "code"),
        ("client_id", row.client_id),
        ("scope", row.scope),
        ("code_challenge", row.code_challenge),
        ("code_challenge_method", "S256"),
        ("resource", resource_uri),
    ]
    if row.redirect_uri_in_request:
        params.append(("redirect_uri", row.redirect_uri))
    for name in ("state", "nonce", "prompt"):
        value = getattr(row, name)
        if value:
            params.append((name, value))
    return params


def issue_code(server: OstiaryServer, db: Session, grant, user: User, *, scopes: list[str], auth_time: int, grant_id: int | None):
    req = grant.request
    req.scopes = scopes
    # authlib validates the request again inside create_authorization_response, which resolves
    # req.scopes anew from the request: the code is saved with granted_scopes instead.
    req.granted_scopes = scopes
    req.auth_time = auth_time
    req.grant_id = grant_id
    with using(db):
        return server.create_authorization_response(request=req, grant_user=user, grant=grant)


def deny(server: OstiaryServer, db: Session, grant, user: User | None, reason: str) -> RedirectResponse:
    req = grant.request
    audit.record(
        db,
        "consent.denied",
        user_id=user.id if user else None,
        username=user.username if user else None,
        client_id=req.client.client_id,
        resource=req.resource.uri,
        reason=reason,
    )
    error = AccessDeniedError(
        "The user denied the request." if reason == "user" else "The user may not grant any of the requested scopes.",
        redirect_uri=grant.redirect_uri,
        state=req.payload.state,
    )
    return RedirectResponse(error_redirect_url(error, server.issuer), status_code=302)


def prompt_error(server: OstiaryServer, grant, error_cls) -> RedirectResponse:
    error = error_cls(redirect_uri=grant.redirect_uri, state=grant.request.payload.state)
    return RedirectResponse(error_redirect_url(error, server.issuer), status_code=302)


def current_grant_scopes(db: Session, user: User, grant) -> tuple[int | None, set[str]]:
    row = grants_store.get(db, user.id, grant.request.client.client_id, grant.request.resource.id)
    return (row.id, set(row.scope.split())) if row else (None, set())
