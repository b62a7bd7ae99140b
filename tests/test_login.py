"""Users and sign-in: /login and /logout, server-side browser sessions
(docs/decisions.md#browser-sessions-are-server-side-with-idle-and-absolute-timeouts), CSRF,
timeouts, open-redirect defence, security headers, and argon2id with rehash-on-verify."""

from __future__ import annotations

import re

import pytest
from argon2 import PasswordHasher

from app.infra.db import now
from tests.support import PASSWORD, create_user, csrf_from, database_text, login, sql

# Marked here too: anyio re-creates items unmarked at collection time and drops their parameters.
pytestmark = pytest.mark.anyio

ERROR_RE = re.compile(r'<p class="error" role="alert">([^<]*)</p>')


def set_cookies(response) -> dict[str, str]:
    """name -> the whole Set-Cookie header, for each cookie the response sets."""
    return {header.split("=", 1)[0]: header for header in response.headers.get_list("set-cookie")}


def attributes(header: str) -> set[str]:
    return {part.strip().lower() for part in header.split(";")[1:]}


def error_message(html: str) -> str:
    match = ERROR_RE.search(html)
    assert match, "no error message on the page"
    return match.group(1)


async def signed_in(client) -> bool:
    response = await client.get("/account")
    return response.status_code == 200


# -- the page ----------------------------------------------------------------------------------


async def test_login_page_has_username_password_and_sign_in(client):
    response = await client.get("/login")
    assert response.status_code == 200
    html = response.text
    assert re.search(r'<label for="username">Username</label>', html)
    assert re.search(r'<label for="password">Password</label>', html)
    assert re.search(r'<input id="username" name="username"', html)
    assert re.search(r'<input id="password" name="password" type="password"', html)
    assert re.search(r"<button[^>]*>Sign in</button>", html)
    assert csrf_from(html)


# -- success -----------------------------------------------------------------------------------


async def test_sign_in_sets_httponly_samesite_lax_session_cookie(client, runtime):
    create_user(runtime)
    response = await login(client)
    assert response.status_code == 303
    assert response.headers["location"] == "/account"
    cookies = set_cookies(response)
    session = cookies["ostiary-session"]
    assert {"httponly", "samesite=lax", "path=/"} <= attributes(session)
    assert "secure" not in attributes(session)  # plain-http loopback issuer
    page = await client.get("/account")
    assert page.status_code == 200 and "alice" in page.text


@pytest.mark.parametrize("settings_overrides", [pytest.param({"issuer": "https://auth.example.com"}, id="https issuer")])
async def test_sign_in_under_https_uses_host_prefixed_secure_cookie(client, runtime):
    create_user(runtime)
    response = await login(client)
    assert response.status_code == 303
    cookies = set_cookies(response)
    assert "ostiary-session" not in cookies
    session = cookies["__Host-ostiary-session"]
    # RFC 6265bis §4.1.3.2: __Host- requires Secure, Path=/ and no Domain.
    assert {"secure", "httponly", "samesite=lax", "path=/"} <= attributes(session)
    assert not any(a.startswith("domain=") for a in attributes(session))
    assert {"secure", "httponly"} <= attributes(cookies["__Host-ostiary-csrf"])
    assert await signed_in(client)


async def test_session_id_stored_only_as_hmac(client, runtime, settings):
    create_user(runtime)
    response = await login(client)
    raw = response.cookies["ostiary-session"]
    assert len(raw) >= 43  # 256 random bits, base64url
    rows = sql(settings, "SELECT id_hash FROM browser_sessions")
    assert rows == [(runtime.keyring.hash(raw),)]
    assert raw not in database_text(settings.database_url.get_secret_value())


async def test_new_session_id_on_every_sign_in(client, runtime, settings):
    create_user(runtime)
    first = (await login(client)).cookies["ostiary-session"]
    page = await client.get("/login", params={"prompt": "login"})
    second = await client.post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": csrf_from(page.text)})
    assert second.status_code == 303
    assert second.cookies["ostiary-session"] != first  # no session fixation
    assert len(sql(settings, "SELECT id_hash FROM browser_sessions")) == 1


# -- failure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "username, password",
    [
        pytest.param("alice", "wrong password!", id="wrong password"),
        pytest.param("mallory", PASSWORD, id="unknown user"),
        pytest.param("carol", PASSWORD, id="disabled user"),
        pytest.param("", PASSWORD, id="empty username"),
    ],
)
async def test_failed_sign_in_same_message_and_status(client, runtime, settings, username, password):
    create_user(runtime, "alice")
    create_user(runtime, "carol")
    sql(settings, "UPDATE users SET disabled_at = :t WHERE username = 'carol'", t=now())
    reference = await login(client, "alice", "wrong password!")
    response = await login(client, username, password)
    assert response.status_code == reference.status_code == 401
    assert error_message(response.text) == error_message(reference.text) == "Incorrect username or password."
    assert "ostiary-session" not in set_cookies(response)
    assert not await signed_in(client)
    assert sql(settings, "SELECT id_hash FROM browser_sessions") == []


async def test_an_unknown_user_costs_the_same_password_work(client, runtime):
    """OWASP authentication: an unknown username is checked against a dummy argon2id hash, so the
    answer takes as long as for a known user with a wrong password (no user enumeration by
    timing). Without the dummy the unknown user would answer in a fraction of the time."""
    import time

    create_user(runtime, "alice")

    async def median(username: str) -> float:
        times = []
        for _ in range(5):
            page = await client.get("/login")
            started = time.perf_counter()
            await client.post(
                "/login", data={"username": username, "password": "wrong password!", "csrf_token": csrf_from(page.text)}
            )
            times.append(time.perf_counter() - started)
        return sorted(times)[2]

    known, unknown = await median("alice"), await median("mallory")
    assert unknown > 0.5 * known, (known, unknown)


async def test_disabled_user_signed_in_session_ends(client, runtime, settings):
    create_user(runtime)
    assert (await login(client)).status_code == 303
    assert await signed_in(client)
    sql(settings, "UPDATE users SET disabled_at = :t", t=now())
    response = await client.get("/account")
    assert response.status_code == 303 and response.headers["location"].startswith("/login")
    assert sql(settings, "SELECT id_hash FROM browser_sessions") == []


# -- CSRF --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(None, id="missing token"),
        pytest.param("", id="empty token"),
        pytest.param("0" * 64, id="wrong token"),
        pytest.param("other-browser", id="token of another browser"),
    ],
)
async def test_login_csrf_refused(client, new_client, runtime, settings, token):
    create_user(runtime)
    await client.get("/login")  # the CSRF cookie
    if token == "other-browser":
        token = csrf_from((await new_client().get("/login")).text)
    data = {"username": "alice", "password": PASSWORD}
    if token is not None:
        data["csrf_token"] = token
    response = await client.post("/login", data=data)
    assert response.status_code == 400
    assert "expired" in error_message(response.text)
    assert "ostiary-session" not in set_cookies(response)
    assert sql(settings, "SELECT id_hash FROM browser_sessions") == []


async def test_login_csrf_without_cookie_refused(client, new_client, runtime):
    create_user(runtime)
    token = csrf_from((await client.get("/login")).text)
    response = await new_client().post("/login", data={"username": "alice", "password": PASSWORD, "csrf_token": token})
    assert response.status_code == 400
    assert "ostiary-session" not in set_cookies(response)


# -- logout ------------------------------------------------------------------------------------


async def test_logout_post_with_csrf_ends_session(client, new_client, runtime, settings):
    create_user(runtime)
    raw = (await login(client)).cookies["ostiary-session"]
    page = await client.get("/logout")
    assert page.status_code == 200
    response = await client.post("/logout", data={"csrf_token": csrf_from(page.text)})
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert 'ostiary-session=""' in set_cookies(response)["ostiary-session"] or "max-age=0" in attributes(
        set_cookies(response)["ostiary-session"]
    )
    assert sql(settings, "SELECT id_hash FROM browser_sessions") == []
    assert not await signed_in(client)
    replay = new_client(cookies={"ostiary-session": raw})  # the old cookie is worthless
    assert not await signed_in(replay)


@pytest.mark.parametrize("token", [pytest.param(None, id="missing token"), pytest.param("0" * 64, id="wrong token")])
async def test_logout_without_valid_csrf_refused(client, runtime, token):
    create_user(runtime)
    await login(client)
    response = await client.post("/logout", data={} if token is None else {"csrf_token": token})
    assert response.status_code == 400
    assert await signed_in(client)


async def test_logout_get_does_not_sign_out(client, runtime):
    create_user(runtime)
    await login(client)
    assert (await client.get("/logout")).status_code == 200
    assert await signed_in(client)


# -- timeouts ----------------------------------------------------------------------------------


async def test_session_idle_timeout(client, runtime, settings):
    create_user(runtime)
    await login(client)
    t = now()
    sql(settings, "UPDATE browser_sessions SET last_seen_at = :t", t=t - settings.session_idle_timeout + 120)
    assert await signed_in(client)  # still within the idle timeout, and the visit counts
    (last_seen,) = sql(settings, "SELECT last_seen_at FROM browser_sessions")[0]
    assert last_seen >= t
    sql(settings, "UPDATE browser_sessions SET last_seen_at = :t", t=t - settings.session_idle_timeout - 1)
    response = await client.get("/account")
    assert response.status_code == 303 and response.headers["location"] == "/login?next=%2Faccount"
    assert sql(settings, "SELECT id_hash FROM browser_sessions") == []


async def test_session_absolute_timeout(client, runtime, settings):
    create_user(runtime)
    assert (await login(client)).status_code == 303
    (row,) = sql(settings, "SELECT created_at, expires_at FROM browser_sessions")
    assert row[1] - row[0] == settings.session_absolute_timeout == 12 * 3600
    # Active all along (last seen just now), but signed in longer than the absolute timeout.
    sql(settings, "UPDATE browser_sessions SET expires_at = :t, last_seen_at = :t", t=now())
    assert not await signed_in(client)
    assert sql(settings, "SELECT id_hash FROM browser_sessions") == []


@pytest.mark.parametrize(
    "settings_overrides", [pytest.param({"session_idle_timeout": 1, "session_absolute_timeout": 1}, id="1 s timeouts")]
)
async def test_session_expires_with_short_timeouts_from_settings(client, runtime, settings):
    create_user(runtime)
    await login(client)
    sql(settings, "UPDATE browser_sessions SET last_seen_at = last_seen_at - 1, expires_at = expires_at - 1")
    assert not await signed_in(client)


# -- next: no open redirect (RFC 9700 §4.11) ----------------------------------------------------


@pytest.mark.parametrize(
    "next_url",
    [
        pytest.param("//evil.com", id="scheme-relative"),
        pytest.param("https://evil.com", id="absolute URL"),
        pytest.param("/\\evil.com", id="backslash"),
        pytest.param("\\\\evil.com", id="double backslash"),
        pytest.param("///evil.com", id="triple slash"),
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("/\r\nLocation: https://evil.com", id="header injection"),
        pytest.param("/\t/evil.com", id="tab"),
        pytest.param("evil.com", id="relative"),
    ],
)
async def test_next_open_redirect_lands_on_local_page_rfc9700_s4_11(client, runtime, next_url):
    create_user(runtime)
    response = await login(client, next_url=next_url)
    assert response.status_code == 303
    assert response.headers["location"] == "/account"
    again = await client.get("/login", params={"next": next_url})  # already signed in
    assert again.status_code == 303 and again.headers["location"] == "/account"


@pytest.mark.parametrize(
    "settings_overrides", [pytest.param({"issuer": "https://auth.example.com/tenant"}, id="issuer with a path")]
)
async def test_next_under_issuer_path_stays_under_it(client, runtime):
    create_user(runtime)
    page = await client.get("/login")
    assert 'action="/tenant/login"' in page.text
    response = await login(client, next_url="//evil.com")
    assert response.headers["location"] == "/tenant/account"
    assert (await client.get("/account")).status_code == 200


async def test_next_local_path_kept(client, runtime):
    create_user(runtime)
    response = await login(client, next_url="/account?tab=apps")
    assert response.headers["location"] == "/account?tab=apps"


# -- headers on pages --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, signed_in_first",
    [
        pytest.param("GET", "/login", False, id="login page"),
        pytest.param("POST", "/login", False, id="failed sign-in"),
        pytest.param("GET", "/logout", True, id="logout page"),
        pytest.param("GET", "/account", True, id="account page"),
    ],
)
async def test_pages_send_security_headers_rfc6749_s10_13(client, runtime, method, path, signed_in_first):
    create_user(runtime)
    if signed_in_first:
        await login(client)
    response = await client.request(method, path, data={"username": "x"} if method == "POST" else None)
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "access-control-allow-origin" not in response.headers


# -- passwords ---------------------------------------------------------------------------------


async def test_password_stored_as_argon2id(runtime, settings):
    create_user(runtime)
    ((stored,),) = sql(settings, "SELECT password_hash FROM users")
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in database_text(settings.database_url.get_secret_value())


async def test_rehash_on_verify_replaces_weak_hash(client, runtime, settings):
    from app.models import User
    from app.stores import users as users_store

    weak = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
    with runtime.sessions() as db:
        users_store.add(db, User(username="alice", password_hash=weak))
        db.commit()
    assert (await login(client)).status_code == 303
    ((stored,),) = sql(settings, "SELECT password_hash FROM users")
    assert stored != weak and stored.startswith("$argon2id$")
    assert not PasswordHasher().check_needs_rehash(stored)
    assert PasswordHasher().verify(stored, PASSWORD)
