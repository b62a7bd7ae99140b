"""Consent (docs/decisions.md#consent-is-incremental-and-shows-only-what-is-new): what the
consent page shows, how Allow merges into the grant, when the page is skipped, Deny, CSRF,
reloads and double submissions, `prompt` (OIDC Core 3.1.2.1), and the audit trail."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select, text

from app.models import AuthorizationCode, Consent
from app.services.clients import create_admin_client
from tests.support import (
    ISSUER,
    PASSWORD,
    REDIRECT,
    RESOURCE,
    audit_events,
    authorize_params,
    create_user,
    csrf_from,
    exchange,
    login,
    pkce,
    query,
    registered_flow,
    signed_in_flow,
    tokens_for,
    verify_jwt,
)

pytestmark = pytest.mark.anyio

SCOPE_ITEM = re.compile(r'data-scope="([^"]+)"\s+data-scope-status="([^"]+)"')


def scope_items(html: str) -> dict[str, str]:
    return dict(SCOPE_ITEM.findall(html))


async def consent_location(client, client_id: str, **extra) -> tuple[str, dict, str]:
    """Start an authorization request that needs the consent page: (its path, params, verifier)."""
    verifier, challenge = pkce()
    params = authorize_params(client_id, challenge, **extra)
    response = await client.get("/authorize", params=params)
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith("/consent/"), location
    return location, params, verifier


async def decide(client, location: str, decision: str = "allow"):
    page = await client.get(location)
    assert page.status_code == 200, page.text
    return await client.post(location, data={"decision": decision, "csrf_token": csrf_from(page.text)})


def grant_scope(runtime, client_id: str) -> str | None:
    with runtime.sessions() as db:
        row = db.scalar(select(Consent).where(Consent.client_id == client_id))
        return row.scope if row else None


def code_count(runtime) -> int:
    with runtime.sessions() as db:
        return db.scalar(select(func.count()).select_from(AuthorizationCode))


# -- the page -------------------------------------------------------------------------------------


async def test_consent_page_shows_who_asks_for_what(client, runtime):
    """docs/decisions.md#consent-is-incremental-and-shows-only-what-is-new: client name,
    "unverified" for a dynamically registered client (RFC 7591 metadata is self-asserted), the
    redirect host, the MCP server's name and URI, each scope with its description and data-scope /
    data-scope-status."""
    reg = await signed_in_flow(client, runtime, client_name="Notes Helper")
    location, _, _ = await consent_location(client, reg["client_id"], scope="mcp:read mcp:write")
    page = await client.get(location)
    assert page.status_code == 200
    html = page.text
    assert "Notes Helper" in html
    assert "unverified" in html
    assert "127.0.0.1:9876" in html  # the redirect URI's host
    assert "Example MCP" in html and RESOURCE in html
    assert "Read your notes" in html and "Change your notes" in html
    assert scope_items(html) == {"mcp:read": "new", "mcp:write": "new"}
    assert 'value="allow"' in html and 'value="deny"' in html
    assert 'name="csrf_token"' in html


async def test_consent_page_is_protected(client, runtime):
    """RFC 6749 10.13 / RFC 9700 4.16 (clickjacking): frame-ancestors 'none'; no-store."""
    reg = await signed_in_flow(client, runtime)
    location, _, _ = await consent_location(client, reg["client_id"])
    page = await client.get(location)
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"


async def test_operator_client_is_not_marked_unverified(client, runtime):
    """Only self-registered (DCR) clients carry the "unverified" mark
    (docs/decisions.md#consent-is-incremental-and-shows-only-what-is-new)."""
    await signed_in_flow(client, runtime)
    with runtime.sessions() as db:
        row, _ = create_admin_client(db, runtime.keyring, name="Company Assistant", redirect_uris=[REDIRECT], confidential=False)
        db.commit()
    location, _, _ = await consent_location(client, row.id)
    html = (await client.get(location)).text
    assert "Company Assistant" in html
    assert "unverified" not in html


async def test_consent_page_escapes_client_name(client, runtime):
    """A self-asserted client_name is text, never markup."""
    reg = await signed_in_flow(client, runtime, client_name="<script>alert(1)</script>")
    location, _, _ = await consent_location(client, reg["client_id"])
    html = (await client.get(location)).text
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html


async def test_consent_page_survives_reload(client, runtime):
    """The pending request is persisted, so the page can be reloaded
    (docs/decisions.md#pending-authorization-requests-are-kept-on-the-server)."""
    reg = await signed_in_flow(client, runtime)
    location, params, verifier = await consent_location(client, reg["client_id"])
    first = await client.get(location)
    second = await client.get(location)
    assert first.status_code == second.status_code == 200
    assert scope_items(first.text) == scope_items(second.text) == {"mcp:read": "new"}
    response = await client.post(location, data={"decision": "allow", "csrf_token": csrf_from(second.text)})
    assert response.status_code == 302
    q = query(response.headers["location"])
    assert q["state"] == params["state"]
    assert (await exchange(client, reg["client_id"], q["code"], verifier)).status_code == 200


# -- Allow, merge and skip ----------------------------------------------------------------------


async def test_allow_issues_code_and_records_grant(client, runtime):
    """OAuth 2.1 4.1.2: code, state and iss (RFC 9207) on the redirect; the grant is stored."""
    reg = await signed_in_flow(client, runtime)
    location, params, _ = await consent_location(client, reg["client_id"], scope="mcp:read")
    response = await decide(client, location)
    assert response.status_code == 302
    assert response.headers["location"].startswith(REDIRECT + "?")
    q = query(response.headers["location"])
    assert q["code"] and q["state"] == params["state"] and q["iss"] == ISSUER
    assert grant_scope(runtime, reg["client_id"]) == "mcp:read"
    [event] = audit_events(runtime, "consent.granted")
    assert event.client_id == reg["client_id"] and event.resource == RESOURCE
    assert event.details["scope"] == "mcp:read"


async def test_incremental_consent_asks_only_for_the_new_scope(client, runtime):
    """docs/decisions.md#consent-is-incremental-and-shows-only-what-is-new: the consent screen
    shows what is already granted and asks only for what is new; approving merges."""
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read")
    location, _, verifier = await consent_location(client, reg["client_id"], scope="mcp:read mcp:write")
    page = await client.get(location)
    assert scope_items(page.text) == {"mcp:read": "granted", "mcp:write": "new"}
    response = await client.post(location, data={"decision": "allow", "csrf_token": csrf_from(page.text)})
    code = query(response.headers["location"])["code"]
    body = (await exchange(client, reg["client_id"], code, verifier)).json()
    assert body["scope"] == "mcp:read mcp:write"
    assert grant_scope(runtime, reg["client_id"]) == "mcp:read mcp:write"


async def test_allow_merges_rather_than_replaces(client, runtime):
    """A grant accumulates; asking for a new scope alone does not drop the old one
    (docs/decisions.md#consent-is-incremental-and-shows-only-what-is-new)."""
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read")
    location, _, _ = await consent_location(client, reg["client_id"], scope="mcp:write")
    page = await client.get(location)
    assert scope_items(page.text) == {"mcp:write": "new"}
    await client.post(location, data={"decision": "allow", "csrf_token": csrf_from(page.text)})
    assert grant_scope(runtime, reg["client_id"]) == "mcp:read mcp:write"


@pytest.mark.parametrize(
    "scope",
    [
        pytest.param("mcp:read mcp:write", id="the same scopes"),
        pytest.param("mcp:write", id="a subset"),
        pytest.param(None, id="defaults, already granted"),
    ],
)
async def test_consent_skipped_when_everything_is_granted(client, runtime, scope):
    """If every requested scope is already granted and prompt does not demand consent, the page
    is skipped (docs/decisions.md#consent-is-incremental-and-shows-only-what-is-new)."""
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read mcp:write")
    params = authorize_params(reg["client_id"], pkce()[1], scope=scope)
    response = await client.get("/authorize", params=params)
    assert response.status_code == 302, response.text
    q = query(response.headers["location"])
    assert q["code"] and q["state"] == params["state"] and q["iss"] == ISSUER


async def test_prompt_consent_shows_the_page_anyway(client, runtime):
    """OIDC Core 3.1.2.1 prompt=consent: ask again, everything shown as already granted."""
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read")
    location, _, _ = await consent_location(client, reg["client_id"], scope="mcp:read", prompt="consent")
    page = await client.get(location)
    assert scope_items(page.text) == {"mcp:read": "granted"}
    response = await client.post(location, data={"decision": "allow", "csrf_token": csrf_from(page.text)})
    assert "code" in query(response.headers["location"])


# -- Deny ------------------------------------------------------------------------------------------


async def test_deny_returns_access_denied(client, runtime):
    """RFC 6749 4.1.2.1: access_denied, with state and iss (RFC 9207); nothing is granted."""
    reg = await signed_in_flow(client, runtime)
    location, params, _ = await consent_location(client, reg["client_id"])
    response = await decide(client, location, "deny")
    assert response.status_code == 302
    assert response.headers["location"].startswith(REDIRECT + "?")
    q = query(response.headers["location"])
    assert q["error"] == "access_denied"
    assert q["state"] == params["state"] and q["iss"] == ISSUER
    assert "code" not in q
    assert grant_scope(runtime, reg["client_id"]) is None
    assert code_count(runtime) == 0
    [event] = audit_events(runtime, "consent.denied")
    assert event.client_id == reg["client_id"] and event.details["reason"] == "user"


async def test_deny_of_step_up_keeps_the_earlier_grant(client, runtime):
    """Denying a step-up changes nothing already granted
    (docs/decisions.md#consent-is-incremental-and-shows-only-what-is-new)."""
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read")
    location, _, _ = await consent_location(client, reg["client_id"], scope="mcp:read mcp:write")
    response = await decide(client, location, "deny")
    assert query(response.headers["location"])["error"] == "access_denied"
    assert grant_scope(runtime, reg["client_id"]) == "mcp:read"


# -- CSRF, replays ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="no CSRF token"),
        pytest.param("forged", id="forged CSRF token"),
        pytest.param("OTHER_BROWSER", id="another browser's CSRF token"),
    ],
)
async def test_consent_requires_csrf(client, runtime, new_client, token):
    """RFC 6749 10.12: a CSRF token on every form; without it, no code and no grant."""
    reg = await signed_in_flow(client, runtime)
    location, _, _ = await consent_location(client, reg["client_id"])
    page = await client.get(location)
    data = {"decision": "allow"}
    if token == "OTHER_BROWSER":
        other = new_client()
        data["csrf_token"] = csrf_from((await other.get("/login")).text)
    elif token is not None:
        data["csrf_token"] = token
    response = await client.post(location, data=data)
    assert response.status_code == 400
    assert "location" not in response.headers
    assert grant_scope(runtime, reg["client_id"]) is None and code_count(runtime) == 0
    # the request survives: the user can still decide with the page's own token
    response = await client.post(location, data={"decision": "allow", "csrf_token": csrf_from(page.text)})
    assert response.status_code == 302 and "code" in query(response.headers["location"])


async def test_consent_form_submitted_twice_issues_one_code(client, runtime):
    """RFC 6749 4.1.2: one authorization, one code: a second submission is refused."""
    reg = await signed_in_flow(client, runtime)
    location, _, _ = await consent_location(client, reg["client_id"])
    page = await client.get(location)
    data = {"decision": "allow", "csrf_token": csrf_from(page.text)}
    first = await client.post(location, data=data)
    second = await client.post(location, data=data)
    assert first.status_code == 302 and "code" in query(first.headers["location"])
    assert second.status_code in (400, 404)
    assert "location" not in second.headers
    assert code_count(runtime) == 1


async def test_consent_handle_of_unknown_request(client, runtime):
    """RFC 6749 4.1.2.1: an unknown request handle gets a page, never a redirect."""
    await signed_in_flow(client, runtime)
    response = await client.get("/consent/not-a-real-handle")
    assert response.status_code == 404
    assert "location" not in response.headers


# -- prompt (OIDC Core 3.1.2.1 / 3.1.2.6) -----------------------------------------------------------


async def test_prompt_none_signed_out_is_login_required(client, runtime):
    """OIDC Core 3.1.2.1 / 3.1.2.6: prompt=none and no session: login_required."""
    reg = await registered_flow(client, runtime)
    params = authorize_params(reg["client_id"], pkce()[1], prompt="none")
    response = await client.get("/authorize", params=params)
    assert response.status_code == 302
    q = query(response.headers["location"])
    assert q["error"] == "login_required" and q["state"] == params["state"] and q["iss"] == ISSUER


async def test_prompt_none_without_grant_is_consent_required(client, runtime):
    """OIDC Core 3.1.2.6: prompt=none and consent needed: consent_required."""
    reg = await signed_in_flow(client, runtime)
    params = authorize_params(reg["client_id"], pkce()[1], prompt="none")
    response = await client.get("/authorize", params=params)
    assert response.status_code == 302
    q = query(response.headers["location"])
    assert q["error"] == "consent_required" and q["state"] == params["state"] and q["iss"] == ISSUER


async def test_prompt_none_with_grant_issues_code(client, runtime):
    """OIDC Core 3.1.2.1: prompt=none succeeds silently when nothing needs asking."""
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read")
    response = await client.get("/authorize", params=authorize_params(reg["client_id"], pkce()[1], prompt="none"))
    assert response.status_code == 302
    assert "code" in query(response.headers["location"])


async def test_prompt_none_with_step_up_is_consent_required(client, runtime):
    """OIDC Core 3.1.2.6: a new scope needs consent, which prompt=none forbids."""
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read")
    params = authorize_params(reg["client_id"], pkce()[1], prompt="none", scope="mcp:read mcp:write")
    response = await client.get("/authorize", params=params)
    assert query(response.headers["location"])["error"] == "consent_required"


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param("none consent", id="none combined with another value (OIDC Core 3.1.2.1)"),
        pytest.param("bogus", id="unknown value"),
    ],
)
async def test_bad_prompt_is_invalid_request(client, runtime, prompt):
    """OIDC Core 3.1.2.1: prompt values, and none alone."""
    reg = await registered_flow(client, runtime)
    response = await client.get("/authorize", params=authorize_params(reg["client_id"], pkce()[1], prompt=prompt))
    assert response.status_code == 302
    q = query(response.headers["location"])
    assert q["error"] == "invalid_request" and q["iss"] == ISSUER


async def test_signed_out_user_signs_in_then_consents(client, runtime):
    """Not signed in -> /login, then back to the request
    (docs/decisions.md#pending-authorization-requests-are-kept-on-the-server)."""
    reg = await registered_flow(client, runtime)
    create_user(runtime)
    params = authorize_params(reg["client_id"], pkce()[1])
    response = await client.get("/authorize", params=params)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")
    next_url = query(response.headers["location"])["next"]
    assert next_url.startswith("/consent/")
    signed_in = await login(client, next_url=next_url)
    assert signed_in.status_code == 303 and signed_in.headers["location"] == next_url
    response = await decide(client, next_url)
    assert query(response.headers["location"])["state"] == params["state"]


async def test_prompt_login_forces_a_fresh_sign_in(client, runtime):
    """OIDC Core 3.1.2.1 prompt=login: reauthenticate even with a session and a grant; the new
    sign-in's time becomes the token's auth_time (RFC 9068 2.2.1)."""
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read")
    with runtime.engine.begin() as conn:  # the session signed in two minutes ago
        conn.execute(text("UPDATE browser_sessions SET auth_time = auth_time - 120"))
    verifier, challenge = pkce()
    params = authorize_params(reg["client_id"], challenge, prompt="login")
    response = await client.get("/authorize", params=params)
    assert response.status_code == 303
    login_url = response.headers["location"]
    assert login_url.startswith("/login?") and query(login_url)["prompt"] == "login"
    next_url = query(login_url)["next"]
    # the old session does not get past the request without signing in again
    skipped = await client.get(next_url)
    assert skipped.status_code == 303 and skipped.headers["location"].startswith("/login?")
    form = await client.get(login_url)
    assert form.status_code == 200 and 'name="password"' in form.text
    signed_in = await client.post(
        "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_from(form.text), "next": next_url}
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == next_url
    response = await client.get(next_url)  # the grant covers it: no consent page
    assert response.status_code == 302, response.text
    q = query(response.headers["location"])
    assert q["state"] == params["state"]
    body = (await exchange(client, reg["client_id"], q["code"], verifier)).json()
    claims = (await verify_jwt(client, body["access_token"])).claims
    assert claims["iat"] - claims["auth_time"] < 60


async def test_max_age_older_than_the_sign_in_asks_to_sign_in_again(client, runtime):
    """OIDC Core §3.1.2.1 max_age: a session signed in longer ago than max_age must sign in
    again; within it, the code comes straight back."""
    reg = await signed_in_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read")
    _, challenge = pkce()
    fresh = await client.get("/authorize", params=authorize_params(reg["client_id"], challenge, max_age="300"))
    assert fresh.status_code == 302 and "code" in query(fresh.headers["location"])
    with runtime.engine.begin() as conn:  # the session signed in ten minutes ago
        conn.execute(text("UPDATE browser_sessions SET auth_time = auth_time - 600"))
    params = authorize_params(reg["client_id"], challenge, max_age="300")
    response = await client.get("/authorize", params=params)
    assert response.status_code == 303 and response.headers["location"].startswith("/login?")
    login_url = response.headers["location"]
    assert query(login_url)["prompt"] == "login"
    next_url = query(login_url)["next"]
    assert (await client.get(next_url)).headers["location"].startswith("/login?")  # not past it
    form = await client.get(login_url)
    signed_in = await client.post(
        "/login", data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_from(form.text), "next": next_url}
    )
    assert signed_in.headers["location"] == next_url
    back = await client.get(next_url)
    assert back.status_code == 302 and "code" in query(back.headers["location"])
    with runtime.engine.begin() as conn:
        conn.execute(text("UPDATE browser_sessions SET auth_time = auth_time - 5"))
    none = await client.get("/authorize", params=authorize_params(reg["client_id"], challenge, max_age="0", prompt="none"))
    assert query(none.headers["location"])["error"] == "login_required"


@pytest.mark.parametrize(
    "extra, error",
    [
        pytest.param({"max_age": "-1"}, "invalid_request", id="max_age negative"),
        pytest.param({"max_age": "soon"}, "invalid_request", id="max_age not a number"),
        pytest.param({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported", id="request object (OIDC Core 6)"),
        pytest.param(
            {"request_uri": "https://client.example/req.jwt"}, "request_uri_not_supported", id="request_uri (OIDC Core 6)"
        ),
    ],
)
async def test_unsupported_oidc_parameters_are_refused_not_ignored(client, runtime, extra, error):
    """OIDC Core §3.1.2.6 / §6: a request object the server does not support is refused with
    its own error (a client may have moved parameters into it); max_age must be seconds."""
    reg = await registered_flow(client, runtime)
    _, challenge = pkce()
    response = await client.get("/authorize", params=authorize_params(reg["client_id"], challenge, **extra))
    assert response.status_code == 302 and response.headers["location"].startswith(REDIRECT)
    assert query(response.headers["location"])["error"] == error


async def test_consent_audit_events_hold_no_secrets(client, runtime):
    """Audit events carry identifiers, never a code or token
    (docs/decisions.md#bearer-secrets-are-stored-as-keyed-hmacs)."""
    reg = await signed_in_flow(client, runtime)
    location, _, _ = await consent_location(client, reg["client_id"])
    response = await decide(client, location)
    code = query(response.headers["location"])["code"]
    location, _, _ = await consent_location(client, reg["client_id"], scope="mcp:write")
    await decide(client, location, "deny")
    events = audit_events(runtime, "consent.granted") + audit_events(runtime, "consent.denied")
    assert len(events) == 2
    for event in events:
        assert code not in repr(event.details)
        assert event.user_id and event.username == "alice"
