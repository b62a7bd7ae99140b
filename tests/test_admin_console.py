"""The admin console, over HTTP on the real app and database.

Who may do what: anonymous browsers are sent to sign in, signed-in users who are not admins get
403, admins get the page; every state-changing form is POST with a CSRF token, destructive ones
ask for confirmation, and every admin action is audited with the acting admin. Revoking a
consent, disabling a user or deleting a client takes effect at /token and /introspect at once
(RFC 6749 §5.2 invalid_grant, RFC 7662 §2.2 active=false). The access policy by groups is
proven end to end: consent page, token scope, refresh.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from sqlalchemy import select, text

from app.models import AuditEvent, Client, Consent, User
from app.models.client import KIND_DYNAMIC, KIND_METADATA_DOCUMENT
from app.services import audit as audit_log
from app.stores import clients as clients_store
from app.stores import consents as consents_store
from app.stores import users as users_store
from tests.support import (
    ISSUER,
    PASSWORD,
    REDIRECT,
    RESOURCE,
    ROOT,
    admin_client,
    audit_events,
    authorize_params,
    cli_env,
    create_resource,
    create_user,
    csrf_from,
    database_rows,
    database_text,
    exchange,
    grant_rows,
    introspect,
    login,
    page_csrf,
    pkce,
    query,
    refresh,
    register,
    submit,
    tokens_for,
    user_row,
)

pytestmark = pytest.mark.anyio

NAV = {
    "Overview": "/admin",
    "Consents": "/admin/consents",
    "Users": "/admin/users",
    "Clients": "/admin/clients",
    "MCP servers": "/admin/resources",
    "Signing keys": "/admin/keys",
    "Audit log": "/admin/audit",
}


@pytest.fixture
async def world(client, runtime, new_client, settings):
    """An admin `root` and a user `alice`, each signed in in their own browser; the default
    MCP server; a registered public client holding alice's consent and tokens."""
    root = create_user(runtime, "root", admin=True)
    alice = create_user(runtime, "alice")
    create_resource(runtime)
    reg = await register(client)
    assert (await login(client)).status_code == 303
    tokens = await tokens_for(client, reg["client_id"], scope="mcp:read")
    admin = new_client()
    assert (await login(admin, "root")).status_code == 303
    grant = grant_rows(runtime)[0]
    rs_id, rs_secret = admin_client(runtime)  # the MCP server's introspection credentials
    return SimpleNamespace(
        root=root,
        alice=alice,
        user=client,
        admin=admin,
        anonymous=new_client(),
        client_id=reg["client_id"],
        tokens=tokens,
        grant=grant,
        resource_id=grant.resource_id,
        rs=(rs_id, rs_secret),
        db_url=settings.database_url.get_secret_value(),
    )


async def token_is_active(w, token: str) -> bool:
    response = await introspect(w.anonymous, token, w.rs)
    assert response.status_code == 200, response.text
    return response.json()["active"]


def ids(w) -> dict[str, str]:
    return {
        "alice": w.alice.id,
        "client": quote(w.client_id, safe=""),
        "client_id": w.client_id,
        "resource": str(w.resource_id),
        "grant": str(w.grant.id),
    }


def resource_form(uri: str, name: str, scopes: list[tuple[str, str, bool, str]], ttl: str = "") -> dict:
    data = {"uri": uri, "name": name, "token_ttl": ttl}
    for i, (scope, description, default, groups) in enumerate(scopes):
        data[f"scope-{i}-name"] = scope
        data[f"scope-{i}-description"] = description
        data[f"scope-{i}-groups"] = groups
        if default:
            data[f"scope-{i}-default"] = "on"
    return data


# -- who may see and do what -----------------------------------------------------------------

PAGES = [
    "/admin",
    "/admin/consents",
    "/admin/consents?user=alice",
    "/admin/users",
    "/admin/users?q=ali",
    "/admin/users/{alice}",
    "/admin/clients",
    "/admin/clients?unused=1",
    "/admin/clients/detail?id={client}",
    "/admin/resources",
    "/admin/resources/new",
    "/admin/resources/{resource}",
    "/admin/keys",
    "/admin/idps",
    "/admin/audit",
    "/admin/audit?event=login.succeeded",
]

SCOPES_FORM = resource_form("https://other.example.com/mcp", "Other", [("a:read", "Read", True, "")])
ACTIONS = [
    ("/admin/consents/revoke", {"grant_id": "{grant}"}),
    ("/admin/consents/revoke-all", {"user_id": "{alice}"}),
    ("/admin/users", {"username": "mallory", "password_mode": "set", "password": PASSWORD}),
    ("/admin/users/{alice}/disable", {}),
    ("/admin/users/{alice}/enable", {}),
    ("/admin/users/{alice}/admin", {"is_admin": "yes"}),
    ("/admin/users/{alice}/groups", {"groups": "writers"}),
    ("/admin/users/{alice}/reset-mfa", {}),
    ("/admin/users/{alice}/password-link", {}),
    ("/admin/clients/delete", {"client_id": "{client_id}"}),
    ("/admin/clients/trust", {"client_id": "{client_id}", "trusted": "1"}),
    ("/admin/resources/new", SCOPES_FORM),
    ("/admin/resources/{resource}", SCOPES_FORM),
    ("/admin/keys/rotate", {"force": "on"}),
    ("/admin/idps", {"name": "acme", "issuer": "https://idp.acme.example", "id_jag": "on"}),
    ("/admin/clients/machine", {"name": "agent", "resource": RESOURCE, "scopes": "mcp:read"}),
]


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_anonymous_is_sent_to_sign_in(world, path):
    path = path.format(**ids(world))
    response = await world.anonymous.get(path)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=" + quote(path, safe="")


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_is_forbidden_to_a_user_who_is_not_admin(world, path):
    response = await world.user.get(path.format(**ids(world)), headers={"accept": "text/html"})
    assert response.status_code == 403
    assert "Only administrators" in response.text


@pytest.mark.parametrize("path", PAGES)
async def test_every_page_renders_for_an_admin_with_the_main_navigation(world, path):
    response = await world.admin.get(path.format(**ids(world)))
    assert response.status_code == 200, response.text
    assert '<body class="wide">' in response.text
    for label, href in NAV.items():
        assert f'href="{href}"' in response.text and f">{label}</a>" in response.text
    assert response.text.count('aria-current="page"') == 1
    # RFC 6749 §10.13 / RFC 9700 §4.16: console pages are not framed, cached or leaked.
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(("path", "data"), ACTIONS, ids=[a[0] for a in ACTIONS])
async def test_every_action_refuses_anonymous_users_and_missing_csrf(world, path, data):
    """Confirmed and complete requests, so that only the gate or the CSRF check stops them."""
    values = ids(world)
    path = path.format(**values)
    data = {k: v.format(**values) for k, v in data.items()} | {"confirm": "yes"}
    before = database_rows(world.db_url)

    anonymous = await world.anonymous.post(path, data=data)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/login?next=%2Fadmin"

    user = await world.user.post(path, data=data | {"csrf_token": await page_csrf(world.user)})
    assert user.status_code == 403

    no_csrf = await world.admin.post(path, data=data)
    assert no_csrf.status_code == 400
    wrong_csrf = await world.admin.post(path, data=data | {"csrf_token": await page_csrf(world.user)})
    assert wrong_csrf.status_code == 400  # a token from another session is useless

    assert database_rows(world.db_url) == before


async def test_changes_are_post_only(world):
    for path in ("/admin/consents/revoke", "/admin/users/{alice}/disable", "/admin/clients/delete", "/admin/keys/rotate"):
        response = await world.admin.get(path.format(**ids(world)))
        assert response.status_code in (404, 405)


# -- overview ---------------------------------------------------------------------------------


async def test_overview_counts_scope_usage_and_daily_chart(world, runtime):
    with runtime.sessions() as db:
        audit_log.record(db, "login.failed", username="nobody", reason="bad_credentials")
        db.commit()
    page = (await world.admin.get("/admin")).text
    assert re.search(r'data-count="users">2<', page)
    assert re.search(r'data-count="clients">2<', page)  # the dynamic one and the resource server's
    assert "1 dynamic, 0 metadata document, 1 admin-created" in page
    assert re.search(r'data-count="grants">1<', page)
    assert re.search(r'data-count="issued">1<', page)
    assert re.search(r'data-count="signin-failures">1<', page)
    # Scope usage: which scopes are granted to how many clients and users.
    usage = page[page.index(f'data-resource="{RESOURCE}"') :]
    assert re.search(r'data-scope="mcp:read">\s*<td><code>mcp:read</code></td>\s*<td>1</td><td>1</td><td>1</td>', usage)
    assert re.search(r'data-scope="mcp:write" class="muted">\s*<td><code>mcp:write</code></td>\s*<td>0</td>', usage)
    # The chart: inline SVG, 14 days x (issued, failures), today's bars not empty.
    svg = page[page.index("<svg") : page.index("</svg>")]
    assert svg.count('class="issued"') == 14 and svg.count('class="failed"') == 14
    today = time.strftime("%m-%d", time.gmtime())
    assert f"{today}: 1 tokens issued" in svg and f"{today}: 1 failures" in svg
    assert "<script" not in page


# -- consents -----------------------------------------------------------------------------------


async def test_revoking_a_consent_also_reaches_a_successor_a_rotation_just_wrote(world, runtime):
    """A refresh rotating while the consent is revoked may write a successor the revocation's
    first statement does not see, and deleting the grant nulls its grant_id: the revocation
    matches every token of the grant's user x client x resource, so that successor dies too."""
    successor = (await refresh(world.user, world.client_id, world.tokens["refresh_token"])).json()
    with runtime.sessions() as db:
        db.execute(text("UPDATE refresh_tokens SET grant_id = NULL WHERE used_at IS NULL"))
        db.commit()
    page = await world.admin.get("/admin/consents", params={"user": "alice"})
    done = await world.admin.post(
        "/admin/consents/revoke", data={"csrf_token": csrf_from(page.text), "grant_id": world.grant.id, "confirm": "yes"}
    )
    assert done.status_code == 303
    rejected = await refresh(world.user, world.client_id, successor["refresh_token"])
    assert rejected.status_code == 400 and rejected.json()["error"] == "invalid_grant"
    assert not await token_is_active(world, successor["access_token"])


async def test_revoking_a_consent_kills_its_refresh_and_access_tokens(world, runtime):
    assert await token_is_active(world, world.tokens["access_token"])
    page = await world.admin.get("/admin/consents", params={"user": "alice"})
    assert f'data-grant-id="{world.grant.id}"' in page.text and ">Revoke</button>" in page.text

    ask = await world.admin.post("/admin/consents/revoke", data={"csrf_token": csrf_from(page.text), "grant_id": world.grant.id})
    assert ask.status_code == 200 and "Revoke this consent?" in ask.text and ">Confirm</button>" in ask.text
    assert grant_rows(runtime) and await token_is_active(world, world.tokens["access_token"])  # not yet

    done = await world.admin.post(
        "/admin/consents/revoke",
        data={
            "csrf_token": csrf_from(ask.text),
            "grant_id": world.grant.id,
            "confirm": "yes",
            "back": "/admin/consents?user=alice",
        },
    )
    assert done.status_code == 303 and done.headers["location"] == "/admin/consents?user=alice&done=1"
    assert grant_rows(runtime) == []

    # RFC 6749 §5.2: the refresh token is rejected; RFC 7662 §2.2: the access token is inactive.
    rejected = await refresh(world.user, world.client_id, world.tokens["refresh_token"])
    assert rejected.status_code == 400 and rejected.json()["error"] == "invalid_grant"
    assert not await token_is_active(world, world.tokens["access_token"])

    [event] = audit_events(runtime, "consent.revoked")
    assert (event.actor_id, event.user_id, event.client_id, event.resource) == (
        world.root.id,
        world.alice.id,
        world.client_id,
        RESOURCE,
    )
    assert event.details["via"] == "admin" and event.details["scope"] == "mcp:read"

    # The next authorization asks alice again.
    _, challenge = pkce()
    again = await world.user.get("/authorize", params=authorize_params(world.client_id, challenge, scope="mcp:read"))
    assert again.status_code == 303 and "/consent/" in again.headers["location"]


async def test_consents_filter_by_user_client_and_resource_with_pagination(world, runtime):
    other = create_resource(runtime, uri="https://other.example.com/mcp", name="Other MCP")
    with runtime.sessions() as db:
        for i in range(55):
            row = clients_store.add(
                db, Client(id=f"bulk-{i:02d}", kind=KIND_DYNAMIC, name=f"Bulk {i:02d}", redirect_uris=[REDIRECT])
            )
            consents_store.merge(db, world.root.id, row.id, other.id, {"a"}, client_name=row.name, redirect_hosts=[])
        db.commit()
    admin = world.admin

    everything = (await admin.get("/admin/consents")).text
    assert everything.count("data-grant-id=") == 50 and "Page 1 of 2 (56)" in everything
    assert 'href="?page=2"' in everything
    second = (await admin.get("/admin/consents", params={"page": 2})).text
    assert second.count("data-grant-id=") == 6

    by_user = (await admin.get("/admin/consents", params={"user": "alice"})).text
    assert by_user.count("data-grant-id=") == 1 and "Revoke all for user alice" in by_user
    assert (await admin.get("/admin/consents", params={"user": "nobody"})).text.count("data-grant-id=") == 0

    by_name = (await admin.get("/admin/consents", params={"client": "bulk 1"})).text  # name, case-insensitive
    assert by_name.count("data-grant-id=") == 10
    by_id = (await admin.get("/admin/consents", params={"client": world.client_id})).text
    assert by_id.count("data-grant-id=") == 1 and "Revoke all for client Test MCP Client" in by_id

    by_resource = (await admin.get("/admin/consents", params={"resource": world.resource_id})).text
    assert by_resource.count("data-grant-id=") == 1
    paged = (await admin.get("/admin/consents", params={"resource": other.id, "page": 2})).text
    assert paged.count("data-grant-id=") == 5 and f"resource={other.id}" in paged


async def test_bulk_revoke_for_a_user_and_for_a_client(world, runtime, new_client):
    # A second client with alice's consent, and root's consent for the first client.
    second = await register(world.user, client_name="Second Client")
    second_tokens = await tokens_for(world.user, second["client_id"], scope="mcp:read")
    root_tokens = await tokens_for(world.admin, world.client_id, scope="mcp:read")
    assert len(grant_rows(runtime)) == 3

    ask = await submit(world.admin, "/admin/consents/revoke-all", {"user_id": world.alice.id}, csrf_page="/admin")
    assert ask.status_code == 200 and "Revoke all 2 consents of user alice?" in ask.text
    done = await submit(world.admin, "/admin/consents/revoke-all", {"user_id": world.alice.id}, confirm=True, csrf_page="/admin")
    assert done.status_code == 303 and done.headers["location"] == f"/admin/users/{world.alice.id}?done=2"
    assert [g.user_id for g in grant_rows(runtime)] == [world.root.id]
    for client_id, tokens in ((world.client_id, world.tokens), (second["client_id"], second_tokens)):
        assert (await refresh(world.user, client_id, tokens["refresh_token"])).json()["error"] == "invalid_grant"
        assert not await token_is_active(world, tokens["access_token"])
    assert await token_is_active(world, root_tokens["access_token"])

    done = await submit(
        world.admin, "/admin/consents/revoke-all", {"client_id": world.client_id}, confirm=True, csrf_page="/admin"
    )
    assert done.status_code == 303 and done.headers["location"].startswith("/admin/clients/detail?id=")
    assert grant_rows(runtime) == []
    assert not await token_is_active(world, root_tokens["access_token"])
    assert {e.actor_id for e in audit_events(runtime, "consent.revoked")} == {world.root.id}
    assert len(audit_events(runtime, "consent.revoked")) == 3


# -- users ------------------------------------------------------------------------------------


async def test_users_list_search_and_pagination(world, runtime):
    with runtime.sessions() as db:
        for i in range(55):
            users_store.add(db, User(username=f"user{i:02d}", groups=["g"]))
        db.commit()
    first = (await world.admin.get("/admin/users")).text
    assert first.count("data-user=") == 50 and "Page 1 of 2 (57)" in first
    assert (await world.admin.get("/admin/users", params={"page": 2})).text.count("data-user=") == 7
    found = (await world.admin.get("/admin/users", params={"q": "ALI"})).text
    assert 'data-user="alice"' in found and 'data-user="root"' not in found
    assert '<span class="badge ok">admin</span>' in (await world.admin.get("/admin/users", params={"q": "root"})).text


async def test_admin_creates_a_user_with_a_password(world, runtime, new_client):
    response = await submit(
        world.admin,
        "/admin/users",
        {"username": "Bob", "password_mode": "set", "password": PASSWORD, "groups": "readers, writers"},
        csrf_page="/admin",
    )
    bob = user_row(runtime, "bob")
    assert response.status_code == 303 and response.headers["location"] == f"/admin/users/{bob.id}?done=created"
    assert bob.groups == ["readers", "writers"] and not bob.is_admin
    assert (await login(new_client(), "bob")).status_code == 303
    [event] = audit_events(runtime, "user.created")
    assert event.actor_id == world.root.id and event.details["via"] == "admin"

    again = await submit(
        world.admin, "/admin/users", {"username": "bob", "password_mode": "set", "password": PASSWORD}, csrf_page="/admin"
    )
    assert again.status_code == 400 and "already exists" in again.text
    short = await submit(
        world.admin, "/admin/users", {"username": "carol", "password_mode": "set", "password": "short"}, csrf_page="/admin"
    )
    assert short.status_code == 400 and "at least 8 characters" in short.text
    bad_group = await submit(
        world.admin, "/admin/users", {"username": "dave", "password_mode": "link", "groups": "no*pe"}, csrf_page="/admin"
    )
    assert bad_group.status_code == 400 and "Not a valid group name" in bad_group.text
    assert user_row(runtime, "carol") is None and user_row(runtime, "dave") is None


async def test_admin_creates_a_user_with_a_one_time_set_password_link(world, runtime, new_client):
    created = await submit(
        world.admin, "/admin/users", {"username": "erin", "password_mode": "link", "is_admin": "on"}, csrf_page="/admin"
    )
    assert created.status_code == 200
    link = re.search(r'id="password-link" type="text" readonly value="([^"]+)"', created.text).group(1)
    assert link.startswith(ISSUER + "/setup-password/")
    token = link.rsplit("/", 1)[1]
    assert token not in database_text(world.db_url)  # only its HMAC is stored
    assert user_row(runtime, "erin").password_hash is None and user_row(runtime, "erin").is_admin

    browser = new_client()
    path = "/setup-password/" + token
    form = await browser.get(path)
    assert form.status_code == 200 and "erin" in form.text
    mismatch = await browser.post(
        path, data={"csrf_token": csrf_from(form.text), "password": PASSWORD, "repeat_password": PASSWORD + "x"}
    )
    assert mismatch.status_code == 400 and "do not match" in mismatch.text
    no_csrf = await browser.post(path, data={"password": PASSWORD, "repeat_password": PASSWORD})
    assert no_csrf.status_code == 400
    done = await browser.post(path, data={"csrf_token": csrf_from(form.text), "password": PASSWORD, "repeat_password": PASSWORD})
    assert done.status_code == 303 and done.headers["location"] == "/login"
    assert (await login(browser, "erin", next_url="/admin")).headers["location"] == "/admin"

    # The link worked once.
    assert (await new_client().get(path)).status_code == 404
    assert (
        await browser.post(path, data={"csrf_token": csrf_from(form.text), "password": PASSWORD, "repeat_password": PASSWORD})
    ).status_code == 404
    assert [e.event for e in audit_events(runtime, "user.password_set")] == ["user.password_set"]
    assert audit_events(runtime, "user.password_link_created")[0].actor_id == world.root.id


async def test_a_new_link_replaces_the_old_one(world, runtime, new_client):
    links = []
    for _ in range(2):
        page = await submit(world.admin, f"/admin/users/{world.alice.id}/password-link", csrf_page="/admin")
        assert page.status_code == 200 and "shown only now" in page.text
        links.append(re.search(r'value="(http[^"]+/setup-password/[^"]+)"', page.text).group(1))
    browser = new_client()
    assert (await browser.get(links[0].removeprefix(ISSUER))).status_code == 404
    assert (await browser.get(links[1].removeprefix(ISSUER))).status_code == 200


async def test_disabling_a_user_ends_their_sessions_and_tokens(world, runtime):
    path = f"/admin/users/{world.alice.id}/disable"
    ask = await submit(world.admin, path, csrf_page="/admin")
    assert ask.status_code == 200 and "Disable alice?" in ask.text and not user_row(runtime, "alice").disabled
    done = await submit(world.admin, path, confirm=True, csrf_page="/admin")
    assert done.status_code == 303 and done.headers["location"] == f"/admin/users/{world.alice.id}?done=disabled"

    assert (await world.user.get("/account")).status_code == 303  # signed out
    assert (await login(world.user)).status_code == 401
    assert (await refresh(world.user, world.client_id, world.tokens["refresh_token"])).json()["error"] == "invalid_grant"
    assert not await token_is_active(world, world.tokens["access_token"])
    assert audit_events(runtime, "user.disabled")[-1].actor_id == world.root.id

    enabled = await submit(world.admin, f"/admin/users/{world.alice.id}/enable", csrf_page="/admin")
    assert enabled.status_code == 303 and not user_row(runtime, "alice").disabled
    assert (await login(world.user)).status_code == 303
    assert audit_events(runtime, "user.enabled")[-1].actor_id == world.root.id


async def test_admin_flag_groups_and_user_detail(world, runtime):
    page = (await world.admin.get(f"/admin/users/{world.alice.id}")).text
    assert f'data-grant-id="{world.grant.id}"' in page and "Test MCP Client" in page  # her grants
    made = await submit(world.admin, f"/admin/users/{world.alice.id}/admin", {"is_admin": "yes"}, csrf_page="/admin")
    assert made.status_code == 303 and user_row(runtime, "alice").is_admin
    assert (await world.user.get("/admin")).status_code == 200

    groups = await submit(
        world.admin, f"/admin/users/{world.alice.id}/groups", {"groups": "writers, readers writers"}, csrf_page="/admin"
    )
    assert groups.status_code == 303 and user_row(runtime, "alice").groups == ["writers", "readers"]
    event = audit_events(runtime, "user.groups_changed")[-1]
    assert event.actor_id == world.root.id and event.details == {"groups": ["writers", "readers"], "before": []}
    assert "writers, readers" in (await world.admin.get(f"/admin/users/{world.alice.id}")).text


async def test_the_last_admin_cannot_disable_or_demote_themselves(world, runtime):
    own = f"/admin/users/{world.root.id}"
    disable = await submit(world.admin, own + "/disable", confirm=True, csrf_page="/admin")
    assert disable.status_code == 409 and "last active admin" in disable.text
    demote = await submit(world.admin, own + "/admin", {"is_admin": "no"}, confirm=True, csrf_page="/admin")
    assert demote.status_code == 409 and "last active admin" in demote.text
    root = user_row(runtime, "root")
    assert root.is_admin and not root.disabled
    assert (await world.admin.get("/admin")).status_code == 200

    # With a second admin, stepping down is allowed (and the console closes behind them).
    await submit(world.admin, f"/admin/users/{world.alice.id}/admin", {"is_admin": "yes"}, csrf_page="/admin")
    ask = await submit(world.admin, own + "/admin", {"is_admin": "no"}, csrf_page="/admin")
    assert ask.status_code == 200 and "That includes you." in ask.text
    stepped = await submit(world.admin, own + "/admin", {"is_admin": "no"}, confirm=True, csrf_page="/admin")
    assert stepped.status_code == 303 and stepped.headers["location"] == "/account"
    assert (await world.admin.get("/admin")).status_code == 403
    # ... and now alice is the last admin: she cannot disable herself either.
    last = await submit(world.user, f"/admin/users/{world.alice.id}/disable", confirm=True, csrf_page="/admin")
    assert last.status_code == 409
    assert audit_events(runtime, "user.admin_removed")[-1].actor_id == world.root.id


# -- clients ----------------------------------------------------------------------------------


async def test_clients_list_kinds_hosts_and_never_used_filter(world, runtime):
    unused = await register(
        world.anonymous, client_name="Never Used", redirect_uris=["cursor://anysphere.cursor-retrieval/oauth/callback"]
    )
    with runtime.sessions() as db:
        clients_store.add(
            db,
            Client(
                id="https://app.example.com/client.json",
                kind=KIND_METADATA_DOCUMENT,
                name="Doc Client",
                redirect_uris=["https://app.example.com/cb"],
            ),
        )
        db.commit()
    page = (await world.admin.get("/admin/clients")).text
    for client_id, kind in (
        (world.client_id, "dynamic"),
        (world.rs[0], "admin-created"),
        ("https://app.example.com/client.json", "metadata document"),
    ):
        row = page[page.index(f'data-client-id="{client_id}"') :]
        assert f">{kind}</span>" in row[: row.index("</tr>")]
    assert "127.0.0.1:9876" in page and "anysphere.cursor-retrieval" in page and "app.example.com" in page

    never = (await world.admin.get("/admin/clients", params={"unused": "1"})).text
    assert f'data-client-id="{unused["client_id"]}"' in never
    assert f'data-client-id="{world.client_id}"' not in never  # used: it got tokens
    assert "Doc Client" not in never
    by_kind = (await world.admin.get("/admin/clients", params={"kind": "metadata_document"})).text
    assert by_kind.count("data-client-id=") == 1
    assert (await world.admin.get("/admin/clients", params={"q": "never"})).text.count("data-client-id=") == 1


async def test_client_detail_shows_metadata_and_grants(world):
    page = await world.admin.get("/admin/clients/detail", params={"id": world.client_id})
    assert page.status_code == 200
    assert "Test MCP Client" in page.text and "&#34;client_name&#34;: &#34;Test MCP Client&#34;" in page.text
    assert f'data-grant-id="{world.grant.id}"' in page.text and "alice" in page.text
    assert (await world.admin.get("/admin/clients/detail", params={"id": "nope"})).status_code == 404


async def test_marking_a_client_trusted_lets_its_errors_redirect_before_sign_in(world, runtime):
    """docs/decisions.md#errors-of-self-registered-clients-stay-on-ostiary-until-sign-in: the
    admin vouches for a registered client; its /authorize errors then redirect (RFC 6749 §4.1.2.1)."""
    _, challenge = pkce()
    params = authorize_params(world.client_id, challenge, prompt="none")
    assert (await world.anonymous.get("/authorize", params=params)).status_code == 400
    page = await world.admin.get("/admin/clients/detail", params={"id": world.client_id})
    assert "Mark trusted" in page.text
    done = await submit(world.admin, "/admin/clients/trust", {"client_id": world.client_id, "trusted": "1"}, csrf_page="/admin")
    assert done.status_code == 303 and done.headers["location"].endswith("&done=trusted")
    assert "Stop trusting" in (await world.admin.get(done.headers["location"])).text
    response = await world.anonymous.get("/authorize", params=params)
    assert response.status_code == 302 and query(response.headers["location"])["error"] == "login_required"
    event = audit_events(runtime, "client.trusted")[-1]
    assert (event.actor_id, event.client_id) == (world.root.id, world.client_id)
    await submit(world.admin, "/admin/clients/trust", {"client_id": world.client_id, "trusted": "0"}, csrf_page="/admin")
    assert (await world.anonymous.get("/authorize", params=params)).status_code == 400


async def test_deleting_a_client_revokes_everything_issued_to_it(world, runtime):
    ask = await submit(world.admin, "/admin/clients/delete", {"client_id": world.client_id}, csrf_page="/admin")
    assert ask.status_code == 200 and "Delete client Test MCP Client?" in ask.text
    done = await submit(world.admin, "/admin/clients/delete", {"client_id": world.client_id}, confirm=True, csrf_page="/admin")
    assert done.status_code == 303 and done.headers["location"] == "/admin/clients?done=deleted"
    with runtime.sessions() as db:
        assert clients_store.get(db, world.client_id) is None
    assert grant_rows(runtime) == []
    gone = await refresh(world.user, world.client_id, world.tokens["refresh_token"])
    assert gone.status_code == 401 and gone.json()["error"] == "invalid_client"  # MCP clients re-register
    assert not await token_is_active(world, world.tokens["access_token"])
    event = audit_events(runtime, "client.deleted")[-1]
    assert (event.actor_id, event.client_id, event.details["reason"]) == (world.root.id, world.client_id, "admin")


# -- MCP servers (resources) --------------------------------------------------------------------


async def test_create_a_resource_canonical_uri_and_snippet(world, runtime):
    form = resource_form(
        "HTTPS://Tools.Example.COM:443/mcp/",
        "Tools",
        [
            ("tools:read", "Use the read-only tools", True, ""),
            ("tools:write", "Use the tools that change things", False, "writers, admins"),
        ],
        ttl="300",
    )
    created = await submit(world.admin, "/admin/resources/new", form, csrf_page="/admin")
    assert created.status_code == 303
    page = (await world.admin.get(created.headers["location"].split("?")[0])).text
    assert 'value="https://tools.example.com/mcp"' in page  # RFC 8707 canonical form
    assert "https://tools.example.com/.well-known/oauth-protected-resource/mcp" in page  # RFC 9728 §3.1
    metadata = re.search(r'data-snippet="metadata"[^>]*>(.*?)</pre>', page, re.S).group(1)
    assert "&#34;resource&#34;: &#34;https://tools.example.com/mcp&#34;" in metadata
    assert f"&#34;authorization_servers&#34;: [\n    &#34;{ISSUER}&#34;" in metadata
    assert f'data-snippet="issuer">{ISSUER}<' in page and f'data-snippet="jwks_uri">{ISSUER}/jwks<' in page
    assert 'data-snippet="audience">https://tools.example.com/mcp<' in page
    assert 'value="writers, admins"' in page
    event = audit_events(runtime, "resource.created")[-1]
    assert event.actor_id == world.root.id and event.resource == "https://tools.example.com/mcp"
    # The protocol side sees it at once (the catalogue was refreshed).
    resource = runtime.catalogue.by_uri("https://tools.example.com/mcp")
    assert resource.token_ttl == 300 and resource.scopes["tools:write"].allowed_groups == ("writers", "admins")


@pytest.mark.parametrize(
    ("form", "message"),
    [
        pytest.param(resource_form("ftp://x.example.com", "X", [("a", "A", True, "")]), "URI:", id="not https"),
        pytest.param(
            resource_form("https://x.example.com/#frag", "X", [("a", "A", True, "")]), "fragment", id="fragment (RFC 8707 §2)"
        ),
        pytest.param(resource_form(RESOURCE, "Dup", [("a", "A", True, "")]), "already has the URI", id="duplicate"),
        pytest.param(resource_form("https://x.example.com", "", [("a", "A", True, "")]), "name", id="no name"),
        pytest.param(resource_form("https://x.example.com", "X", []), "at least one scope", id="no scope"),
        pytest.param(resource_form("https://x.example.com", "X", [("a b", "A", True, "")]), "not a valid scope name", id="space"),
        pytest.param(
            resource_form("https://x.example.com", "X", [("*", "All", True, "")]), "not a valid scope name", id="wildcard"
        ),
        pytest.param(
            resource_form("https://x.example.com", "X", [("openid", "Me", True, "")]), "protocol scope", id="protocol scope"
        ),
        pytest.param(resource_form("https://x.example.com", "X", [("a", "", True, "")]), "describe it", id="no description"),
        pytest.param(
            resource_form("https://x.example.com", "X", [("a", "A", True, ""), ("a", "B", False, "")]), "once", id="twice"
        ),
        pytest.param(
            resource_form("https://x.example.com", "X", [("a", "A", True, "")], ttl="10"), "30 to 3600", id="ttl too short"
        ),
        pytest.param(
            resource_form("https://x.example.com", "X", [("a", "A", True, "")], ttl="3601"), "30 to 3600", id="ttl over 1 h"
        ),
        pytest.param(resource_form("https://x.example.com", "X", [("a", "A", True, "bad group!")]), "group name", id="group"),
    ],
)
async def test_resource_form_refuses_invalid_values(world, runtime, form, message):
    response = await submit(world.admin, "/admin/resources/new", form, csrf_page="/admin")
    assert response.status_code == 400 and message in response.text
    assert [r.uri for r in runtime.catalogue.all()] == [RESOURCE]


async def test_edit_a_resource_scopes_groups_and_token_lifetime(world, runtime):
    path = f"/admin/resources/{world.resource_id}"
    form = resource_form(
        RESOURCE,
        "Notes",
        [("mcp:read", "Read your notes", True, ""), ("mcp:admin", "Administer notes", False, "admins")],
        ttl="120",
    )
    saved = await submit(world.admin, path, form, csrf_page="/admin")
    assert saved.status_code == 303 and saved.headers["location"] == path + "?done=saved"
    resource = runtime.catalogue.by_id(world.resource_id)
    assert resource.name == "Notes" and resource.token_ttl == 120
    assert list(resource.scopes) == ["mcp:read", "mcp:admin"]  # mcp:write removed
    assert resource.scopes["mcp:admin"].allowed_groups == ("admins",)
    assert audit_events(runtime, "resource.updated")[-1].actor_id == world.root.id
    # The next access token lives as long as the console now says.
    refreshed = await refresh(world.user, world.client_id, world.tokens["refresh_token"])
    assert refreshed.status_code == 200 and refreshed.json()["expires_in"] == 120


# -- signing keys -----------------------------------------------------------------------------


async def test_rotate_now_publishes_a_new_next_key(fresh_keys, client, runtime, new_client):
    create_user(runtime, "root", admin=True)
    assert (await login(client, "root")).status_code == 303
    before = {k["kid"] for k in (await client.get("/jwks")).json()["keys"]}
    page = (await client.get("/admin/keys")).text
    old_active = re.search(r'data-kid="([^"]+)" data-state="active"', page).group(1)
    old_next = re.search(r'data-kid="([^"]+)" data-state="next"', page).group(1)
    assert ">Rotate now</button>" in page and "Next scheduled rotation" in page

    ask = await client.post("/admin/keys/rotate", data={"csrf_token": csrf_from(page)})
    assert ask.status_code == 200 and ">Confirm</button>" in ask.text
    # The next key was published just now: resource servers may not have it yet.
    refused = await client.post("/admin/keys/rotate", data={"csrf_token": csrf_from(ask.text), "confirm": "yes"})
    assert refused.status_code == 409 and "Rotation refused" in refused.text and "Rotate anyway" in refused.text
    assert {k["kid"] for k in (await client.get("/jwks")).json()["keys"]} == before

    done = await client.post("/admin/keys/rotate", data={"csrf_token": csrf_from(refused.text), "confirm": "yes", "force": "on"})
    assert done.status_code == 303 and done.headers["location"].startswith("/admin/keys?done=")
    after = {k["kid"] for k in (await new_client().get("/jwks")).json()["keys"]}
    new_next = after - before
    assert len(new_next) == 1 and {old_active, old_next} <= after  # the retired key stays published
    page = (await client.get("/admin/keys")).text
    assert f'data-kid="{old_next}" data-state="active"' in page
    assert f'data-kid="{old_active}" data-state="retired"' in page
    assert f'data-kid="{new_next.pop()}" data-state="next"' in page
    [activated] = [e for e in audit_events(runtime, "key.activated") if e.actor_id]
    assert activated.details["kid"] == old_next


# -- audit log --------------------------------------------------------------------------------


async def test_audit_log_filters_newest_first_and_pagination(world, runtime):
    admin = world.admin
    rows = re.compile(r'<tr data-event="([^"]+)">')
    with runtime.sessions() as db:
        stored = list(db.scalars(select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())))
    page = (await admin.get("/admin/audit")).text
    assert rows.findall(page) == [e.event for e in stored]  # newest first
    assert '<td class="mono">127.0.0.1</td>' in page  # from which address
    for secret in (world.tokens["access_token"], world.tokens["refresh_token"], world.rs[1]):
        assert secret not in page

    granted = (await admin.get("/admin/audit", params={"event": "consent.granted"})).text
    assert rows.findall(granted) == ["consent.granted"]
    for_alice = (await admin.get("/admin/audit", params={"user": "alice"})).text
    alice_events = [e.event for e in stored if world.alice.id in (e.user_id, e.actor_id) or e.username == "alice"]
    assert rows.findall(for_alice) == alice_events and "login.succeeded" in alice_events
    for_client = (await admin.get("/admin/audit", params={"client": world.client_id})).text
    assert rows.findall(for_client) == [e.event for e in stored if e.client_id == world.client_id]
    assert {"consent.granted", "token.issued"} <= set(rows.findall(for_client))

    today = time.strftime("%Y-%m-%d", time.gmtime())
    tomorrow = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))
    yesterday = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400))
    assert "No events." in (await admin.get("/admin/audit", params={"since": tomorrow})).text
    assert "No events." in (await admin.get("/admin/audit", params={"until": yesterday})).text
    assert "No events." not in (await admin.get("/admin/audit", params={"since": today, "until": today})).text

    with runtime.sessions() as db:
        for i in range(60):
            audit_log.record(db, "test.filler", n=i)
        db.commit()
    first = (await admin.get("/admin/audit", params={"event": "test.filler"})).text
    assert first.count('data-event="test.filler"') == 50 and "n=59" in first and 'href="?event=test.filler&amp;page=2"' in first
    second = (await admin.get("/admin/audit", params={"event": "test.filler", "page": 2})).text
    assert second.count('data-event="test.filler"') == 10 and "n=0<" in second


async def test_audit_log_names_the_user_of_events_that_carry_only_an_id(world, runtime):
    """token.issued records the user's id (the token's sub); the log shows who that is."""
    page = (await world.admin.get("/admin/audit", params={"event": "token.issued"})).text
    row = page.split('<tr data-event="token.issued">', 1)[1].split("</tr>", 1)[0]
    who = re.findall(r"<td>(.*?)</td>", row, re.S)[2]
    assert who == "alice", row


async def test_admin_actions_show_who_acted(world, runtime):
    await submit(world.admin, f"/admin/users/{world.alice.id}/groups", {"groups": "readers"}, csrf_page="/admin")
    page = (await world.admin.get("/admin/audit", params={"event": "user.groups_changed"})).text
    assert "alice" in page and "by root" in page


# -- access policy: groups (docs/decisions.md#access-policy-by-groups-is-applied-at-every-refresh) --

POLICY_RESOURCE = "https://notes.example.com/mcp"


async def policy_world(world) -> None:
    """An MCP server whose write scope is for the group `writers`, configured in the console."""
    form = resource_form(
        POLICY_RESOURCE, "Notes", [("notes:read", "Read notes", True, ""), ("notes:write", "Change notes", False, "writers")]
    )
    assert (await submit(world.admin, "/admin/resources/new", form, csrf_page="/admin")).status_code == 303


async def consent_for(browser, client_id: str, scope: str):
    """(consent page, verifier, redirect back to the client after Allow)."""
    verifier, challenge = pkce()
    start = await browser.get("/authorize", params=authorize_params(client_id, challenge, scope=scope, resource=POLICY_RESOURCE))
    assert start.status_code == 303, start.text
    page = await browser.get(start.headers["location"])
    decided = await browser.post(start.headers["location"], data={"decision": "allow", "csrf_token": csrf_from(page.text)})
    return page, verifier, decided


async def test_a_user_outside_a_scopes_group_is_offered_only_the_permitted_subset(world, runtime):
    await policy_world(world)
    page, verifier, decided = await consent_for(world.user, world.client_id, "notes:read notes:write")
    assert 'data-scope="notes:read" data-scope-status="new"' in page.text
    assert 'data-scope="notes:write"' not in page.text
    assert "Not available to your account: <code>notes:write</code>" in page.text
    assert decided.status_code == 302
    code = query(decided.headers["location"])["code"]
    token = await exchange(world.user, world.client_id, code, verifier)
    assert token.status_code == 200 and token.json()["scope"] == "notes:read"  # the token says which
    notes_rs = admin_client(runtime, resource=POLICY_RESOURCE)  # the notes MCP server's credentials
    introspected = await introspect(world.anonymous, token.json()["access_token"], notes_rs)
    assert introspected.json()["scope"] == "notes:read"
    # Another MCP server's credentials learn nothing about it (RFC 7662 §4).
    assert (await introspect(world.anonymous, token.json()["access_token"], world.rs)).json() == {"active": False}


async def test_access_denied_when_no_requested_scope_is_permitted(world, runtime):
    await policy_world(world)
    _, challenge = pkce()
    params = authorize_params(world.client_id, challenge, scope="notes:write", resource=POLICY_RESOURCE)
    response = await world.user.get("/authorize", params=params)
    assert response.status_code == 302
    q = query(response.headers["location"])
    # RFC 6749 §4.1.2.1 access_denied, with state and RFC 9207 iss.
    assert q["error"] == "access_denied" and q["state"] == params["state"] and q["iss"] == ISSUER
    assert audit_events(runtime, "consent.denied")[-1].details["reason"] == "policy"


async def test_group_members_get_the_scope_until_removed_then_refresh_drops_it(world, runtime):
    await policy_world(world)
    await submit(world.admin, f"/admin/users/{world.alice.id}/groups", {"groups": "writers"}, csrf_page="/admin")
    page, verifier, decided = await consent_for(world.user, world.client_id, "notes:read notes:write")
    assert 'data-scope="notes:write" data-scope-status="new"' in page.text
    code = query(decided.headers["location"])["code"]
    tokens = (await exchange(world.user, world.client_id, code, verifier)).json()
    assert tokens["scope"] == "notes:read notes:write"

    removed = await submit(world.admin, f"/admin/users/{world.alice.id}/groups", {"groups": ""}, csrf_page="/admin")
    assert removed.status_code == 303
    refreshed = await refresh(world.user, world.client_id, tokens["refresh_token"])
    assert refreshed.status_code == 200 and refreshed.json()["scope"] == "notes:read"

    # Back in the group: the grant still holds the scope, the next refresh returns it again.
    await submit(world.admin, f"/admin/users/{world.alice.id}/groups", {"groups": "writers"}, csrf_page="/admin")
    again = await refresh(world.user, world.client_id, refreshed.json()["refresh_token"])
    assert again.json()["scope"] == "notes:read notes:write"


async def test_changing_a_scopes_groups_in_the_console_applies_at_the_next_refresh(world, runtime):
    await policy_world(world)
    await submit(world.admin, f"/admin/users/{world.alice.id}/groups", {"groups": "writers"}, csrf_page="/admin")
    _, verifier, decided = await consent_for(world.user, world.client_id, "notes:read notes:write")
    tokens = (await exchange(world.user, world.client_id, query(decided.headers["location"])["code"], verifier)).json()
    with runtime.sessions() as db:
        resource_id = db.scalar(select(Consent.resource_id).where(Consent.scope == "notes:read notes:write"))
    form = resource_form(
        POLICY_RESOURCE, "Notes", [("notes:read", "Read notes", True, ""), ("notes:write", "Change notes", False, "editors")]
    )
    assert (await submit(world.admin, f"/admin/resources/{resource_id}", form, csrf_page="/admin")).status_code == 303
    refreshed = await refresh(world.user, world.client_id, tokens["refresh_token"])
    assert refreshed.json()["scope"] == "notes:read"


async def test_a_scope_removed_from_the_mcp_server_is_no_longer_refreshed(world, runtime):
    """RFC 6749 §6 / access policy: a refresh never returns a scope the MCP server no longer
    declares; when none of the grant's resource scopes is left, invalid_grant."""
    await policy_world(world)
    await submit(world.admin, f"/admin/users/{world.alice.id}/groups", {"groups": "writers"}, csrf_page="/admin")
    _, verifier, decided = await consent_for(world.user, world.client_id, "notes:read notes:write")
    tokens = (await exchange(world.user, world.client_id, query(decided.headers["location"])["code"], verifier)).json()
    with runtime.sessions() as db:
        resource_id = db.scalar(select(Consent.resource_id).where(Consent.scope == "notes:read notes:write"))
    only_read = resource_form(POLICY_RESOURCE, "Notes", [("notes:read", "Read notes", True, "")])
    assert (await submit(world.admin, f"/admin/resources/{resource_id}", only_read, csrf_page="/admin")).status_code == 303
    refreshed = await refresh(world.user, world.client_id, tokens["refresh_token"])
    assert refreshed.status_code == 200 and refreshed.json()["scope"] == "notes:read"

    renamed = resource_form(POLICY_RESOURCE, "Notes", [("notes:view", "View notes", True, "")])
    assert (await submit(world.admin, f"/admin/resources/{resource_id}", renamed, csrf_page="/admin")).status_code == 303
    gone = await refresh(world.user, world.client_id, refreshed.json()["refresh_token"])
    assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"


# -- bootstrap --------------------------------------------------------------------------------


async def test_cli_created_admin_signs_in_straight_to_the_console(settings, client, runtime):
    env = cli_env(settings.database_url.get_secret_value(), OSTIARY_ISSUER=ISSUER)
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "users", "create", "admin", "--admin", "--password-stdin"],
        input="an admin passphrase\n",
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    first = await client.get("/admin")
    assert first.headers["location"] == "/login?next=%2Fadmin"
    signed_in = await login(client, "admin", "an admin passphrase", next_url="/admin")
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/admin"
    console = await client.get("/admin")
    assert console.status_code == 200 and "Overview" in console.text


async def test_identity_providers_are_added_disabled_and_shown(world, runtime):
    """The console's identity providers page: add (the secret stored encrypted), the redirect
    URI to register upstream, disable (neither offered nor trusted), and a refusal shown on the
    page."""
    form = {"name": "acme", "issuer": "https://idp.acme.example", "client_id": "ostiary", "client_secret": "s3cret-upstream"}
    done = await submit(world.admin, "/admin/idps", form, csrf_page="/admin")
    assert done.status_code == 303 and done.headers["location"] == "/admin/idps?done=added"
    page = await world.admin.get("/admin/idps")
    assert 'data-idp="acme"' in page.text and f"{ISSUER}/login/acme/callback" in page.text
    assert "s3cret-upstream" not in page.text and "s3cret-upstream" not in database_text(world.db_url)
    assert "Sign in with acme" in (await world.anonymous.get("/login")).text
    off = await submit(world.admin, "/admin/idps/acme/enabled", {"enabled": "0"}, csrf_page="/admin")
    assert off.headers["location"] == "/admin/idps?done=disabled"
    assert "Sign in with acme" not in (await world.anonymous.get("/login")).text
    again = await submit(world.admin, "/admin/idps", {**form, "name": "acme2"}, csrf_page="/admin")
    assert again.status_code == 400 and "exists already" in again.text
    assert audit_events(runtime, "idp.added")[-1].actor_id == world.root.id


async def test_a_users_page_says_how_they_sign_in(world, runtime):
    page = await world.admin.get(f"/admin/users/{world.alice.id}")
    assert "a password here" in page.text


async def test_an_admin_creates_a_machine_client_in_the_console(world, runtime):
    """Client credentials from the console: the secret is shown once and works at /token."""
    response = await submit(
        world.admin, "/admin/clients/machine", {"name": "Nightly", "resource": RESOURCE, "scopes": "mcp:read"}, csrf_page="/admin"
    )
    assert response.status_code == 200, response.text
    client_id = re.search(r"data-client-id>([^<]+)<", response.text).group(1)
    secret = re.search(r'id="machine-secret" type="text" readonly value="([^"]+)"', response.text).group(1)
    assert secret not in database_text(world.db_url)
    token = await world.anonymous.post("/token", data={"grant_type": "client_credentials"}, auth=(client_id, secret))
    assert token.status_code == 200 and token.json()["scope"] == "mcp:read"
    detail = await world.admin.get("/admin/clients/detail", params={"id": client_id})
    assert "data-machine" in detail.text and "client_credentials for" in detail.text
    refused = await submit(
        world.admin, "/admin/clients/machine", {"name": "X", "resource": RESOURCE, "scopes": "nope"}, csrf_page="/admin"
    )
    assert refused.status_code == 400 and "no scope nope" in refused.text
