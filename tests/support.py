"""Everything the tests share, in one place: constants, throwaway databases, settings, the
`ostiary` command as an operator runs it, data set up through the app's own stores, and the
steps a browser and an MCP client take over HTTP (sign in, consent, code, tokens).

The HTTP helpers take an optional `base` URL prefix: "" for a client whose base_url is the
issuer (the in-process app of tests/conftest.py), or a server's URL for a client without one
(the real `ostiary serve` replicas of tests/e2e/replicas.py).

tests/conftest.py holds the pytest hooks and fixtures; the end-to-end process management lives
in tests/e2e/ (servers.py, replicas.py, cimd_stack.py) and the test CA and document server in
tests/tls_documents.py."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import NoReturn
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from app.models import Resource, ResourceScope, User
from app.security.passwords import hash_password
from app.settings import Settings
from app.stores import clients as clients_store
from app.stores import resources as resources_store
from app.stores import users as users_store

# -- constants -------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET = "test-secret-key-0123456789abcdef0123456789abcdef"
ISSUER = "http://127.0.0.1:8000"
PG_URL = os.environ.get("OSTIARY_TEST_DATABASE_URL", "")
IN_CI = os.environ.get("CI") == "true"

USERNAME = "alice"
PASSWORD = "correct horse battery staple"
RESOURCE = "https://mcp.example.com/mcp"
REDIRECT = "http://127.0.0.1:9876/callback"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')

# Tables emptied before every test (signing keys are kept: generating RSA keys is slow).
KEEP_TABLES = frozenset({"alembic_version", "signing_keys"})

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def unique(prefix: str = "x") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def unavailable(reason: str) -> NoReturn:
    """What a test needs is not here: the test is skipped, or fails in CI (which has it all)."""
    if IN_CI:
        pytest.fail(f"{reason} (in CI)")
    pytest.skip(reason)


def chromium_or_skip() -> str:
    """The path of the Chromium the browser tests drive."""
    if not Path(CHROMIUM).exists():
        unavailable(f"{CHROMIUM} is missing")
    return CHROMIUM


# -- databases -------------------------------------------------------------------------------


def psycopg_url(url: str) -> str:
    """postgresql://... as SQLAlchemy's psycopg (3) dialect URL."""
    return "postgresql+psycopg://" + url.split("://", 1)[1]


@contextmanager
def postgres_database(server_url: str, prefix: str, *, exit_in_ci: bool = False) -> Iterator[str]:
    """A new database on the PostgreSQL server that `server_url` (postgresql://user@host:port/db)
    names, dropped afterwards; its URL. An unreachable server skips the test, or fails it in CI
    (`exit_in_ci`: ends the whole run, for the session database)."""
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(
        psycopg_url(server_url), isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 5}
    )
    try:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            if IN_CI and exit_in_ci:
                pytest.exit(f"PostgreSQL at {server_url} is unreachable in CI: {exc}", returncode=1)
            unavailable(f"PostgreSQL at {server_url} is unreachable: {exc}")
        try:
            yield f"{server_url.rsplit('/', 1)[0]}/{name}"
        finally:
            # A new connection per attempt (NullPool): a test may have restarted the server,
            # which may still be coming back.
            for attempt in range(50):
                try:
                    with admin.connect() as conn:
                        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                    break
                except Exception:
                    if attempt == 49:
                        raise
                    time.sleep(0.2)
    finally:
        admin.dispose()


@contextmanager
def empty_database(directory: Path, prefix: str = "ostiary_empty") -> Iterator[str]:
    """A new, empty database on the configured server: an SQLite file in `directory`, or a
    throwaway PostgreSQL database (OSTIARY_TEST_DATABASE_URL) dropped afterwards."""
    if not PG_URL:
        yield f"sqlite:///{directory / f'{prefix}-{secrets.token_hex(3)}.db'}"
        return
    with postgres_database(PG_URL, prefix) as url:
        yield url


def sql(database: str | Settings, statement: str, **params):
    """Run one statement on the database at `database` (a URL, or the settings naming it), in a
    transaction of its own: the rows of a SELECT, else the number of rows changed."""
    from app.infra.db import make_engine

    url = database.database_url.get_secret_value() if isinstance(database, Settings) else database
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(statement), params)
            return result.all() if result.returns_rows else result.rowcount
    finally:
        engine.dispose()


def execute(url: str, *statements: str) -> None:
    """Run statements in one transaction on the database at `url`."""
    from app.infra.db import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def database_rows(url: str) -> dict[str, list[tuple]]:
    """Every row of every table (alembic_version included), by table name."""
    from sqlalchemy import inspect

    from app.infra.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {
                table: sorted(
                    (tuple(row) for row in conn.execute(text(f'SELECT * FROM "{table}"'))),  # noqa: S608 (the database's table names)
                    key=repr,
                )
                for table in sorted(inspect(conn).get_table_names())
            }
    finally:
        engine.dispose()


def database_text(url: str) -> str:
    """The whole database as one string, to search for values that must not be stored."""
    return "\n".join(f"{table}: {row!r}" for table, rows in database_rows(url).items() for row in rows)


# -- settings and processes ------------------------------------------------------------------


def make_settings(database_url: str, **overrides) -> Settings:
    values = dict(issuer=ISSUER, database_url=database_url, secret_keys=TEST_SECRET)
    values.update(overrides)
    return Settings(**values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any OSTIARY_* setting of the developer's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OSTIARY_")}
    env.update(extra)
    return env


# `ostiary` as installed next to this Python (or the module, where the script is missing).
_SCRIPT = Path(sys.executable).with_name("ostiary")
OSTIARY = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "app.cli"]


def cli_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of an `ostiary` process on `database_url`: this checkout's `app` first on
    the path, the test keyring, no OSTIARY_* of the developer's."""
    return clean_env(
        **{"PYTHONPATH": str(ROOT), "OSTIARY_DATABASE_URL": database_url, "OSTIARY_SECRET_KEYS": TEST_SECRET, **extra}
    )


def run_ostiary(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`ostiary ...` as an operator runs it (a subprocess), against the test database."""
    return subprocess.run(
        [*OSTIARY, *args],
        env=cli_env(database_url, **{"OSTIARY_ISSUER": ISSUER, **env}),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def redis_problem(url: str, timeout: float = 2) -> str | None:
    """Why the Redis at `url` cannot be used here, or None."""
    import redis

    probe = redis.Redis.from_url(url, socket_timeout=timeout)
    try:
        probe.ping()
    except Exception as exc:
        return f"Redis at {url} is unreachable: {exc}"
    finally:
        probe.close()
    return None


# -- data, through the app's own stores ------------------------------------------------------


@functools.cache
def _alice_hash() -> str:
    return hash_password(PASSWORD)


def create_user(runtime, username: str = USERNAME, password: str = PASSWORD, *, admin: bool = False, groups=None) -> User:
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


def admin_client(
    runtime,
    *,
    confidential: bool = True,
    name: str = "Resource server",
    redirect_uris: list[str] | None = None,
    resource: str | None = RESOURCE,
    introspect_any: bool = False,
) -> tuple[str, str | None]:
    """An operator-created client: by default the credentials of the MCP server at `resource`
    (if it is registered yet), which may introspect that server's tokens."""
    from app.services import resources as resource_service
    from app.services.clients import create_admin_client

    with runtime.sessions() as db:
        server = resource_service.find(db, resource) if resource else None
        row, secret = create_admin_client(
            db,
            runtime.keyring,
            name=name,
            redirect_uris=redirect_uris or [REDIRECT],
            confidential=confidential,
            resource_id=server.id if server else None,
            introspect_any=introspect_any,
        )
        db.commit()
        return row.id, secret


def audit_events(runtime, event: str) -> list:
    from sqlalchemy import select

    from app.models import AuditEvent

    with runtime.sessions() as db:
        return list(db.scalars(select(AuditEvent).where(AuditEvent.event == event).order_by(AuditEvent.id)))


def grant_rows(runtime) -> list:
    from sqlalchemy import select

    from app.models import Consent

    with runtime.sessions() as db:
        return list(db.scalars(select(Consent).order_by(Consent.id)))


def user_row(runtime, username: str):
    with runtime.sessions() as db:
        return users_store.by_username(db, username)


# -- pages, URLs and tokens ------------------------------------------------------------------


def csrf_from(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, f"no CSRF token in the page:\n{html[:500]}"
    return match.group(1)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def pkce() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge), RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def _jwt_part(token: str, index: int) -> dict:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def jwt_header(token: str) -> dict:
    """A JWT's header, not verified."""
    return _jwt_part(token, 0)


def jwt_claims(token: str) -> dict:
    """A JWT's claims, not verified."""
    return _jwt_part(token, 1)


def verify_jwt_with(token: str, jwks: dict):
    """Decode and verify a JWT against a JWK set (joserfc)."""
    from joserfc import jwt
    from joserfc.jwk import KeySet

    return jwt.decode(token, KeySet.import_key_set(jwks))


async def verify_jwt(client: httpx.AsyncClient, token: str, *, base: str = ""):
    """Decode and verify a JWT against the server's published /jwks (joserfc)."""
    return verify_jwt_with(token, (await client.get(f"{base}/jwks")).json())


# -- the browser and the client over HTTP ----------------------------------------------------
#
# `base`: "" when `client` has the server as its base_url, else the server's URL.


def _at(base: str, location: str) -> str:
    """A redirect's Location, as a URL `client` can get from `base`."""
    return location if not base or "://" in location else base + location


async def register(client: httpx.AsyncClient, *, base: str = "", **metadata) -> dict:
    body = {"redirect_uris": [REDIRECT], "client_name": "Test MCP Client", "grant_types": ["authorization_code", "refresh_token"]}
    body.update(metadata)
    response = await client.post(f"{base}/register", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def login(
    client: httpx.AsyncClient, username: str = USERNAME, password: str = PASSWORD, next_url: str = "", *, base: str = ""
) -> httpx.Response:
    page = await client.get(f"{base}/login", params={"next": next_url} if next_url else None)
    return await client.post(
        f"{base}/login",
        data={"username": username, "password": password, "csrf_token": csrf_from(page.text), "next": next_url},
    )


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


async def authorize(
    client: httpx.AsyncClient,
    params: dict,
    *,
    decision: str = "allow",
    base: str = "",
    sign_in_as: tuple[str, str] | None = None,
) -> httpx.Response:
    """Follow /authorize through consent (and, with `sign_in_as` = (username, password), through
    the sign-in form it sends a browser that is not signed in yet); return the response that
    redirects to the client (or the last page)."""
    response = await client.get(f"{base}/authorize", params=params)
    for _ in range(5):
        location = response.headers.get("location", "")
        if response.status_code in (302, 303) and sign_in_as is not None and urlsplit(location).path.endswith("/login"):
            response = await login(client, *sign_in_as, next_url=query(location).get("next", ""), base=base)
            continue
        if response.status_code in (302, 303) and "/consent/" in location:
            page = await client.get(_at(base, location))
            if page.status_code != 200:
                return page
            response = await client.post(_at(base, location), data={"decision": decision, "csrf_token": csrf_from(page.text)})
            continue
        return response
    return response


async def obtain_code(
    client: httpx.AsyncClient, client_id: str, *, base: str = "", sign_in_as: tuple[str, str] | None = None, **extra
) -> tuple[str, str, dict]:
    """(code, verifier, params) for a signed-in browser (or one that signs in on the way)."""
    verifier, challenge = pkce()
    params = authorize_params(client_id, challenge, **extra)
    response = await authorize(client, params, base=base, sign_in_as=sign_in_as)
    assert response.status_code == 302, response.text
    q = query(response.headers["location"])
    assert "code" in q, q
    # RFC 6749 §4.1.2: the state comes back; RFC 9207: so does the issuer.
    assert q.get("state") == params.get("state") and q.get("iss"), q
    return q["code"], verifier, params


async def exchange(
    client: httpx.AsyncClient, client_id: str, code: str, verifier: str, *, base: str = "", **extra
) -> httpx.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": REDIRECT,
        "client_id": client_id,
    }
    data.update(extra)
    return await client.post(f"{base}/token", data={k: v for k, v in data.items() if v is not None})


async def refresh(client: httpx.AsyncClient, client_id: str, refresh_token: str, *, base: str = "", **extra) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id}
    data.update(extra)
    return await client.post(f"{base}/token", data={k: v for k, v in data.items() if v is not None})


async def tokens_for(
    client: httpx.AsyncClient,
    client_id: str,
    *,
    auth=None,
    base: str = "",
    redeem_at: str | None = None,
    sign_in_as: tuple[str, str] | None = None,
    token_params: dict | None = None,
    **authorize_extra,
) -> dict:
    """Run /authorize (signed-in browser, or one that signs in on the way) and the code exchange
    (at `redeem_at`, default: the same server, with `token_params` added); return the token
    response."""
    code, verifier, _ = await obtain_code(client, client_id, base=base, sign_in_as=sign_in_as, **authorize_extra)
    at = base if redeem_at is None else redeem_at
    if auth is None:
        response = await exchange(client, client_id, code, verifier, base=at, **(token_params or {}))
    else:  # a confidential client: client_secret_basic
        data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT}
        response = await client.post(f"{at}/token", data={**data, **(token_params or {})}, auth=auth)
    assert response.status_code == 200, response.text
    return response.json()


async def introspect(client: httpx.AsyncClient, token: str, auth: tuple[str, str], **extra) -> httpx.Response:
    return await client.post("/introspect", data={"token": token, **extra}, auth=auth)


# -- protocol-test flows (tests/test_rfc*.py, test_scopes, test_consent, test_redirect_uris) --


async def registered_flow(client: httpx.AsyncClient, runtime, *, trusted: bool = True, **metadata) -> dict:
    """The default resource and a registered client, nobody signed in (no password hashing:
    enough for requests that are refused before sign-in). The client is marked trusted by
    default, so that its errors redirect before sign-in as RFC 6749 §4.1.2.1 describes; the
    open-redirect tests register untrusted ones."""
    create_resource(runtime)
    reg = await register(client, **metadata)
    if trusted:
        trust_client(runtime, reg["client_id"])
    return reg


def trust_client(runtime, client_id: str) -> None:
    """What an admin's "mark trusted" does."""
    from app.services.clients import set_trusted

    with runtime.sessions() as db:
        row = clients_store.get(db, client_id)
        assert row is not None
        set_trusted(db, row, True)
        db.commit()


async def signed_in_flow(client: httpx.AsyncClient, runtime, **metadata) -> dict:
    """A user `alice`, the default resource, a registered client, and `client` signed in as alice.
    Returns the registration response."""
    with runtime.sessions() as db:  # as create_user, with the password hashed once per run
        users_store.add(db, User(username=USERNAME, password_hash=_alice_hash(), is_admin=False, groups=[]))
        db.commit()
    create_resource(runtime)
    reg = await register(client, **metadata)
    response = await login(client)
    assert response.status_code == 303, response.text
    return reg


async def signed_in(client: httpx.AsyncClient, runtime, **resource) -> None:
    """A user `alice`, the default resource (or `resource` keywords), and `client` signed in as
    alice; no client registered (Client ID Metadata Document tests)."""
    with runtime.sessions() as db:
        users_store.add(db, User(username=USERNAME, password_hash=_alice_hash(), is_admin=False, groups=[]))
        db.commit()
    create_resource(runtime, **resource)
    response = await login(client)
    assert response.status_code == 303, response.text


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
    import pyotp

    totp = pyotp.TOTP(secret)
    return totp.generate_otp(totp.timecode(int(time.time())) + offset_steps)


def secret_from_page(html: str) -> str:
    match = re.search(r'id="totp-secret" data-secret="([A-Z2-7]+)"', html)
    assert match, "no TOTP secret on the enrolment page"
    return match.group(1)


def recovery_codes_from_page(html: str) -> list[str]:
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


# -- an MCP client with a real browser (tests/e2e/test_mcp_python_sdk*.py) --------------------


class MemoryStorage:
    """The MCP Python SDK's TokenStorage, in memory; the test reads the tokens from it."""

    def __init__(self):
        self.tokens = None  # mcp.shared.auth.OAuthToken
        self.client_info = None  # mcp.shared.auth.OAuthClientInformationFull

    async def get_tokens(self):
        return self.tokens

    async def set_tokens(self, tokens) -> None:
        self.tokens = tokens

    async def get_client_info(self):
        return self.client_info

    async def set_client_info(self, client_info) -> None:
        self.client_info = client_info


class CallbackListener:
    """The client's loopback redirect URI (RFC 8252 §7.3), as a native MCP client runs it."""

    def __init__(self):
        import queue
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: queue.Queue[dict[str, str]] = queue.Queue()
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if urlsplit(self.path).path == "/callback":
                    received.put(query(self.path))
                body = b"<!doctype html><title>Done</title><p>You can close this window."
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    async def next_result(self):
        import anyio
        from mcp.shared.auth import AuthorizationCodeResult

        params = await anyio.to_thread.run_sync(lambda: self.received.get(timeout=30))
        assert "code" in params, f"the authorization failed: {params}"
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


async def sign_in_and_allow(browser, url: str, callback_url: str) -> dict[str, list[str]]:
    """What the user does in the browser: sign in if asked, read the consent page, Allow.
    Returns the consent page's scopes by status ("new", "granted")."""
    page = await browser.new_page()
    try:
        await page.goto(url)
        sign_in = page.get_by_role("button", name="Sign in")
        if await sign_in.count():
            await page.get_by_label("Username").fill(USERNAME)
            await page.get_by_label("Password").fill(PASSWORD)
            await sign_in.click()
        allow = page.get_by_role("button", name="Allow")
        await allow.wait_for(timeout=10_000)
        items = await page.locator("[data-scope]").evaluate_all("els => els.map(e => [e.dataset.scope, e.dataset.scopeStatus])")
        await allow.click()
        await page.wait_for_url(lambda u: u.startswith(callback_url), timeout=10_000)
    finally:
        await page.close()
    seen: dict[str, list[str]] = {"new": [], "granted": []}
    for scope, status in items:
        seen[status].append(scope)
    return seen


@asynccontextmanager
async def browser_context(chromium: str):
    """One headless Chromium profile: it keeps the Ostiary session between authorizations."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            yield await browser.new_context()
        finally:
            await browser.close()


class UvicornServer:
    """The real app under uvicorn on 127.0.0.1, in a thread, for as long as the block runs."""

    def __init__(self, settings):
        import uvicorn

        self.port = free_port()
        from app.main import create_app

        self.app = create_app(settings, run_jobs=False)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.__exit__(None, None, None)
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.app.state.runtime.engine.dispose()


# -- DPoP (RFC 9449): a client's key and proofs (tests/test_rfc9449_dpop.py, the example server) --

TOKEN_URL = ISSUER + "/token"


class DPoPClient:
    """A DPoP key pair and the proofs it signs (RFC 9449 §4.2)."""

    def __init__(self, key=None, alg: str = "ES256"):
        self.key = key or ECKey.generate_key("P-256")
        self.alg = alg

    @property
    def jkt(self) -> str:
        return self.key.thumbprint()  # RFC 7638

    def proof(
        self,
        htm: str = "POST",
        htu: str = TOKEN_URL,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        header: dict | None = None,
        **claims,
    ) -> str:
        body = {"jti": uuid.uuid4().hex, "htm": htm, "htu": htu, "iat": int(time.time())}
        if access_token is not None:
            digest = hashlib.sha256(access_token.encode()).digest()
            body["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if nonce is not None:
            body["nonce"] = nonce
        body.update(claims)
        head = {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.key.as_dict(private=False), **(header or {})}
        return jose_jwt.encode(
            {k: v for k, v in head.items() if v is not None},
            {k: v for k, v in body.items() if v is not None},
            self.key,
            algorithms=[self.alg],
        )
