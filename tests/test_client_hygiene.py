"""Registration hygiene (docs/decisions.md#unused-registered-clients-are-pruned): `last_used_at`
is tracked per client; dynamically registered clients never used within 24 h of registering, and
those idle for 90 days with no live refresh token, are deleted by the periodic job and by
`ostiary clients prune`; operator-created and metadata-document clients never are. A pruned
client gets 401 `invalid_client` at /token, which makes MCP clients register again (TypeScript
SDK: drop credentials and re-register)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, text

from app.models import Client
from app.models.client import KIND_METADATA_DOCUMENT
from app.services import jobs
from app.services.clients import prune
from tests.support import (
    admin_client,
    audit_events,
    exchange,
    pkce,
    refresh,
    register,
    run_ostiary,
    signed_in_flow,
    tokens_for,
)

pytestmark = pytest.mark.anyio

HOUR, DAY = 3600, 24 * 3600


def row(runtime, client_id: str) -> Client | None:
    with runtime.sessions() as db:
        return db.scalar(select(Client).where(Client.id == client_id))


def client_ids(runtime) -> set[str]:
    with runtime.sessions() as db:
        return set(db.scalars(select(Client.id)))


def set_times(runtime, client_id: str, *, created_ago: int, used_ago: int | None) -> None:
    t = int(time.time())
    with runtime.engine.begin() as conn:
        conn.execute(
            text("UPDATE clients SET created_at = :c, last_used_at = :u WHERE id = :id"),
            {"c": t - created_ago, "u": None if used_ago is None else t - used_ago, "id": client_id},
        )


def sql(runtime, statement: str, **params) -> None:
    with runtime.engine.begin() as conn:
        conn.execute(text(statement), params)


# -- last_used_at -------------------------------------------------------------------------------


async def test_last_used_at_is_set_on_token_issuance(client, runtime):
    """The code exchange records when the client was last used; a refresh updates it once it is
    stale (written at most hourly)."""
    reg = await signed_in_flow(client, runtime)
    assert row(runtime, reg["client_id"]).last_used_at is None
    before = int(time.time())
    tokens = await tokens_for(client, reg["client_id"])
    used = row(runtime, reg["client_id"]).last_used_at
    assert used is not None and before - 1 <= used <= int(time.time()) + 1

    set_times(runtime, reg["client_id"], created_ago=10 * DAY, used_ago=2 * HOUR)
    refreshed = await refresh(client, reg["client_id"], tokens["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert row(runtime, reg["client_id"]).last_used_at >= before


# -- the pruning rules --------------------------------------------------------------------------


async def prune_scenario(client, runtime) -> dict[str, dict]:
    """One client per rule; returns {name: {"id", "refresh_token", "pruned"}}."""
    cases: dict[str, dict] = {}
    flow_reg = await signed_in_flow(client, runtime, client_name="idle with live token")
    cases["idle 91 d with a live refresh token"] = {
        "id": flow_reg["client_id"],
        "refresh_token": (await tokens_for(client, flow_reg["client_id"]))["refresh_token"],
        "pruned": False,
    }

    async def registered(name: str, pruned: bool, *, with_token: bool = False) -> str:
        reg = await register(client, client_name=name)
        cases[name] = {"id": reg["client_id"], "pruned": pruned}
        if with_token:
            cases[name]["refresh_token"] = (await tokens_for(client, reg["client_id"]))["refresh_token"]
        return reg["client_id"]

    never = await registered("never used, registered 25 h ago", True)
    set_times(runtime, never, created_ago=25 * HOUR, used_ago=None)
    fresh = await registered("never used, registered 1 h ago", False)
    set_times(runtime, fresh, created_ago=HOUR, used_ago=None)
    idle = await registered("idle 91 d, no refresh token", True)
    set_times(runtime, idle, created_ago=200 * DAY, used_ago=91 * DAY)
    expired = await registered("idle 91 d, refresh token expired", True, with_token=True)
    sql(runtime, "UPDATE refresh_tokens SET expires_at = :t WHERE client_id = :id", t=int(time.time()) - DAY, id=expired)
    set_times(runtime, expired, created_ago=200 * DAY, used_ago=91 * DAY)
    revoked = await registered("idle 91 d, refresh token revoked", True, with_token=True)
    sql(runtime, "UPDATE refresh_tokens SET revoked_at = :t WHERE client_id = :id", t=int(time.time()) - DAY, id=revoked)
    set_times(runtime, revoked, created_ago=200 * DAY, used_ago=91 * DAY)
    recent = await registered("used 89 d ago", False)
    set_times(runtime, recent, created_ago=200 * DAY, used_ago=89 * DAY)
    set_times(runtime, flow_reg["client_id"], created_ago=200 * DAY, used_ago=91 * DAY)

    admin_id, _ = admin_client(runtime, confidential=False, name="operator client")
    set_times(runtime, admin_id, created_ago=200 * DAY, used_ago=None)
    cases["admin-created, never used"] = {"id": admin_id, "pruned": False}
    admin_idle, _ = admin_client(runtime, confidential=False, name="operator client 2")
    set_times(runtime, admin_idle, created_ago=200 * DAY, used_ago=120 * DAY)
    cases["admin-created, idle 120 d"] = {"id": admin_idle, "pruned": False}

    document_id = "https://client.example.com/oauth/metadata.json"
    with runtime.sessions() as db:
        db.add(
            Client(
                id=document_id,
                kind=KIND_METADATA_DOCUMENT,
                name="Document client",
                token_endpoint_auth_method="none",
                redirect_uris=["http://127.0.0.1:9876/callback"],
                grant_types=["authorization_code"],
                response_types=["code"],
                client_metadata={},
                metadata_expires_at=int(time.time()) - DAY,
            )
        )
        db.commit()
    set_times(runtime, document_id, created_ago=200 * DAY, used_ago=None)
    # Cached documents are pruned like registrations (fetched again if the app comes back).
    cases["metadata document, never used"] = {"id": document_id, "pruned": True}
    return cases


async def run_prune_function(runtime, database_url) -> None:
    with runtime.sessions() as db:
        prune(db, runtime.settings)
        db.commit()


async def run_prune_cli(runtime, database_url) -> None:
    result = run_ostiary(database_url, "clients", "prune")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pruned 5 client(s)"), result.stdout


@pytest.mark.parametrize(
    "run_prune",
    [pytest.param(run_prune_function, id="app.services.clients.prune"), pytest.param(run_prune_cli, id="ostiary clients prune")],
)
async def test_pruning_rules(client, runtime, clean_db, run_prune):
    """docs/decisions.md#unused-registered-clients-are-pruned: never used within 24 h of
    registering -> deleted; idle 90 days with no live refresh token -> deleted, for registered
    and metadata-document clients alike; everything else, and every operator-created client,
    kept. Each deletion and the run are audited."""
    cases = await prune_scenario(client, runtime)
    await run_prune(runtime, clean_db)
    remaining = client_ids(runtime)
    for name, case in cases.items():
        assert (case["id"] not in remaining) is case["pruned"], name

    pruned = {c["id"] for c in cases.values() if c["pruned"]}
    deleted = {e.client_id: e.details.get("reason") for e in audit_events(runtime, "client.deleted")}
    assert set(deleted) == pruned
    assert deleted[cases["never used, registered 25 h ago"]["id"]] == "never_used"
    assert deleted[cases["idle 91 d, no refresh token"]["id"]] == "idle"
    assert [e.details.get("count") for e in audit_events(runtime, "client.pruned")] == [5]


async def test_pruned_client_gets_invalid_client_at_the_token_endpoint(client, runtime):
    """docs/decisions.md#unknown-or-deleted-clients-get-a-401: a reaped client gets 401
    invalid_client (not invalid_grant), which tells MCP clients to register again; its refresh
    token and the code exchange both say so."""
    cases = await prune_scenario(client, runtime)
    with runtime.sessions() as db:
        prune(db, runtime.settings)
        db.commit()
    expired = cases["idle 91 d, refresh token expired"]
    response = await refresh(client, expired["id"], expired["refresh_token"])
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    verifier, _ = pkce()
    never = cases["never used, registered 25 h ago"]["id"]
    response = await exchange(client, never, "some-code", verifier)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"

    kept = cases["idle 91 d with a live refresh token"]
    response = await refresh(client, kept["id"], kept["refresh_token"])
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "settings_overrides",
    [pytest.param({"prune_unused_clients_after": 600, "prune_idle_clients_after": 7 * DAY}, id="10 min / 7 days")],
)
async def test_pruning_thresholds_follow_the_settings(client, runtime):
    never = (await register(client))["client_id"]
    set_times(runtime, never, created_ago=700, used_ago=None)
    idle = (await register(client))["client_id"]
    set_times(runtime, idle, created_ago=30 * DAY, used_ago=8 * DAY)
    young = (await register(client))["client_id"]
    set_times(runtime, young, created_ago=500, used_ago=None)
    with runtime.sessions() as db:
        assert sorted(prune(db, runtime.settings)) == sorted([never, idle])
        db.commit()
    assert client_ids(runtime) == {young}


# -- the periodic job -------------------------------------------------------------------------------


async def test_scheduled_prune_runs_once_per_interval_across_calls(client, runtime):
    """The job claims its run in `job_runs`: two calls within the hour (two replicas' loops)
    prune once; after the interval it runs again."""
    first = (await register(client))["client_id"]
    set_times(runtime, first, created_ago=25 * HOUR, used_ago=None)
    jobs.run_once(runtime.jobs())
    assert row(runtime, first) is None

    second = (await register(client))["client_id"]
    set_times(runtime, second, created_ago=25 * HOUR, used_ago=None)
    jobs.run_once(runtime.jobs())
    assert row(runtime, second) is not None  # claimed less than an hour ago: skipped
    assert len(audit_events(runtime, "client.pruned")) == 1

    sql(runtime, "UPDATE job_runs SET last_run_at = last_run_at - 3601 WHERE name = 'prune-clients'")
    jobs.run_once(runtime.jobs())
    assert row(runtime, second) is None
    assert len(audit_events(runtime, "client.pruned")) == 2


def test_client_ids_never_start_with_a_dash():
    """A client id is typed on command lines (`ostiary clients trust ID`): never an option."""
    from app.services.clients import new_client_id

    ids = [new_client_id() for _ in range(2000)]
    assert all(i[0].isalnum() and len(i) == 24 for i in ids)
    assert len(set(ids)) == len(ids)
