"""Rate limits: /token per IP and per client, /authorize and /login per IP, sign-in
failures per username with longer waits in tiers and a temporary lock; 429 with Retry-After and
an RFC 6749 error body on protocol endpoints, a readable page in the browser; every limit hit
audited once per window; counters shared through Redis."""

from __future__ import annotations

import os
import secrets
import time

import pytest

from app.main import create_app
from tests.support import (
    PASSWORD,
    audit_events,
    authorize_params,
    create_user,
    login,
    make_settings,
    pkce,
    redis_problem,
    registered_flow,
    unavailable,
)

pytestmark = pytest.mark.anyio

REDIS_URL = os.environ.get("OSTIARY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def assert_429_json(response) -> None:
    # RFC 6585 §4 (429, Retry-After) with an RFC 6749 §5.2 error body.
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"] == "temporarily_unavailable"
    assert response.headers["cache-control"] == "no-store"


def assert_429_page(response) -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["content-type"].startswith("text/html")
    assert "Try again in" in response.text


def token_request(client, client_id: str):
    return client.post("/token", data={"grant_type": "refresh_token", "refresh_token": "ostrt_nope", "client_id": client_id})


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_exempt": [], "token_rate_per_ip": "3/minute", "token_rate_per_client": "100/minute"}]
)
async def test_token_endpoint_per_ip(client, new_client, runtime):
    reg = await registered_flow(client, runtime)
    for _ in range(3):
        assert (await token_request(client, reg["client_id"])).status_code == 400  # invalid_grant: counted
    assert_429_json(await token_request(client, reg["client_id"]))
    other = new_client(client_addr=("192.0.2.80", 40000))
    assert (await token_request(other, reg["client_id"])).status_code == 400


@pytest.mark.parametrize(
    "settings_overrides", [{"rate_limit_exempt": [], "token_rate_per_ip": "100/minute", "token_rate_per_client": "2/minute"}]
)
async def test_token_endpoint_per_client_and_address(client, new_client, runtime):
    """Per client_id and address: a metadata-document client_id shared by many users' installs
    must not let one of them throttle the others."""
    reg = await registered_flow(client, runtime)
    other_client = (await client.post("/register", json={"redirect_uris": ["http://127.0.0.1:9/cb"]})).json()
    for _ in range(2):
        assert (await token_request(client, reg["client_id"])).status_code == 400
    assert_429_json(await token_request(client, reg["client_id"]))
    # Basic auth names the same client: still limited.
    basic = await client.post("/token", data={"grant_type": "refresh_token", "refresh_token": "x"}, auth=(reg["client_id"], "s"))
    assert_429_json(basic)
    assert (await token_request(client, other_client["client_id"])).status_code == 400
    elsewhere = new_client(client_addr=("192.0.2.81", 40000))
    assert (await token_request(elsewhere, reg["client_id"])).status_code == 400


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_exempt": [], "authorize_rate_per_ip": "2/minute"}])
async def test_authorize_per_ip_is_a_page(client, runtime):
    reg = await registered_flow(client, runtime)
    _, challenge = pkce()
    params = authorize_params(reg["client_id"], challenge)
    for _ in range(2):
        assert (await client.get("/authorize", params=params)).status_code == 303  # to sign-in
    assert_429_page(await client.get("/authorize", params=params, headers={"Accept": "text/html"}))


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_exempt": [], "login_rate_per_ip": "3/minute"}])
async def test_login_per_ip(client, runtime):
    create_user(runtime, "bob")
    for i in range(3):
        assert (await login(client, f"nobody{i}", "wrong")).status_code == 401
    assert_429_page(await login(client, "bob", PASSWORD))


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "login_failures_per_source": "2/second;3/minute",
            "login_failures_per_user": "100/minute",
            "login_rate_per_ip": "1000/minute",
        }
    ],
)
async def test_sign_in_failures_per_username_and_address_wait_longer_in_tiers_then_lock(client, new_client, runtime):
    """Progressive delay per (username, address): two failures cost a second's wait, a third
    within the minute locks that address out of the account for up to a minute. Even the right
    password is refused from there while locked; another address is not; an unknown name locks
    the same way (nothing tells which accounts exist)
    (docs/decisions.md#failed-sign-ins-lock-one-source-and-only-slow-the-rest)."""
    create_user(runtime, "bob")
    create_user(runtime, "carol")
    for _ in range(2):
        assert (await login(client, "bob", "wrong")).status_code == 401
    first = await login(client, "bob", PASSWORD)
    assert_429_page(first)
    assert "Too many failed sign-ins for this account from your network." in first.text
    assert int(first.headers["retry-after"]) <= 1

    time.sleep(1.1)  # the first tier's window has passed
    assert (await login(client, "Bob", "wrong")).status_code == 401  # the same account, any case
    locked = await login(client, "bob", PASSWORD)
    assert_429_page(locked)
    assert 1 < int(locked.headers["retry-after"]) <= 60
    # The real bob, elsewhere, is not locked out by the failures from this address.
    assert (await login(new_client(client_addr=("192.0.2.90", 40000)), "bob", PASSWORD)).status_code == 303

    assert (await login(client, "carol", PASSWORD)).status_code == 303
    for _ in range(2):
        assert (await login(new_client(), "ghost", "wrong")).status_code == 401
    assert_429_page(await login(new_client(), "ghost", "wrong"))


@pytest.mark.parametrize(
    "settings_overrides",
    [{"login_failures_per_source": "100/minute", "login_failures_per_user": "3/minute", "login_rate_per_ip": "1000/minute"}],
)
async def test_failures_from_many_addresses_only_slow_the_account_down(client, new_client, runtime):
    """Failures for one username from many addresses (a distributed guess) slow every sign-in
    for it, for at most a minute: never a lock anyone can impose from outside."""
    create_user(runtime, "bob")
    for i in range(3):
        assert (await login(new_client(client_addr=(f"198.51.100.{i}", 40000)), "bob", "wrong")).status_code == 401
    slowed = await login(new_client(client_addr=("192.0.2.91", 40000)), "bob", PASSWORD)
    assert_429_page(slowed)
    assert "Please wait a moment" in slowed.text and int(slowed.headers["retry-after"]) <= 60


@pytest.mark.parametrize("rate", ["5/hour", "30/minute;100/5minutes"])
def test_a_per_username_tier_longer_than_a_minute_is_refused(rate, tmp_path):
    """It would let anyone lock an account out from everywhere for longer."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="a minute at most"):
        make_settings(f"sqlite:///{tmp_path}/x.db", login_failures_per_user=rate)


@pytest.mark.parametrize("settings_overrides", [{"login_failures_per_source": "3/minute", "login_rate_per_ip": "1000/minute"}])
async def test_a_successful_sign_in_clears_the_failures(client, new_client, runtime):
    create_user(runtime, "bob")
    for _ in range(2):
        assert (await login(client, "bob", "wrong")).status_code == 401
    assert (await login(client, "bob", PASSWORD)).status_code == 303
    for _ in range(2):
        assert (await login(new_client(), "bob", "wrong")).status_code == 401
    assert (await login(new_client(), "bob", PASSWORD)).status_code == 303


@pytest.mark.parametrize("settings_overrides", [{"token_rate_per_ip": "2/minute", "registration_rate_per_ip": "1/minute"}])
async def test_the_machine_itself_is_not_counted_by_default(client, new_client, runtime):
    """OSTIARY_RATE_LIMIT_EXEMPT defaults to loopback: a local MCP server, health checker or
    benchmark is not throttled; any other address is (behind a proxy: the address the trusted
    proxy reports)."""
    reg = await registered_flow(client, runtime)
    for _ in range(5):
        assert (await token_request(client, reg["client_id"])).status_code == 400
    outside = new_client(client_addr=("192.0.2.70", 40000))
    for _ in range(2):
        assert (await token_request(outside, reg["client_id"])).status_code == 400
    assert_429_json(await token_request(outside, reg["client_id"]))
    body = {"redirect_uris": ["http://127.0.0.1:9/cb"]}
    assert [(await client.post("/register", json=body)).status_code for _ in range(3)] == [201, 201, 201]


@pytest.mark.parametrize("settings_overrides", [{"rate_limit_exempt": [], "token_rate_per_ip": "1/minute"}])
async def test_a_limit_hit_is_audited_once_per_window(client, runtime):
    """Rate-limit hits are security events; a flood is one row, not one per request
    (docs/decisions.md#rate-limit-refusals-are-audited-once-per-window)."""
    reg = await registered_flow(client, runtime)
    await token_request(client, reg["client_id"])
    for _ in range(5):
        assert_429_json(await token_request(client, reg["client_id"]))
    [event] = audit_events(runtime, "rate_limit.hit")
    assert event.details["limit"] == "token-ip" and event.details["subject"] == "127.0.0.1"
    assert event.ip == "127.0.0.1"


@pytest.fixture
def redis_url():
    problem = redis_problem(REDIS_URL, timeout=1)
    if problem is not None:
        unavailable(problem)
    return REDIS_URL


async def test_limits_are_shared_by_replicas_through_redis(redis_url, settings, new_client):
    """Two app instances (replicas) with one Redis count together: 2 + 2 requests against a
    limit of 3 per address trip on the fourth, whichever replica gets it."""
    import httpx

    overrides = dict(redis_url=redis_url, registration_rate_per_ip="3/minute")
    replicas = [
        create_app(make_settings(settings.database_url.get_secret_value(), **overrides), run_jobs=False) for _ in range(2)
    ]
    address = f"198.18.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"  # fresh counters per run
    clients = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=a, client=(address, 40000)), base_url=settings.issuer)
        for a in replicas
    ]
    try:
        body = {"redirect_uris": ["http://127.0.0.1:9/cb"]}
        statuses = [(await clients[i % 2].post("/register", json=body)).status_code for i in range(4)]
        assert statuses == [201, 201, 201, 429]
        assert (await clients[0].post("/register", json=body)).status_code == 429
    finally:
        for c in clients:
            await c.aclose()
        for a in replicas:
            a.state.runtime.engine.dispose()


async def test_a_limiter_outage_lets_requests_through(settings, caplog):
    """Redis down: limits fail open (sign-in and /token keep working) and say so in the log."""
    import httpx

    broken = make_settings(
        settings.database_url.get_secret_value(),
        redis_url="redis://127.0.0.1:1/0",
        registration_rate_per_ip="1/minute",
        rate_limit_exempt=[],
    )
    app = create_app(broken, run_jobs=False)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=settings.issuer) as c:
            for _ in range(3):
                assert (await c.post("/register", json={"redirect_uris": ["http://127.0.0.1:9/cb"]})).status_code == 201
    finally:
        app.state.runtime.engine.dispose()
    assert "rate limiter storage unavailable" in caplog.text
