"""The authorization endpoint's decision (RFC 6749 §4.1.1, OAuth 2.1 §4.1.1, OIDC Core §3.1.2).

`validate` runs the request through authlib and our rules: until the client and its redirect
URI are trusted an error is shown on a page; after that it goes back to the client with
`error`, `state` and `iss` (RFC 6749 §4.1.2.1, RFC 9207). `decide` is pure: from the valid
request, who is signed in, what they consented to before and what they just chose, the next
step, as one of the outcomes below. app/web/authorize.py renders the outcome; the effects it
needs (issue a code, record a denial) are the functions at the end of this module.

The decision table (docs/architecture.md has it with the pages around it):

| who / what                                            | outcome                       |
|-------------------------------------------------------|-------------------------------|
| nobody signed in, prompt=login not yet honoured, or a sign-in older than max_age | prompt=none: PromptError(login_required); else SignIn |
| the user chose Deny                                   | Deny("user")                  |
| the consent form must be shown again (expired form)   | AskConsent                    |
| the policy allows none of the resource scopes asked   | Deny("policy")                |
| the user chose Allow                                  | IssueCode(permitted, consent) |
| new scopes to consent to, or prompt=consent           | prompt=none: PromptError(consent_required); else AskConsent |
| the consent given before covers the request           | IssueCode(permitted)          |

A consent covers the scopes it holds and every scope they include (docs/decisions.md#scope-hierarchy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from authlib.oauth2.rfc6749 import AccessDeniedError, OAuth2Error
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import AuthorizationRequest, User
from app.oauth import scopes as scope_policy
from app.oauth.authorization_code import AuthorizationCodeGrant
from app.oauth.catalogue import ResourceInfo
from app.oauth.clients import OAuthClient
from app.oauth.errors import ConsentRequiredError, LoginRequiredError, error_redirect_url
from app.oauth.server import OstiaryServer, Request, using
from app.security.secrets import Keyring, new_token
from app.services import audit
from app.stores import requests as requests_store


@dataclass(frozen=True)
class Validated:
    """A valid authorization request."""

    handler: AuthorizationCodeGrant  # authlib's grant object for it: it issues the code
    redirect_uri: str

    @property
    def request(self) -> Request:
        return self.handler.request

    @property
    def client(self) -> OAuthClient:
        client: OAuthClient = self.handler.request.client
        return client

    @property
    def resource(self) -> ResourceInfo:
        return self.handler.request.resource

    @property
    def scopes(self) -> list[str]:
        return self.handler.request.scopes

    @property
    def prompts(self) -> frozenset[str]:
        return self.handler.request.prompts

    @property
    def max_age(self) -> int | None:
        return self.handler.request.max_age


# -- outcomes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShowError:
    """The client or its redirect URI cannot be trusted: say so on a page, never redirect."""

    error: OAuth2Error


@dataclass(frozen=True)
class RedirectError:
    """An error for the client's registered redirect URI (RFC 6749 §4.1.2.1). Before anyone has
    signed in it goes there only if the client is trusted: anyone can register a client or
    publish a metadata document whose redirect URI is a phishing page, and an automatic
    redirect would let Ostiary's host launder the link (RFC 9700 §4.11.2;
    docs/decisions.md#errors-of-self-registered-clients-stay-on-ostiary-until-sign-in)."""

    url: str
    client: OAuthClient | None
    redirect_uri: str
    error: OAuth2Error

    def may_redirect(self, signed_in: bool) -> bool:
        return signed_in or (self.client is not None and self.client.row.is_trusted)


@dataclass(frozen=True)
class PromptError:
    """prompt=none, and the user would have to act: login_required or consent_required (OIDC
    Core §3.1.2.6), by redirect."""

    error: type[OAuth2Error]


@dataclass(frozen=True)
class SignIn:
    force: bool  # prompt=login: a fresh sign-in even with a session


@dataclass(frozen=True)
class AskConsent:
    already: list[str]  # granted before, shown as such
    new: list[str]  # what the user is asked for
    refused: list[str]  # asked for, but the policy does not allow them for this user


@dataclass(frozen=True)
class IssueCode:
    scopes: list[str]
    record_consent: bool  # the user just allowed: merge these scopes into the consent


@dataclass(frozen=True)
class Deny:
    reason: Literal["user", "policy"]


Outcome = PromptError | SignIn | AskConsent | IssueCode | Deny
Decision = Literal["allow", "deny", "show"]  # "show": the consent page again (a form to redo)


def validate(server: OstiaryServer, db: Session, req: Request) -> Validated | ShowError | RedirectError:
    """authlib's validation with our rules (app/oauth/authorization_code.py, pkce.py). A client
    metadata document may be fetched: the caller commits what that wrote."""
    with using(db, fetch_documents=True):
        try:
            handler = server.get_consent_grant(req)
        except OAuth2Error as error:
            if error.redirect_uri:
                client = getattr(req, "client", None)
                return RedirectError(error_redirect_url(error, server.issuer), client, error.redirect_uri, error)
            return ShowError(error)
    return Validated(handler, handler.redirect_uri)


def decide(
    *,
    prompts: frozenset[str],
    scopes: list[str],
    resource: ResourceInfo,
    user: User | None,
    auth_time: int | None,
    requested_at: int | None,
    consented: set[str],
    decision: Decision | None = None,
    max_age: int | None = None,
    now_: int = 0,
) -> Outcome:
    """The next step for a valid request asking for `scopes` of `resource`. `requested_at` is
    when a stored request was made (None on /authorize itself), `consented` the scopes of the
    user's earlier consent to this client and resource, `now_` the current time."""
    # OIDC Core §3.1.2.1 prompt=login: a sign-in after this request, even with a session.
    stale = "login" in prompts and (requested_at is None or auth_time is None or auth_time < requested_at)
    # OIDC Core §3.1.2.1 max_age: the sign-in may be at most max_age seconds older than the
    # request (a sign-in after a stored request was made always satisfies it).
    too_old = max_age is not None and (auth_time is None or auth_time + max_age < (requested_at or now_))
    if user is None or stale or too_old:
        if "none" in prompts:
            return PromptError(LoginRequiredError)
        return SignIn(force="login" in prompts or too_old)
    if decision == "deny":
        return Deny("user")
    allowed = scope_policy.permitted(scopes, resource, user.groups)
    # A scope consented to covers the scopes it includes (`mcp:write` covers `mcp:read`): the
    # user already allowed them, so they are not asked again; the code still carries only what
    # was requested (MCP 2026-07-28 authorization, Step-Up Authorization Flow: scope
    # hierarchies; docs/decisions.md#scope-hierarchy).
    covered = resource.covered(consented)
    ask = AskConsent(
        already=[s for s in allowed if s in covered],
        new=[s for s in allowed if s not in covered],
        refused=[s for s in scopes if s not in allowed],
    )
    if decision == "show":
        return ask
    if scope_policy.refuses_all(scopes, allowed):
        return Deny("policy")
    if decision == "allow":
        return IssueCode(allowed, record_consent=True)
    if ask.new or "consent" in prompts:
        if "none" in prompts:
            return PromptError(ConsentRequiredError)
        return ask
    return IssueCode(allowed, record_consent=False)


# -- the effects of an outcome -------------------------------------------------------------------


def prompt_error(server: OstiaryServer, v: Validated, outcome: PromptError) -> RedirectError:
    """login_required or consent_required for the client; the caller decides whether it may
    redirect (login_required comes before any sign-in)."""
    error = outcome.error(redirect_uri=v.redirect_uri, state=v.request.payload.state)
    return RedirectError(error_redirect_url(error, server.issuer), v.client, v.redirect_uri, error)


def issue_code(
    server: OstiaryServer, db: Session, v: Validated, user: User, *, scopes: list[str], auth_time: int, consent_id: int | None
) -> RedirectResponse:
    """RFC 6749 §4.1.2: a code for the scopes the user holds, to the redirect URI."""
    req = v.request
    req.scopes, req.auth_time, req.consent_id = scopes, auth_time, consent_id
    with using(db):
        status, body, headers = v.handler.create_authorization_response(v.redirect_uri, user)
    response = server.handle_response(status, body, headers)
    assert isinstance(response, RedirectResponse)
    return response


def deny(server: OstiaryServer, db: Session, v: Validated, user: User, reason: Literal["user", "policy"]) -> RedirectResponse:
    """RFC 6749 §4.1.2.1 access_denied, recorded."""
    audit.record(
        db,
        "consent.denied",
        user_id=user.id,
        username=user.username,
        client_id=v.client.client_id,
        resource=v.resource.uri,
        reason=reason,
    )
    description = "The user denied the request." if reason == "user" else "The user may not grant any of the requested scopes."
    error = AccessDeniedError(description, redirect_uri=v.redirect_uri, state=v.request.payload.state)
    return RedirectResponse(error_redirect_url(error, server.issuer), status_code=302)


# -- a request waiting for sign-in and consent ----------------------------------------------------


def store_request(db: Session, keyring: Keyring, ttl: int, v: Validated) -> str:
    """Keep the valid request until the user has signed in and decided; return the opaque handle
    the browser carries (only its HMAC is stored), so that the sign-in and consent pages are
    pages of their own that survive a reload
    (docs/decisions.md#pending-authorization-requests-are-kept-on-the-server)."""
    handle = new_token()
    req = v.request
    data = req.payload.data
    t = now()
    requests_store.add(
        db,
        AuthorizationRequest(
            id_hash=keyring.hash(handle),
            client_id=v.client.client_id,
            redirect_uri=v.redirect_uri,
            redirect_uri_in_request=bool(req.payload.redirect_uri),
            resource_id=v.resource.id,
            scope=" ".join(v.scopes),
            state=data.get("state"),
            code_challenge=data["code_challenge"],
            nonce=data.get("nonce"),
            prompt=" ".join(sorted(v.prompts)) or None,
            max_age=v.max_age,
            created_at=t,
            expires_at=t + ttl,
        ),
    )
    return handle


def stored_params(row: AuthorizationRequest, resource_uri: str) -> list[tuple[str, str]]:
    """The stored request as authorization parameters again, to validate once more when the
    user comes back (the client may have been deleted or changed meanwhile)."""
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
    if row.max_age is not None:
        params.append(("max_age", str(row.max_age)))
    return params
