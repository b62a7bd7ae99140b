"""Several replicas behave as one server, under concurrency, rate limits and faults, and shut
down gracefully.

Real processes: two `ostiary serve` replicas (A and B) on one throwaway PostgreSQL database and one
Redis database (rate-limit counters), driven over plain HTTP the way an MCP client and a browser
drive them: the sign-in form with its CSRF token, the consent page's Allow, PKCE S256 and
`resource`. Every request carries the issuer's Host header (`127.0.0.1:<port of A>`), whichever
replica it reaches, as a load balancer in front of both forwards it (see e2e/replicas.py).

What is proved:
- a code issued by A redeems at B, a refresh token rotates at either, a browser session made on
  one is good on the other, and reuse detected on one revokes the family on both;
- a key rotated elsewhere (`ostiary keys rotate --force`) is published in /jwks by both replicas
  within the JWKS max-age, and tokens they sign then verify against either's JWKS;
- scheduled jobs (key rotation when due, pruning of unused clients) run once, not once per replica;
- rate limits are counted across both replicas (Redis): /register, /token per IP and per
  client, /login per IP and per username;
- concurrency: 200 parallel refreshes of one refresh token across both replicas yield exactly
  one successor; 200 parallel redemptions of one code yield exactly one token response;
- faults: kill -9 of a replica during a refresh load loses and duplicates nothing; a PostgreSQL
  restart during load answers 503 (never 500) and the replicas recover by themselves;
- graceful shutdown: on SIGTERM an in-flight /token request still gets its whole response, and
  new connections are refused.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections import Counter

import httpx
import pytest

from app.security.secrets import Keyring
from tests.e2e.replicas import AUTHORIZE, TOKEN, Replicas, public_client, replica_stack
from tests.e2e.servers import SECRET_KEY
from tests.support import (
    PASSWORD,
    RESOURCE,
    USERNAME,
    csrf_from,
    exchange,
    jwt_header,
    obtain_code,
    refresh,
    register,
    tokens_for,
    verify_jwt_with,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(
        not os.environ.get("OSTIARY_TEST_DATABASE_URL"),
        reason="replicas share a PostgreSQL database (set OSTIARY_TEST_DATABASE_URL)",
    ),
]

KEYRING = Keyring([SECRET_KEY.encode()])
LOTS = "100000/minute"  # rate limits out of the way where a test is not about them
JWKS_MAX_AGE = 2


def token_hash(raw: str) -> str:
    return KEYRING.hash(raw)


def audit_count(stack: Replicas, event: str, since_id: int = 0) -> int:
    return stack.scalar("SELECT count(*) FROM audit_events WHERE event = :e AND id > :i", e=event, i=since_id)


def last_audit_id(stack: Replicas) -> int:
    return stack.scalar("SELECT coalesce(max(id), 0) FROM audit_events")


def row_of(stack: Replicas, raw: str):
    rows = stack.sql(
        "SELECT id, family_id, parent_id, used_at, revoked_at, revoked_reason FROM refresh_tokens WHERE token_hash = :h",
        h=token_hash(raw),
    )
    assert len(rows) == 1, f"{len(rows)} rows for one refresh token"
    return rows[0]


def children_per_parent(stack: Replicas, family_id: str) -> Counter:
    rows = stack.sql("SELECT parent_id FROM refresh_tokens WHERE family_id = :f AND parent_id IS NOT NULL", f=family_id)
    return Counter(r[0] for r in rows)


def poll(predicate, timeout: float, interval: float = 0.1):
    """predicate() until it is truthy (returned) or `timeout` seconds have passed (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# -- one pair of replicas for the tests that leave them running ---------------------------------------


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Replicas:
    with replica_stack(
        tmp_path_factory.mktemp("replicas"),
        jobs_interval="1",
        jwks_max_age=str(JWKS_MAX_AGE),
        token_rate_per_ip=LOTS,
        token_rate_per_client=LOTS,
        registration_rate_per_ip=LOTS,
        authorize_rate_per_ip=LOTS,
        login_rate_per_ip=LOTS,
    ) as stack:
        yield stack
        assert stack.a.alive() and stack.b.alive(), stack.tails()


# -- 1. one server: codes, refresh, sessions, reuse --------------------------------------------------------


async def test_code_issued_by_a_redeems_at_b_and_refresh_rotates_at_either(pair: Replicas):
    a, b = pair.a.url, pair.b.url
    async with pair.http() as http:
        reg = await register(http, base=b, **public_client())  # registered at B, authorized at A
        cid = reg["client_id"]
        # Sign-in (CSRF form) and consent on A; the code A issued redeems at B.
        code, verifier, _ = await obtain_code(http, cid, base=a, **AUTHORIZE)
        first = await exchange(http, cid, code, verifier, base=b, **TOKEN)
        assert first.status_code == 200, first.text
        tokens = first.json()
        assert tokens["refresh_token"] and tokens["access_token"]
        # Both replicas publish the same keys; the token verifies against either's JWKS.
        jwks_a, jwks_b = (await http.get(f"{a}/jwks")).json(), (await http.get(f"{b}/jwks")).json()
        assert jwks_a == jwks_b
        claims = verify_jwt_with(tokens["access_token"], jwks_b).claims
        assert claims["iss"] == pair.issuer and claims["aud"] == RESOURCE and claims["client_id"] == cid

        # The browser session made on A is good on B: /authorize at B goes straight to the
        # client (consent already given), and that code redeems at A.
        code2, verifier2, _ = await obtain_code(http, cid, base=b, scope=AUTHORIZE["scope"])  # no sign-in
        second = await exchange(http, cid, code2, verifier2, base=a, **TOKEN)
        assert second.status_code == 200, second.text

        # A refresh token rotates at either replica: A, B, A, B.
        chain = [tokens["refresh_token"]]
        for base in (a, b, a, b):
            response = await refresh(http, cid, chain[-1], base=base, **TOKEN)
            assert response.status_code == 200, f"refresh at {base}: {response.text}"
            chain.append(response.json()["refresh_token"])
        assert len(set(chain)) == len(chain)
        rows = [row_of(pair, t) for t in chain]
        assert len({r.family_id for r in rows}) == 1
        assert [r.parent_id for r in rows[1:]] == [r.id for r in rows[:-1]]  # one line, no sibling
        assert all(r.used_at for r in rows[:-1]) and rows[-1].used_at is None

        # Reuse seen by one replica revokes the family for both: chain[1]'s successor was used,
        # so presenting chain[1] again (at B) is reuse, and the newest token is dead at A too.
        before = last_audit_id(pair)
        reuse = await refresh(http, cid, chain[1], base=b, **TOKEN)
        assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant", reuse.text
        newest = await refresh(http, cid, chain[-1], base=a, **TOKEN)
        assert newest.status_code == 400 and newest.json()["error"] == "invalid_grant", newest.text
        assert audit_count(pair, "token.reuse_detected", before) == 1
        assert all(row_of(pair, t).revoked_at is not None for t in chain)


async def test_key_rotated_elsewhere_is_published_by_both_within_the_jwks_max_age(pair: Replicas):
    a, b = pair.a.url, pair.b.url
    async with pair.http() as http:
        for base in (a, b):
            response = await http.get(f"{base}/jwks")
            assert response.headers["cache-control"] == f"public, max-age={JWKS_MAX_AGE}"
        old_active = pair.scalar("SELECT kid FROM signing_keys WHERE state = 'active'")
        old_next = pair.scalar("SELECT kid FROM signing_keys WHERE state = 'next'")

        # Rotated by another process on the shared database (the operator's CLI): neither
        # replica's cache is told, each must notice by itself.
        out = pair.cli("keys", "rotate", "--force")
        rotated_at = time.monotonic()
        assert old_next in out, out
        new_next = pair.scalar("SELECT kid FROM signing_keys WHERE state = 'next'")
        assert pair.scalar("SELECT kid FROM signing_keys WHERE state = 'active'") == old_next

        published: dict[str, float] = {}
        deadline = rotated_at + JWKS_MAX_AGE + 3
        while len(published) < 2 and time.monotonic() < deadline:
            for replica in pair.both:
                if replica.name in published:
                    continue
                kids = [k["kid"] for k in (await http.get(f"{replica.url}/jwks")).json()["keys"]]
                if kids[:2] == [old_next, new_next] and old_active in kids:
                    published[replica.name] = time.monotonic() - rotated_at
            await asyncio.sleep(0.05)
        assert set(published) == {"A", "B"}, f"published by {published} only"
        # Within the max-age a resource server caches the JWKS for (polling slack: 0.5 s).
        assert max(published.values()) <= JWKS_MAX_AGE + 0.5, published

        # Each replica now signs with the new active key, and its tokens verify with the other's JWKS.
        reg = await register(http, base=a, **public_client())
        for issued_at, checked_at in ((a, b), (b, a)):
            tokens = await tokens_for(
                http, reg["client_id"], base=issued_at, redeem_at=issued_at, token_params=TOKEN, **AUTHORIZE
            )
            assert jwt_header(tokens["access_token"])["kid"] == old_next
            verify_jwt_with(tokens["access_token"], (await http.get(f"{checked_at}/jwks")).json())


async def test_replicas_started_together_on_an_empty_database_set_it_up_once(tmp_path):
    """`docker compose up --scale ostiary=2`: both replicas run `serve --migrate` at the same
    moment on an empty database. One migrates and makes the keys, the other waits for it: both
    serve, one active and one next key, created once."""
    with replica_stack(tmp_path, together=True) as stack:
        states = Counter(r[0] for r in stack.sql("SELECT state FROM signing_keys"))
        assert states == Counter({"active": 1, "next": 1}), states
        assert audit_count(stack, "key.created") == 2
        assert stack.scalar("SELECT count(*) FROM alembic_version") == 1
        async with stack.http() as http:
            jwks = [(await http.get(f"{r.url}/jwks")).json() for r in stack.both]
            assert jwks[0] == jwks[1] and len(jwks[0]["keys"]) == 2
            reg = await register(http, base=stack.b.url, **public_client())
            tokens = await tokens_for(
                http, reg["client_id"], base=stack.a.url, redeem_at=stack.b.url, token_params=TOKEN, **AUTHORIZE
            )
            verify_jwt_with(tokens["access_token"], jwks[0])


def test_scheduled_jobs_run_once_not_once_per_replica(pair: Replicas):
    """OSTIARY_JOBS_INTERVAL=1: both replicas run the job loop every second. A rotation that
    falls due is done once; the prune of never-used clients is done once (its job_runs row names
    the one replica that did it)."""
    pids = {f":{pair.a.pid}": "A", f":{pair.b.pid}": "B"}

    # Key rotation, three times over: each time the active key is made due, exactly one
    # rotation follows, and none after it.
    for round_ in range(3):
        before = last_audit_id(pair)
        active = pair.scalar("SELECT kid FROM signing_keys WHERE state = 'active'")
        pair.sql("UPDATE signing_keys SET activated_at = activated_at - :s WHERE state = 'active'", s=31 * 24 * 3600)
        assert poll(lambda before=before: audit_count(pair, "key.activated", before) >= 1, timeout=10), (
            f"no rotation in round {round_}"
        )
        time.sleep(3.0)  # three more ticks of both loops
        assert audit_count(pair, "key.activated", before) == 1, f"round {round_}: rotated more than once"
        assert audit_count(pair, "key.retired", before) == 1
        assert audit_count(pair, "key.created", before) == 1
        states = Counter(r[0] for r in pair.sql("SELECT state FROM signing_keys"))
        assert states["active"] == 1 and states["next"] == 1, states
        assert pair.scalar("SELECT state FROM signing_keys WHERE kid = :k", k=active) == "retired"

    # Pruning: dynamically registered clients never used, registered long ago.
    async def make_clients() -> list[str]:
        async with pair.http() as http:
            return [
                (await register(http, base=replica.url, **public_client(f"never used {i}")))["client_id"]
                for i, replica in enumerate(pair.both * 3)
            ]

    doomed = asyncio.run(make_clients())
    keep = asyncio.run(make_clients())  # new ones: not prunable
    pair.sql("UPDATE clients SET created_at = created_at - :s WHERE id = ANY(:ids)", s=3 * 24 * 3600, ids=doomed)
    before = last_audit_id(pair)
    # The job ran at start-up and is not due for an hour: make it due for both replicas at once.
    assert pair.sql("UPDATE job_runs SET last_run_at = 0, last_run_by = NULL WHERE name = 'prune-clients'") == 1
    assert poll(lambda: audit_count(pair, "client.pruned", before) >= 1, timeout=10), pair.tails()
    time.sleep(3.0)
    assert audit_count(pair, "client.pruned", before) == 1
    assert audit_count(pair, "client.deleted", before) == len(doomed)
    [(details,)] = pair.sql("SELECT details FROM audit_events WHERE event = 'client.pruned' AND id > :i", i=before)
    details = details if isinstance(details, dict) else json.loads(details)
    assert details.get("count") == len(doomed), details
    left = {r[0] for r in pair.sql("SELECT id FROM clients")}
    assert not left & set(doomed) and set(keep) <= left
    [(by,)] = pair.sql("SELECT last_run_by FROM job_runs WHERE name = 'prune-clients'")
    assert by and any(by.endswith(pid) for pid in pids), f"job_runs names {by!r}, not one of {pids}"


# -- 2. concurrency ---------------------------------------------------------------------------------------


async def test_200_parallel_refreshes_of_one_token_across_both_replicas_yield_one_successor(pair: Replicas):
    a, b = pair.a.url, pair.b.url
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with pair.http(limits=limits, timeout=60.0) as http:
        reg = await register(http, base=a, **public_client())
        cid = reg["client_id"]
        tokens = await tokens_for(http, cid, base=a, redeem_at=b, token_params=TOKEN, **AUTHORIZE)
        parent = tokens["refresh_token"]
        before = last_audit_id(pair)
        started = time.monotonic()
        responses = await asyncio.gather(*(refresh(http, cid, parent, base=(a, b)[i % 2], **TOKEN) for i in range(200)))
        elapsed = time.monotonic() - started

    statuses = Counter(r.status_code for r in responses)
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) <= {200, 400}, statuses
    assert all(r.json()["error"] == "invalid_grant" for r in responses if r.status_code == 400)
    successors = {r.json()["refresh_token"] for r in responses if r.status_code == 200}
    assert len(successors) == 1, f"{len(successors)} distinct successors (siblings were issued)"
    [successor] = successors
    assert len({r.json()["access_token"] for r in responses if r.status_code == 200}) == 1
    served_by = Counter((a, b).index(str(r.request.url).rsplit("/token", 1)[0]) for r in responses if r.status_code == 200)
    assert served_by[0] and served_by[1], f"successes at A and B: {served_by}"

    parent_row = row_of(pair, parent)
    assert children_per_parent(pair, parent_row.family_id) == Counter({parent_row.id: 1})  # one child row
    # The rules: every request was a retry of the same token within the grace window (30 s)
    # while its successor was unused, so each must get that successor, and the family lives.
    assert elapsed < 30, elapsed
    assert statuses == Counter({200: 200}), f"false reuse detection: {statuses}"
    assert audit_count(pair, "token.reuse_detected", before) == 0
    assert audit_count(pair, "token.refreshed", before) == 1
    async with pair.http() as http:
        works = await refresh(http, cid, successor, base=b, **TOKEN)
        assert works.status_code == 200, works.text
        assert (await refresh(http, cid, works.json()["refresh_token"], base=a, **TOKEN)).status_code == 200


async def test_200_parallel_redemptions_of_one_code_across_both_replicas_yield_one_token(pair: Replicas):
    a, b = pair.a.url, pair.b.url
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with pair.http(limits=limits, timeout=60.0) as http:
        reg = await register(http, base=b, **public_client())
        cid = reg["client_id"]
        code, verifier, _ = await obtain_code(http, cid, base=a, **AUTHORIZE)
        before = last_audit_id(pair)
        responses = await asyncio.gather(*(exchange(http, cid, code, verifier, base=(a, b)[i % 2], **TOKEN) for i in range(200)))
        statuses = Counter(r.status_code for r in responses)
        assert not [s for s in statuses if s >= 500], statuses
        assert statuses[200] == 1, statuses
        assert statuses == Counter({200: 1, 400: 199}), statuses
        assert all(r.json()["error"] == "invalid_grant" for r in responses if r.status_code == 400)
        [winner] = [r.json() for r in responses if r.status_code == 200]
        # One token response, one refresh token row, one token.issued.
        assert audit_count(pair, "token.issued", before) == 1
        family = row_of(pair, winner["refresh_token"]).family_id
        assert pair.scalar("SELECT count(*) FROM refresh_tokens WHERE family_id = :f", f=family) == 1
        # The rules (RFC 6749 4.1.2, docs/decisions.md#a-replayed-code-revokes-what-it-issued-but-not-the-consent):
        # the 199 replays revoke what the code produced, on both replicas.
        assert audit_count(pair, "code.replayed", before) >= 1
        for base in (a, b):
            dead = await refresh(http, cid, winner["refresh_token"], base=base, **TOKEN)
            assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant", dead.text


# -- rate limits, counted across both replicas ---------------------------------------------------------


def _retry_after(response: httpx.Response) -> int:
    value = response.headers.get("retry-after", "")
    assert value.isdigit() and int(value) >= 1, f"Retry-After {value!r}"
    return int(value)


async def test_rate_limits_are_shared_by_both_replicas(tmp_path):
    """Each limit trips at its threshold counted over both replicas, whichever replica the
    requests reach (alternately A and B: each replica alone sees about half of them)."""
    with replica_stack(
        tmp_path,
        shared_limits=True,
        rate_limit_exempt="",  # count 127.0.0.1 too (by default the machine itself is exempt)
        registration_rate_per_ip="6/minute",
        token_rate_per_ip="10/minute",
        token_rate_per_client="4/minute",
        authorize_rate_per_ip="5/minute",
        login_rate_per_ip="8/minute",
        login_failures_per_user="3/minute",
    ) as stack:
        replicas = (stack.a.url, stack.b.url)
        async with stack.http() as http:
            # /register, per IP: 6 a minute.
            statuses = []
            for i in range(8):
                response = await http.post(
                    f"{replicas[i % 2]}/register", json={"redirect_uris": ["http://127.0.0.1:9876/cb"], "client_name": f"c{i}"}
                )
                statuses.append(response.status_code)
                if response.status_code == 429:
                    _retry_after(response)
                    assert response.json()["error"], response.text
            assert statuses == [201] * 6 + [429, 429], statuses

            # /token, per client_id (and address): 4 a minute; per IP: 10 a minute.
            async def token(i: int, client_id: str) -> int:
                data = {"grant_type": "refresh_token", "refresh_token": "ostrt_not-a-token", "client_id": client_id}
                response = await http.post(f"{replicas[i % 2]}/token", data=data)
                if response.status_code == 429:
                    _retry_after(response)
                    assert response.json()["error"] and response.headers["cache-control"] == "no-store"
                return response.status_code

            x = [await token(i, "client-x") for i in range(5)]  # IP count 5
            assert x[:4] == [x[0]] * 4 and x[0] in (400, 401) and x[4] == 429, x
            y = [await token(i, "client-y") for i in range(4)]  # other client: its own count; IP 9
            assert 429 not in y, y
            z = [await token(i, "client-z") for i in range(2)]  # IP 10, then 11: over
            assert z[0] != 429 and z[1] == 429, z

            # /authorize, per IP: 5 a minute (counted before any validation).
            auth = [
                (await http.get(f"{replicas[i % 2]}/authorize", params={"client_id": "nobody"})).status_code for i in range(6)
            ]
            assert 429 not in auth[:5] and auth[5] == 429, auth

            # /login: failures per username (3 a minute), then per IP (8 a minute). The form is
            # fetched from one replica and posted to the other: CSRF and counters are shared.
            async def sign_in(i: int, username: str, password: str) -> httpx.Response:
                page = await http.get(f"{replicas[(i + 1) % 2]}/login")
                return await http.post(
                    f"{replicas[i % 2]}/login",
                    data={"username": username, "password": password, "csrf_token": csrf_from(page.text), "next": ""},
                )

            wrong = [(await sign_in(i, USERNAME, "wrong password")).status_code for i in range(3)]
            assert wrong == [401] * 3, wrong
            locked = await sign_in(3, USERNAME, PASSWORD)  # the right password, but locked
            assert locked.status_code == 429, locked.status_code
            _retry_after(locked)
            others = [(await sign_in(4 + i, f"nobody{i}", "x")).status_code for i in range(4)]  # IP 5..8
            assert others == [401] * 4, others
            over = await sign_in(8, "nobody-else", "x")  # IP 9
            assert over.status_code == 429 and "text/html" in over.headers["content-type"]
            _retry_after(over)
        # Each refusal is audited (once per window per replica, not per request).
        hits = Counter(r[0] for r in stack.sql("SELECT details->>'limit' FROM audit_events WHERE event = 'rate_limit.hit'"))
        assert {"register-ip", "token-client", "token-ip", "authorize-ip", "login-user", "login-ip"} <= set(hits), hits


# -- faults -------------------------------------------------------------------------------------------


async def test_kill_9_of_a_replica_during_refresh_load_loses_and_duplicates_nothing(tmp_path):
    """Six clients, each with its own grant and refresh-token chain, refresh as fast as they can,
    alternately at A and B; B is killed (SIGKILL) once the load is under way. A client whose
    request to B got no answer retries the same token at A (a lost response: the grace window
    gives it the successor B may have issued). Afterwards every client's newest token works
    exactly once at A, and every grant and chain is there once."""
    chains = 6
    with replica_stack(
        tmp_path, token_rate_per_ip=LOTS, token_rate_per_client=LOTS, registration_rate_per_ip=LOTS, authorize_rate_per_ip=LOTS
    ) as stack:
        a, b = stack.a.url, stack.b.url
        async with stack.http(timeout=15.0) as http:
            client_ids, newest = [], []
            for i in range(chains):
                reg = await register(http, base=(a, b)[i % 2], **public_client(f"chain {i}"))
                tokens = await tokens_for(
                    http, reg["client_id"], base=(a, b)[i % 2], redeem_at=(b, a)[i % 2], token_params=TOKEN, **AUTHORIZE
                )
                client_ids.append(reg["client_id"])
                newest.append(tokens["refresh_token"])
            successes = [0] * chains
            stats: Counter = Counter()
            killed = asyncio.Event()
            deadline = time.monotonic() + 30

            async def chain(i: int) -> None:
                b_gone = False
                attempts = 0
                while successes[i] < 25 and attempts < 100 and time.monotonic() < deadline:
                    attempts += 1
                    base = a if b_gone or (successes[i] + i) % 2 == 0 else b
                    try:
                        response = await refresh(http, client_ids[i], newest[i], base=base, **TOKEN)
                    except httpx.TransportError:
                        stats[f"no answer from {'A' if base == a else 'B'}"] += 1
                        b_gone = b_gone or base == b
                        continue  # keep the token: retry it (at A)
                    stats[(response.status_code, "A" if base == a else "B", "after" if killed.is_set() else "before")] += 1
                    if response.status_code != 200:
                        await asyncio.sleep(0.05)
                        continue
                    newest[i] = response.json()["refresh_token"]
                    successes[i] += 1

            async def killer() -> None:
                while sum(successes) < 40 and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                await asyncio.to_thread(stack.b.kill)
                killed.set()

            await asyncio.gather(killer(), *(chain(i) for i in range(chains)))

        assert not stack.b.alive() and stack.b.process.proc.returncode == -signal.SIGKILL
        assert stack.a.alive(), stack.tails()
        assert successes == [25] * chains, (successes, stats)
        assert not [k for k in stats if isinstance(k, tuple) and k[0] != 200], stats  # never an error answer
        assert stats[(200, "B", "before")] > 0 and stats[(200, "A", "after")] > 0, stats
        assert stats["no answer from B"] >= 1, stats  # B died with the load on it
        assert stats["no answer from A"] == 0, stats

        # Nothing lost or duplicated: one grant per client, one family per grant, each family one
        # straight line (no parent with two children), as long as the successes plus the first
        # token, nothing revoked, no reuse detected.
        grants = stack.sql("SELECT client_id, count(*) FROM grants GROUP BY client_id")
        assert sorted(grants) == sorted((cid, 1) for cid in client_ids), grants
        for i, cid in enumerate(client_ids):
            families = stack.sql("SELECT DISTINCT family_id FROM refresh_tokens WHERE client_id = :c", c=cid)
            assert len(families) == 1, families
            family = families[0][0]
            assert max(children_per_parent(stack, family).values()) == 1
            assert stack.scalar("SELECT count(*) FROM refresh_tokens WHERE family_id = :f", f=family) == successes[i] + 1
            row = row_of(stack, newest[i])
            assert row.family_id == family and row.used_at is None and row.revoked_at is None
        assert stack.scalar("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NOT NULL") == 0
        assert audit_count(stack, "token.reuse_detected") == 0

        # The newest token of each chain works, exactly once, at A.
        async with stack.http() as http:
            for cid, token in zip(client_ids, newest, strict=True):
                first = await refresh(http, cid, token, base=a, **TOKEN)
                assert first.status_code == 200, first.text
                following = await refresh(http, cid, first.json()["refresh_token"], base=a, **TOKEN)
                assert following.status_code == 200, following.text
                again = await refresh(http, cid, token, base=a, **TOKEN)  # its successor was used: reuse
                assert again.status_code == 400 and again.json()["error"] == "invalid_grant", again.text


PG_ADMIN = os.environ.get("OSTIARY_TEST_DATABASE_URL", "")


def _pg_cluster() -> str | None:
    """The version of the local cluster that OSTIARY_TEST_DATABASE_URL names, if it is one."""
    from urllib.parse import urlsplit

    parts = urlsplit(PG_ADMIN)
    if parts.hostname not in ("127.0.0.1", "localhost") or (parts.port or 5432) != 5432:
        return None
    try:
        versions = sorted(os.listdir("/etc/postgresql"))
    except OSError:
        return None
    return (
        versions[0]
        if len(versions) == 1 and subprocess.run(["which", "pg_ctlcluster"], capture_output=True).returncode == 0
        else None
    )


def _pg_ready() -> bool:
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"], timeout=10).returncode == 0


def _pg_ctl(version: str, action: str) -> None:
    done = subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"pg_ctlcluster {action}: {done.stderr}"


def _pg_make_sure_it_runs(version: str) -> None:
    if poll(_pg_ready, timeout=20, interval=0.2):
        return
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], capture_output=True, timeout=60)
    assert poll(_pg_ready, timeout=30, interval=0.2), "PostgreSQL did not come back"


async def test_postgresql_restart_during_load_is_503_and_the_replicas_recover_by_themselves(tmp_path):
    version = _pg_cluster()
    if version is None:
        pytest.skip("needs the local PostgreSQL cluster (pg_ctlcluster) on 127.0.0.1:5432")
    with replica_stack(
        tmp_path, token_rate_per_ip=LOTS, token_rate_per_client=LOTS, registration_rate_per_ip=LOTS, authorize_rate_per_ip=LOTS
    ) as stack:
        a, b = stack.a.url, stack.b.url
        pids = (stack.a.pid, stack.b.pid)
        try:
            await _load_through_a_postgres_restart(stack, version, a, b)
        finally:
            _pg_make_sure_it_runs(version)
        assert (stack.a.pid, stack.b.pid) == pids and stack.a.alive() and stack.b.alive(), stack.tails()


async def _load_through_a_postgres_restart(stack: Replicas, version: str, a: str, b: str) -> None:
    chains = 3
    seen: list[tuple[float, str, str, object]] = []  # (time, what, replica, status or exception name)
    unavailable: list[httpx.Response] = []  # the 503s of protocol endpoints
    async with stack.http(timeout=20.0) as http:
        client_ids, newest = [], []
        for i in range(chains):
            reg = await register(http, base=(a, b)[i % 2], **public_client(f"pg chain {i}"))
            tokens = await tokens_for(http, reg["client_id"], base=a, redeem_at=b, token_params=TOKEN, **AUTHORIZE)
            client_ids.append(reg["client_id"])
            newest.append(tokens["refresh_token"])
        window: dict[str, float] = {}
        stop = asyncio.Event()
        deadline = time.monotonic() + 40

        async def record(what: str, base: str, call):
            try:
                response = await call()
            except httpx.TransportError as exc:
                seen.append((time.monotonic(), what, base, type(exc).__name__))
                return None
            seen.append((time.monotonic(), what, base, response.status_code))
            if response.status_code == 503 and what in ("token", "register"):
                unavailable.append(response)
            return response

        async def chain(i: int) -> None:
            n = 0
            while not stop.is_set() and time.monotonic() < deadline and n < 2000:
                n += 1
                base = (a, b)[n % 2]
                response = await record(
                    "token", base, lambda base=base: refresh(http, client_ids[i], newest[i], base=base, **TOKEN)
                )
                if response is not None and response.status_code == 200:
                    newest[i] = response.json()["refresh_token"]
                await asyncio.sleep(0.02)

        async def others() -> None:
            n = 0
            while not stop.is_set() and time.monotonic() < deadline and n < 2000:
                n += 1
                base = (a, b)[n % 2]
                await record(
                    "register",
                    base,
                    lambda base=base: http.post(f"{base}/register", json={"redirect_uris": ["http://127.0.0.1:9876/cb"]}),
                )
                await record("jwks", base, lambda base=base: http.get(f"{base}/jwks"))
                await record("readyz", base, lambda base=base: http.get(f"{base}/readyz"))
                await record("login page", base, lambda base=base: http.get(f"{base}/login", headers={"Accept": "text/html"}))
                await asyncio.sleep(0.05)

        async def restart() -> None:
            await asyncio.sleep(1.0)
            window["start"] = time.monotonic()
            await asyncio.to_thread(_pg_ctl, version, "restart")
            window["end"] = time.monotonic()
            # Recovered: every kind of request answers 200/201 at both replicas again, by itself.
            while time.monotonic() < deadline:
                recent = [s for s in seen if s[0] > window["end"] + 0.5 and s[1] in ("token", "register")]
                ok = {(s[1], s[2]) for s in recent if s[3] in (200, 201)}
                if {(w, r) for w in ("token", "register") for r in (a, b)} <= ok:
                    window["recovered"] = time.monotonic()
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # a second more of load after recovery
            stop.set()

        await asyncio.gather(restart(), others(), *(chain(i) for i in range(chains)))

    statuses = Counter(s[3] for s in seen)
    server_errors = [s for s in seen if isinstance(s[3], int) and s[3] >= 500 and s[3] != 503]
    assert not server_errors, f"5xx other than 503: {server_errors[:10]} {statuses}"
    assert not [s for s in seen if isinstance(s[3], str)], f"no answer at all: {statuses}"
    assert "recovered" in window, f"not recovered within the deadline: {statuses}\n{stack.tails()}"
    outage = [s for s in seen if s[3] == 503 and s[1] in ("token", "register")]
    assert outage, f"the restart was never seen (no 503): {statuses}"
    assert all(window["start"] - 0.5 <= s[0] <= window["recovered"] for s in outage), "503 outside the restart"
    assert window["recovered"] - window["end"] < 15, window
    # RFC 6749-shaped errors with Retry-After: a client knows to come back.
    for response in unavailable:
        assert response.headers.get("retry-after", "").isdigit(), response.headers
        assert response.json()["error"] == "temporarily_unavailable", response.text
        assert response.headers.get("cache-control") == "no-store", response.headers
    # The sign-in page: 200, or during the outage a readable 503 page (never a stack trace).
    assert {s[3] for s in seen if s[1] == "login page"} <= {200, 303, 503}
    # Keys and metadata are served from memory through the outage.
    assert all(s[3] == 200 for s in seen if s[1] == "jwks"), Counter(s[3] for s in seen if s[1] == "jwks")

    # Nothing lost: each chain's newest token works (no family revoked by a retry after a 503).
    assert stack.scalar("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NOT NULL") == 0
    async with stack.http() as http:
        for cid, token in zip(client_ids, newest, strict=True):
            response = await refresh(http, cid, token, base=b, **TOKEN)
            assert response.status_code == 200, response.text


# -- graceful shutdown ---------------------------------------------------------------------------------


def _can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _read_http_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One whole HTTP/1.1 response (Content-Length framed), read until the server closes."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"incomplete response head: {data[:300]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert int(headers["content-length"]) == len(body), f"truncated body: {headers} {len(body)} bytes"
    return status, headers, body


def test_sigterm_lets_the_in_flight_request_finish_and_refuses_new_connections(tmp_path):
    """Item 7: a /token request whose body is still arriving when B gets SIGTERM is answered in
    full (and its refresh committed: the successor works at A); B accepts no new connection
    meanwhile, and exits cleanly afterwards."""
    from urllib.parse import urlencode

    with replica_stack(tmp_path) as stack:

        async def setup() -> tuple[str, str]:
            async with stack.http() as http:
                reg = await register(http, base=stack.a.url, **public_client())
                tokens = await tokens_for(
                    http, reg["client_id"], base=stack.a.url, redeem_at=stack.b.url, token_params=TOKEN, **AUTHORIZE
                )
                return reg["client_id"], tokens["refresh_token"]

        cid, token = asyncio.run(setup())
        body = urlencode({"grant_type": "refresh_token", "refresh_token": token, "client_id": cid, "resource": RESOURCE}).encode()
        head = (
            f"POST /token HTTP/1.1\r\nHost: {stack.host}\r\nAccept: application/json\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", stack.b.port), timeout=10) as sock:
            sock.sendall(head + body[:20])
            time.sleep(0.5)  # B has the headers and waits for the rest of the body
            stack.b.process.proc.send_signal(signal.SIGTERM)
            assert poll(lambda: not _can_connect(stack.b.port), timeout=5, interval=0.05), "B still accepts connections"
            assert stack.b.alive(), "B exited with a request in flight"
            time.sleep(0.5)
            sock.sendall(body[20:])
            status, headers, payload = _read_http_response(sock, timeout=25)
        assert status == 200, payload
        assert headers.get("connection") == "close", headers  # no further request on it
        successor = json.loads(payload)["refresh_token"]
        # A clean exit: uvicorn finishes its shutdown, then re-raises SIGTERM on itself (so the
        # status says "terminated by SIGTERM", 143 to a shell, as orchestrators expect).
        assert stack.b.process.proc.wait(timeout=25) in (0, -signal.SIGTERM), stack.b.process.tail()
        assert "Application shutdown complete" in stack.b.process.tail(), stack.b.process.tail()
        assert not _can_connect(stack.b.port)

        async def check() -> None:
            async with stack.http() as http:
                response = await refresh(http, cid, successor, base=stack.a.url, **TOKEN)
                assert response.status_code == 200, response.text

        asyncio.run(check())
