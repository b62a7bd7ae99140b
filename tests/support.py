"""Helpers for tests: data set up through the app's own stores, and the browser steps a user
takes (sign in, consent) over HTTP."""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets
from urllib.parse import parse_qs, urlsplit

import httpx
from conftest import csrf_from

from app.models import Resource, ResourceScope, User
from app.security.passwords import hash_password
from app.stores import resources as resources_store
from app.stores import users as users_store

PASSWORD = "correct horse battery staple"
RESOURCE = "https://mcp.example.com/mcp"
REDIRECT = "http://127.0.0.1:9876/callback"


def create_user(runtime, username: str = "alice", password: str = PASSWORD, *, admin: bool = False, groups=None) -> User:
    with runtime.sessions() as db:
        user = users_store.add(
            db, User(username=username, password_hash=hash_password(password), is_admin=admin, groups=groups or [])
        )
        db.commit()
        return user


def create_resource(
    runtime,
    uri: str = RESOURCE,
    name: str = "Example MCP",
    scopes: dict[str, str] | None = None,
    defaults: tuple[str, ...] = ("mcp:read",),
    token_ttl: int | None = None,
    groups: dict[str, list[str]] | None = None,
) -> Resource:
    scopes = scopes or {"mcp:read": "Read your notes", "mcp:write": "Change your notes"}
    with runtime.sessions() as db:
        resource = resources_store.add(
            db,
            Resource(
                uri=uri,
                name=name,
                token_ttl=token_ttl,
                scopes=[
                    ResourceScope(
                        name=n, description=d, is_default=n in defaults, position=i, allowed_groups=(groups or {}).get(n)
                    )
                    for i, (n, d) in enumerate(scopes.items())
                ],
            ),
        )
        db.commit()
    runtime.invalidate_catalogue()
    return resource


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


async def register(client: httpx.AsyncClient, **metadata) -> dict:
    body = {"redirect_uris": [REDIRECT], "client_name": "Test MCP Client", "grant_types": ["authorization_code", "refresh_token"]}
    body.update(metadata)
    response = await client.post("/register", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def login(
    client: httpx.AsyncClient, username: str = "alice", password: str = PASSWORD, next_url: str = ""
) -> httpx.Response:
    page = await client.get("/login", params={"next": next_url} if next_url else None)
    return await client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": csrf_from(page.text), "next": next_url},
    )


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def authorize_params(client_id: str, challenge: str, **extra) -> dict:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": RESOURCE,
        "state": "st-" + secrets.token_hex(4),
    }
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


async def authorize(client: httpx.AsyncClient, params: dict, *, decision: str = "allow") -> httpx.Response:
    """Follow /authorize through sign-in (already done) and consent; return the response that
    redirects to the client (or the last page)."""
    response = await client.get("/authorize", params=params)
    for _ in range(5):
        location = response.headers.get("location", "")
        if response.status_code in (302, 303) and "/consent/" in location:
            page = await client.get(location)
            if page.status_code != 200:
                return page
            response = await client.post(location, data={"decision": decision, "csrf_token": csrf_from(page.text)})
            continue
        return response
    return response


async def obtain_code(client: httpx.AsyncClient, client_id: str, **extra) -> tuple[str, str, dict]:
    """(code, verifier, params) for a signed-in browser."""
    verifier, challenge = pkce()
    params = authorize_params(client_id, challenge, **extra)
    response = await authorize(client, params)
    assert response.status_code == 302, response.text
    q = query(response.headers["location"])
    assert "code" in q, q
    return q["code"], verifier, params


async def exchange(client: httpx.AsyncClient, client_id: str, code: str, verifier: str, **extra) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
    }
    data.update(extra)
    return await client.post("/token", data={k: v for k, v in data.items() if v is not None})


async def refresh(client: httpx.AsyncClient, client_id: str, refresh_token: str, **extra) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    data.update(extra)
    return await client.post("/token", data={k: v for k, v in data.items() if v is not None})


# -- protocol-test helpers (tests/test_rfc*.py, test_scopes, test_consent, test_redirect_uris) --


@functools.cache
def _alice_hash() -> str:
    return hash_password(PASSWORD)


async def registered_flow(client: httpx.AsyncClient, runtime, **metadata) -> dict:
    """The default resource and a registered client, nobody signed in (no password hashing:
    enough for requests that are refused before sign-in)."""
    create_resource(runtime)
    return await register(client, **metadata)


async def signed_in_flow(client: httpx.AsyncClient, runtime, **metadata) -> dict:
    """A user `alice`, the default resource, a registered client, and `client` signed in as alice.
    Returns the registration response."""
    with runtime.sessions() as db:  # as create_user, with the password hashed once per run
        users_store.add(db, User(username="alice", password_hash=_alice_hash(), is_admin=False, groups=[]))
        db.commit()
    create_resource(runtime)
    reg = await register(client, **metadata)
    response = await login(client)
    assert response.status_code == 303, response.text
    return reg


async def tokens_for(client: httpx.AsyncClient, client_id: str, *, auth=None, **authorize_extra) -> dict:
    """Run /authorize (signed-in browser) and the code exchange; return the token response."""
    code, verifier, _ = await obtain_code(client, client_id, **authorize_extra)
    if auth is None:
        response = await exchange(client, client_id, code, verifier)
    else:  # a confidential client: client_secret_basic
        data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT}
        response = await client.post("/token", data=data, auth=auth)
    assert response.status_code == 200, response.text
    return response.json()


async def verify_jwt(client: httpx.AsyncClient, token: str):
    """Decode and verify a JWT against the server's published /jwks (joserfc)."""
    from joserfc import jwt
    from joserfc.jwk import KeySet

    keys = KeySet.import_key_set((await client.get("/jwks")).json())
    return jwt.decode(token, keys)


def admin_client(runtime, *, confidential: bool = True, name: str = "Resource server") -> tuple[str, str | None]:
    """An operator-created client (e.g. a resource server's introspection credentials)."""
    from app.oauth.clients import create_admin_client

    with runtime.sessions() as db:
        row, secret = create_admin_client(db, runtime.keyring, name=name, redirect_uris=[REDIRECT], confidential=confidential)
        db.commit()
        return row.id, secret


async def introspect(client: httpx.AsyncClient, token: str, auth: tuple[str, str], **extra) -> httpx.Response:
    return await client.post("/introspect", data={"token": token, **extra}, auth=auth)


def audit_events(runtime, event: str) -> list:
    from sqlalchemy import select

    from app.models import AuditEvent

    with runtime.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.event == event).order_by(AuditEvent.id)))


# -- looking at everything the database holds (tests that no secret is stored in clear) -------


def database_rows(url: str) -> dict[str, list[tuple]]:
    """Every row of every table (alembic_version included), by table name."""
    from sqlalchemy import inspect, text

    from app.infra.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: sorted((tuple(row) for row in conn.execute(text(f'SELECT * FROM "{table}"'))), key=repr)
                for table in sorted(inspect(conn).get_table_names())
            }
    finally:
        engine.dispose()


def database_text(url: str) -> str:
    """The whole database as one string, to search for values that must not be stored."""
    return "\n".join(f"{table}: {row!r}" for table, rows in database_rows(url).items() for row in rows)


# -- admin console and account pages (tests/test_admin_console.py, test_account_mfa.py) -------


async def page_csrf(client: httpx.AsyncClient, path: str = "/account") -> str:
    """The CSRF token of this browser, from a page it can see."""
    page = await client.get(path)
    assert page.status_code == 200, (path, page.status_code, page.text[:300])
    return csrf_from(page.text)


async def submit(
    client: httpx.AsyncClient, path: str, data: dict | None = None, *, confirm: bool = False, csrf_page: str = "/account"
) -> httpx.Response:
    """POST a console or account form with this browser's CSRF token (and confirm=yes for the
    second step of a destructive action)."""
    body = {"csrf_token": await page_csrf(client, csrf_page), **(data or {})}
    if confirm:
        body["confirm"] = "yes"
    return await client.post(path, data=body)


def totp_code(secret: str, offset_steps: int = 0) -> str:
    """The RFC 6238 code of the current time step (or one before/after it)."""
    import time

    import pyotp

    totp = pyotp.TOTP(secret)
    return totp.generate_otp(totp.timecode(int(time.time())) + offset_steps)


def secret_from_page(html: str) -> str:
    import re

    match = re.search(r'id="totp-secret" data-secret="([A-Z2-7]+)"', html)
    assert match, "no TOTP secret on the enrolment page"
    return match.group(1)


def recovery_codes_from_page(html: str) -> list[str]:
    import re

    return re.findall(r"<li><code>([0-9a-f]{5}-[0-9a-f]{5})</code></li>", html)


async def enrol_totp(client: httpx.AsyncClient) -> tuple[str, list[str]]:
    """Turn on TOTP for the signed-in user; return (secret, recovery codes)."""
    page = await client.get("/account/mfa")
    assert page.status_code == 200, page.text
    secret = secret_from_page(page.text)
    response = await client.post("/account/mfa", data={"csrf_token": csrf_from(page.text), "code": totp_code(secret)})
    assert response.status_code == 200, response.text
    codes = recovery_codes_from_page(response.text)
    assert len(codes) == 10
    return secret, codes


def grant_rows(runtime) -> list:
    from sqlalchemy import select

    from app.models import Grant

    with runtime.sessions() as db:
        return list(db.scalars(select(Grant).order_by(Grant.id)))


def user_row(runtime, username: str):
    with runtime.sessions() as db:
        return users_store.by_username(db, username)


# -- client identification (tests/test_cimd.py, test_fetch_ssrf.py, test_quirks.py, ...) -----


async def signed_in(client: httpx.AsyncClient, runtime, **resource) -> None:
    """A user `alice`, the default resource (or `resource` keywords), and `client` signed in as
    alice; no client registered (Client ID Metadata Document tests)."""
    with runtime.sessions() as db:
        users_store.add(db, User(username="alice", password_hash=_alice_hash(), is_admin=False, groups=[]))
        db.commit()
    create_resource(runtime, **resource)
    response = await login(client)
    assert response.status_code == 303, response.text


def run_ostiary(database_url: str, *args: str, **env: str):
    """`ostiary ...` as an operator runs it (a subprocess), against the test database."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import ISSUER, ROOT, TEST_SECRET

    script = Path(sys.executable).with_name("ostiary")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OSTIARY_")}
    environ.update(
        PYTHONPATH=str(ROOT), OSTIARY_DATABASE_URL=database_url, OSTIARY_SECRET_KEYS=TEST_SECRET, OSTIARY_ISSUER=ISSUER, **env
    )
    return subprocess.run([*command, *args], env=environ, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
