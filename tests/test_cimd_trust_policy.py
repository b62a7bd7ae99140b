"""The trust policy for the hosts of Client ID Metadata Document client_ids (CIMD
draft-ietf-oauth-client-id-metadata-document-02 §8.9, Client ID Domain Trust; the MCP security
best practices; docs/decisions.md#cimd-client-host-trust-policy).

A deny rule always refuses; once any allow rule exists (settings or console), a host that matches
no allow rule is refused; otherwise every host passes. The check comes before any fetch, and a
client stored from a host refused later is refused too: an error page at /authorize, an RFC 6749
`invalid_client` at /token. Only the network edge is faked (httpx.MockTransport)."""

from __future__ import annotations

import time

import httpx
import pytest
from sqlalchemy import event, select

from app.main import create_app
from app.models import CimdHostRule
from app.oauth import cimd
from app.oauth.cimd import HostRules, client_host, host_matches, host_refusal
from app.services.clients import add_host_rule
from app.settings import SettingsError, host_pattern, load_settings
from tests.support import (
    ISSUER,
    REDIRECT,
    audit_events,
    create_user,
    login,
    refresh,
    register,
    run_ostiary,
    signed_in,
    submit,
    tokens_for,
)
from tests.test_cimd import CLIENT_ID, MetadataHosts, assert_error_page, document, full_flow, start, stored

pytestmark = pytest.mark.anyio

OTHER_ID = "https://other.example.net/client.json"


@pytest.fixture
def hosts() -> MetadataHosts:
    hosts = MetadataHosts()
    hosts.serve()
    hosts.serve(document(client_id=OTHER_ID), url=OTHER_ID)
    return hosts


@pytest.fixture
def app(settings, hosts):
    """The real app, with only its outbound transport replaced by `hosts`."""
    application = create_app(settings, run_jobs=False, fetch_transport=httpx.MockTransport(hosts.handler))
    yield application
    application.state.runtime.engine.dispose()


async def admin_browser(runtime, new_client) -> httpx.AsyncClient:
    create_user(runtime, "root", admin=True)
    admin = new_client()
    assert (await login(admin, "root", next_url="/admin")).status_code == 303
    return admin


def assert_refused_page(response: httpx.Response, host: str) -> None:
    assert_error_page(response, host, "administrator")


# -- the policy, as pure functions ------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "pattern", "matches"),
    [
        pytest.param("example.com", "example.com", True, id="exact host"),
        pytest.param("app.example.com", "example.com", False, id="exact pattern: not its subdomains"),
        pytest.param("app.example.com", "*.example.com", True, id="wildcard: a subdomain"),
        pytest.param("a.b.example.com", "*.example.com", True, id="wildcard: any depth"),
        pytest.param("example.com", "*.example.com", False, id="wildcard: not the apex"),
        pytest.param("badexample.com", "*.example.com", False, id="wildcard: a label boundary"),
        pytest.param("example.com.evil.net", "example.com", False, id="exact: no prefix match"),
        pytest.param("10.1.2.3", "*.1.2.3", False, id="wildcard: never an IP address"),
        pytest.param("192.0.2.7", "192.0.2.7", True, id="an IP address, exactly"),
    ],
)
def test_host_patterns_match_exactly_or_subdomains_without_the_apex(host, pattern, matches):
    assert host_matches(host, host_pattern(pattern)) is matches


@pytest.mark.parametrize(
    ("allow", "deny", "host", "refusal"),
    [
        pytest.param((), (), "anything.example", None, id="no rule: every host passes (the default)"),
        pytest.param((), ("*.evil.example",), "app.evil.example", "denied", id="deny list: a match refuses"),
        pytest.param((), ("*.evil.example",), "good.example", None, id="deny list: the rest passes"),
        pytest.param(("*.good.example",), (), "app.good.example", None, id="allow list: a match passes"),
        pytest.param(("*.good.example",), (), "other.example", "not allowed", id="allow list: the rest is refused"),
        pytest.param(("*.good.example",), ("bad.good.example",), "bad.good.example", "denied", id="deny wins over allow"),
    ],
)
def test_deny_refuses_and_any_allow_rule_makes_an_allow_list(allow, deny, host, refusal):
    assert host_refusal(host, HostRules(allow=allow, deny=deny)) == refusal


@pytest.mark.parametrize(
    ("client_id", "host"),
    [
        pytest.param("https://Client.Example.COM/c.json", "client.example.com", id="case"),
        pytest.param("https://client.example.com./c.json", "client.example.com", id="a trailing dot"),
        pytest.param("https://client.example.com:8443/c.json", "client.example.com", id="the port is ignored"),
        pytest.param("https://bücher.example/c.json", "xn--bcher-kva.example", id="IDNA A-label"),
    ],
)
def test_the_host_is_compared_in_canonical_form(client_id, host):
    """Spelling the host differently cannot step around a deny rule."""
    assert client_host(client_id) == host


@pytest.mark.parametrize("value", ["*", "*.", "a*b.example", "https://example.com", "ex ample.com", "a..b"])
def test_an_invalid_pattern_in_the_settings_stops_the_server_at_start(value):
    with pytest.raises(SettingsError) as raised:
        load_settings(issuer=ISSUER, secret_keys="x" * 32, cimd_denied_client_hosts=f"good.example,{value}")
    assert raised.value.name == "OSTIARY_CIMD_DENIED_CLIENT_HOSTS"


# -- /authorize: refused before any fetch ---------------------------------------------------------


DENY_EXAMPLE = {"cimd_denied_client_hosts": ["*.example.com"]}


@pytest.mark.parametrize(
    ("settings_overrides", "client_id"),
    [
        pytest.param(DENY_EXAMPLE, CLIENT_ID, id="as written"),
        pytest.param(DENY_EXAMPLE, "https://CLIENT.example.com./oauth/client-metadata.json", id="another spelling of the host"),
    ],
)
async def test_a_denied_host_gets_an_error_page_and_no_fetch(client, runtime, hosts, settings_overrides, client_id):
    await signed_in(client, runtime)
    assert_refused_page(await start(client, client_id), "client.example.com")
    assert hosts.requests == []
    assert stored(runtime, client_id) is None
    event_ = audit_events(runtime, "client.host_refused")[-1]
    assert event_.client_id == client_id
    assert event_.details == {"host": "client.example.com", "reason": "denied"}


@pytest.mark.parametrize("settings_overrides", [{"cimd_allowed_client_hosts": ["*.example.com"]}])
async def test_an_allow_list_accepts_its_hosts_and_refuses_the_rest_unfetched(client, runtime, hosts, settings_overrides):
    await signed_in(client, runtime)
    assert (await full_flow(client))["access_token"]
    assert_refused_page(await start(client, OTHER_ID), "other.example.net")
    assert hosts.fetches(OTHER_ID) == 0
    assert audit_events(runtime, "client.host_refused")[-1].details["reason"] == "not allowed"


@pytest.mark.parametrize("settings_overrides", [{"cimd_allowed_client_hosts": ["*.nothing-else.example"]}])
async def test_the_policy_leaves_registered_clients_alone(client, runtime, settings_overrides):
    """Dynamically registered (and operator-created) clients have no client_id host."""
    await signed_in(client, runtime)
    reg = await register(client, redirect_uris=[REDIRECT])
    assert (await tokens_for(client, reg["client_id"]))["access_token"]


# -- a client stored before its host was refused -----------------------------------------------------


async def test_a_stored_client_of_a_host_denied_later_is_refused_at_authorize_and_token(client, runtime, hosts, new_client):
    """The console adds a deny rule: the client's stored copy is not used any more, /authorize
    shows a page, /token answers invalid_client (401, an RFC 6749 body) without a fetch. Nothing
    issued is revoked: removing the rule lets the same refresh token work again."""
    await signed_in(client, runtime)
    token = await full_flow(client)
    admin = await admin_browser(runtime, new_client)
    added = await submit(
        admin, "/admin/clients/hosts", {"host": "client.example.com", "rule": "deny", "note": "phishing"}, csrf_page="/admin"
    )
    assert (added.status_code, added.headers["location"]) == (303, "/admin/clients?done=host-added")
    fetched = hosts.fetches()

    assert_refused_page(await start(client), "client.example.com")
    refused = await refresh(client, CLIENT_ID, token["refresh_token"])
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"] == "invalid_client"
    assert "client.example.com" in refused.json()["error_description"]
    assert refused.headers["cache-control"] == "no-store"
    assert hosts.fetches() == fetched
    assert [e.client_id for e in audit_events(runtime, "client.host_refused")] == [CLIENT_ID, CLIENT_ID]
    assert stored(runtime) is not None  # refused, not deleted

    removed = await submit(admin, "/admin/clients/hosts/remove", {"host": "client.example.com"}, csrf_page="/admin")
    assert (removed.status_code, removed.headers["location"]) == (303, "/admin/clients?done=host-removed")
    assert (await refresh(client, CLIENT_ID, token["refresh_token"])).status_code == 200


async def test_an_unseen_url_of_a_denied_host_at_token_is_unknown_and_not_recorded(client, runtime, hosts):
    """/token never fetches and records nothing for a client it never saw: no audit row anyone
    could write by posting made-up client_ids."""
    with runtime.sessions() as db:
        add_host_rule(db, "*.example.com", "deny")
        db.commit()
    response = await refresh(client, CLIENT_ID, "ostrt_made-up")
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")
    assert audit_events(runtime, "client.host_refused") == []
    assert hosts.requests == []


# -- the console --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings_overrides", [{"cimd_allowed_client_hosts": ["*.example.com"], "cimd_denied_client_hosts": ["bad.example.com"]}]
)
async def test_the_console_lists_settings_rules_read_only_and_manages_its_own(runtime, new_client, settings_overrides):
    admin = await admin_browser(runtime, new_client)
    page = (await admin.get("/admin/clients")).text
    assert 'data-host-rule="*.example.com" data-source="settings"' in page
    assert 'data-host-rule="bad.example.com" data-source="settings"' in page
    assert 'value="*.example.com"' not in page  # no remove form for a rule from the settings
    assert 'data-host-policy="allow-list"' in page

    added = await submit(
        admin, "/admin/clients/hosts", {"host": "*.Partner.example", "rule": "allow", "note": "our partner"}, csrf_page="/admin"
    )
    assert added.status_code == 303  # not the first allow rule: no confirmation
    page = (await admin.get("/admin/clients")).text
    assert 'data-host-rule="*.partner.example" data-source="console"' in page and "our partner" in page
    again = await submit(admin, "/admin/clients/hosts", {"host": "*.partner.example", "rule": "deny"}, csrf_page="/admin")
    assert again.status_code == 400 and "has a rule already" in again.text
    event_ = audit_events(runtime, "client.host_rule_added")[-1]
    assert event_.actor_id is not None
    assert event_.details == {"host": "*.partner.example", "rule": "allow", "via": "console", "note": "our partner"}


async def test_the_first_allow_rule_and_the_last_one_removed_ask_for_confirmation(runtime, new_client):
    """Both turn the policy around (from every host to an allow list, and back)."""
    admin = await admin_browser(runtime, new_client)
    assert 'data-host-policy="open"' in (await admin.get("/admin/clients")).text
    fields = {"host": "*.example.com", "rule": "allow", "note": ""}
    ask = await submit(admin, "/admin/clients/hosts", fields, csrf_page="/admin")
    assert ask.status_code == 200 and "Accept only apps from *.example.com?" in ask.text
    with runtime.sessions() as db:
        assert db.scalars(select(CimdHostRule)).all() == []
    assert (await submit(admin, "/admin/clients/hosts", fields, confirm=True, csrf_page="/admin")).status_code == 303
    assert 'data-host-policy="allow-list"' in (await admin.get("/admin/clients")).text

    ask = await submit(admin, "/admin/clients/hosts/remove", {"host": "*.example.com"}, csrf_page="/admin")
    assert ask.status_code == 200 and "Remove the last allow rule" in ask.text
    done = await submit(admin, "/admin/clients/hosts/remove", {"host": "*.example.com"}, confirm=True, csrf_page="/admin")
    assert done.status_code == 303
    assert audit_events(runtime, "client.host_rule_removed")[-1].details["host"] == "*.example.com"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        pytest.param({"host": "https://example.com/x", "rule": "deny"}, "is not a host name", id="a URL, not a host"),
        pytest.param({"host": "*", "rule": "deny"}, "is not a host name", id="everything"),
        pytest.param({"host": "example.com", "rule": "maybe"}, "allow or deny", id="an unknown rule"),
    ],
)
async def test_the_console_refuses_bad_rules_with_a_page(runtime, new_client, data, problem):
    admin = await admin_browser(runtime, new_client)
    response = await submit(admin, "/admin/clients/hosts", data, csrf_page="/admin")
    assert response.status_code == 400 and problem in response.text
    with runtime.sessions() as db:
        assert db.scalars(select(CimdHostRule)).all() == []


async def test_console_host_forms_need_the_csrf_token(runtime, new_client):
    admin = await admin_browser(runtime, new_client)
    response = await admin.post("/admin/clients/hosts", data={"host": "example.com", "rule": "deny"})
    assert response.status_code == 400 and "Form expired" in response.text
    with runtime.sessions() as db:
        assert db.scalars(select(CimdHostRule)).all() == []


# -- cheap on the hot path, and shared by replicas ------------------------------------------------------


async def test_token_requests_do_not_read_the_rules_each_time(client, runtime, hosts):
    """The console's rules are kept in memory for a few seconds: refreshes add no query."""
    await signed_in(client, runtime)
    token = await full_flow(client)
    statements: list[str] = []
    event.listen(runtime.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(3):
        response = await refresh(client, CLIENT_ID, token["refresh_token"])
        assert response.status_code == 200, response.text
        token = response.json()
    assert statements  # the listener saw the refreshes' queries
    assert [s for s in statements if "cimd_host_rules" in s] == []


async def test_a_rule_written_elsewhere_applies_within_the_refresh_interval(client, runtime, hosts, monkeypatch):
    """Another replica (or `ostiary clients hosts deny`) wrote the rule: this process reads the
    rules again after RULES_REFRESH seconds (shortened here)."""
    monkeypatch.setattr(cimd, "RULES_REFRESH", 0.3)
    await signed_in(client, runtime)
    token = await full_flow(client)
    with runtime.sessions() as db:
        add_host_rule(db, "client.example.com", "deny", via="cli")
        db.commit()
    time.sleep(0.4)
    assert (await refresh(client, CLIENT_ID, token["refresh_token"])).status_code == 401


def test_the_cli_allows_lists_and_removes_host_rules(clean_db):
    allowed = run_ostiary(clean_db, "clients", "hosts", "allow", "*.Example.com", "--note", "ours")
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == "*.example.com: allow" and "first allow rule" in allowed.stderr
    listed = run_ostiary(clean_db, "clients", "hosts", "list", OSTIARY_CIMD_DENIED_CLIENT_HOSTS="bad.example.com")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split()[:4] for line in listed.stdout.splitlines()]
    assert ["*.example.com", "allow", "console:", "ours"] in rows
    assert ["bad.example.com", "deny", "OSTIARY_CIMD_DENIED_CLIENT_HOSTS", "-"] in rows
    assert "only hosts an allow rule matches are accepted" in listed.stdout
    assert run_ostiary(clean_db, "clients", "hosts", "remove", "*.example.com").returncode == 0
    missing = run_ostiary(clean_db, "clients", "hosts", "remove", "*.example.com")
    assert missing.returncode == 2 and "no console rule" in missing.stderr
