"""The admin console, complete: deleting an MCP server (the command line's consent rule, with a
confirmation page), editing, disabling and enabling a client, an overview whose tiles and chart
agree, and an audit log that names apps, reads as text, highlights security events, exports CSV
and shows times in the viewer's zone. Over HTTP on the real app, as an admin's browser does it."""

from __future__ import annotations

import csv
import io
import re
import time

import pytest
from sqlalchemy import update

from app.models import AuditEvent, Client
from app.models.client import KIND_METADATA_DOCUMENT
from app.services import audit as audit_log
from app.stores import clients as clients_store
from tests import test_admin_console
from tests.support import (
    REDIRECT,
    RESOURCE,
    audit_events,
    authorize_params,
    create_resource,
    grant_rows,
    pkce,
    refresh,
    submit,
)

pytestmark = pytest.mark.anyio

world = test_admin_console.world  # the console's test world: an admin, a user with a consent, a client


def client_row(runtime, client_id: str) -> Client:
    with runtime.sessions() as db:
        row = clients_store.get(db, client_id)
        assert row is not None
        return row


# -- MCP servers ---------------------------------------------------------------------------------


async def test_deleting_an_mcp_server_asks_and_needs_consent_to_revoke_its_consents(world, runtime):
    """docs/decisions.md#removing-an-mcp-server-that-users-consented-to-needs-confirmation."""
    path = f"/admin/resources/{world.resource_id}/delete"
    ask = await submit(world.admin, path, csrf_page="/admin")
    assert ask.status_code == 200 and "Delete MCP server Example MCP?" in ask.text
    assert "Users gave it 1 consent" in ask.text and 'name="force"' in ask.text and "Revoke its 1 consent too" in ask.text

    refused = await submit(world.admin, path, confirm=True, csrf_page="/admin")
    assert refused.status_code == 409 and "1 consent to https://mcp.example.com/mcp exist" in refused.text
    assert runtime.catalogue.by_uri(RESOURCE) is not None and len(grant_rows(runtime)) == 1

    done = await submit(world.admin, path, {"force": "on"}, confirm=True, csrf_page="/admin")
    assert (done.status_code, done.headers["location"]) == (303, "/admin/resources?done=deleted")
    assert "MCP server deleted" in (await world.admin.get(done.headers["location"])).text
    assert runtime.catalogue.by_uri(RESOURCE) is None and grant_rows(runtime) == []
    gone = await refresh(world.user, world.client_id, world.tokens["refresh_token"])
    assert gone.json()["error"] == "invalid_grant"
    assert [e.details["via"] for e in audit_events(runtime, "consent.revoked")] == ["admin"]
    removed = audit_events(runtime, "resource.removed")[-1]
    assert (removed.actor_id, removed.resource, removed.details["consents_revoked"]) == (world.root.id, RESOURCE, 1)


async def test_an_mcp_server_nobody_consented_to_is_deleted_after_one_confirmation(world, runtime):
    other = create_resource(runtime, uri="https://other.example.com/mcp", name="Other")
    ask = await submit(world.admin, f"/admin/resources/{other.id}/delete", csrf_page="/admin")
    assert ask.status_code == 200 and 'name="force"' not in ask.text
    assert 'action="/admin/resources/' in (await world.admin.get(f"/admin/resources/{other.id}")).text
    done = await submit(world.admin, f"/admin/resources/{other.id}/delete", confirm=True, csrf_page="/admin")
    assert done.status_code == 303 and runtime.catalogue.by_uri("https://other.example.com/mcp") is None
    assert runtime.catalogue.by_uri(RESOURCE) is not None


# -- clients ---------------------------------------------------------------------------------------


async def test_renaming_a_client_asks_its_users_to_consent_again(world, runtime):
    """docs/decisions.md#consent-is-bound-to-what-the-user-saw: the consent names the client."""
    page = (await world.admin.get("/admin/clients/detail", params={"id": world.client_id})).text
    assert 'name="name"' in page and 'name="redirect_uris"' not in page  # a dynamic client's URIs are its own
    saved = await submit(
        world.admin,
        "/admin/clients/edit",
        {"client_id": world.client_id, "name": "Renamed Client", "redirect_uris": "https://evil.example/cb"},
        csrf_page="/admin",
    )
    assert saved.status_code == 303 and saved.headers["location"].endswith("&done=saved")
    row = client_row(runtime, world.client_id)
    assert (row.name, row.redirect_uris, row.client_metadata["client_name"]) == ("Renamed Client", [REDIRECT], "Renamed Client")
    event = audit_events(runtime, "client.updated")[-1]
    assert (event.actor_id, event.details["before"]["name"]) == (world.root.id, "Test MCP Client")

    _, challenge = pkce()
    again = await world.user.get("/authorize", params=authorize_params(world.client_id, challenge, scope="mcp:read"))
    assert again.status_code == 303 and "/consent/" in again.headers["location"]  # asked again
    unchanged = await submit(
        world.admin, "/admin/clients/edit", {"client_id": world.client_id, "name": "Renamed Client"}, csrf_page="/admin"
    )
    assert unchanged.headers["location"].endswith("&done=unchanged")


async def test_an_admin_created_clients_redirect_uris_are_edited_and_checked(world, runtime):
    client_id = world.rs[0]
    page = (await world.admin.get("/admin/clients/detail", params={"id": client_id})).text
    assert 'name="redirect_uris"' in page
    uris = "https://app.example.com/cb\nhttp://127.0.0.1:7777/callback"
    saved = await submit(
        world.admin, "/admin/clients/edit", {"client_id": client_id, "name": "RS", "redirect_uris": uris}, csrf_page="/admin"
    )
    assert saved.status_code == 303
    assert client_row(runtime, client_id).redirect_uris == ["https://app.example.com/cb", "http://127.0.0.1:7777/callback"]
    for name, typed, problem in (
        ("RS", "http://app.example.com/cb", "Redirect URI"),
        ("RS", "https://app.example.com/cb#x", "Redirect URI"),
        ("", "https://app.example.com/cb", "name must be 1 to 200"),
        ("Bad\u202ename", "https://app.example.com/cb", "must not contain"),
    ):
        refused = await submit(
            world.admin, "/admin/clients/edit", {"client_id": client_id, "name": name, "redirect_uris": typed}, csrf_page="/admin"
        )
        assert refused.status_code == 400 and problem in refused.text, (typed, refused.text[-800:])
    assert client_row(runtime, client_id).name == "RS"


async def test_a_metadata_document_clients_name_is_its_documents(world, runtime):
    with runtime.sessions() as db:
        clients_store.add(
            db,
            Client(id="https://app.example.com/client.json", kind=KIND_METADATA_DOCUMENT, name="Doc", redirect_uris=[REDIRECT]),
        )
        db.commit()
    refused = await submit(
        world.admin,
        "/admin/clients/edit",
        {"client_id": "https://app.example.com/client.json", "name": "Mine"},
        csrf_page="/admin",
    )
    assert refused.status_code == 400 and "metadata document names it" in refused.text


async def test_a_disabled_client_is_refused_until_an_admin_enables_it(world, runtime):
    """docs/decisions.md#a-disabled-client-is-refused-until-enabled."""
    done = await submit(
        world.admin, "/admin/clients/disable", {"client_id": world.client_id, "disabled": "1"}, csrf_page="/admin"
    )
    assert done.status_code == 303 and done.headers["location"].endswith("&done=disabled")
    detail = (await world.admin.get(done.headers["location"])).text
    assert "disabled since" in detail and "Client disabled" in detail and ">Enable</button>" in detail
    listing = (await world.admin.get("/admin/clients")).text
    row = listing[listing.index(f'data-client-id="{world.client_id}"') :]
    assert 'data-status="disabled"' in row[: row.index("</tr>")]

    refused = await refresh(world.user, world.client_id, world.tokens["refresh_token"])
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")
    _, challenge = pkce()
    page = await world.user.get("/authorize", params=authorize_params(world.client_id, challenge))
    assert page.status_code == 400 and "disabled by the administrator" in page.text and "location" not in page.headers

    await submit(world.admin, "/admin/clients/disable", {"client_id": world.client_id, "disabled": "0"}, csrf_page="/admin")
    assert (await refresh(world.user, world.client_id, world.tokens["refresh_token"])).status_code == 200
    events = [
        (e.event, e.actor_id, e.details["via"])
        for e in audit_events(runtime, "client.disabled") + audit_events(runtime, "client.enabled")
    ]
    assert events == [("client.disabled", world.root.id, "console"), ("client.enabled", world.root.id, "console")]


async def test_client_edits_need_an_admin_and_the_csrf_token(world):
    for path, data in (
        ("/admin/clients/edit", {"client_id": world.client_id, "name": "X"}),
        ("/admin/clients/disable", {"client_id": world.client_id, "disabled": "1"}),
        (f"/admin/resources/{world.resource_id}/delete", {"confirm": "yes", "force": "on"}),
    ):
        assert (await world.anonymous.post(path, data=data)).status_code == 303
        assert (await world.user.post(path, data=data)).status_code == 403
        assert (await world.admin.post(path, data=data)).status_code == 400  # no CSRF token


# -- the overview ------------------------------------------------------------------------------


async def test_the_overview_tiles_are_the_charts_today(world, runtime):
    """One definition of a failure (failed sign-ins, refresh-token reuse, replayed codes) for the
    tiles and the chart; the tiles count today (UTC), which is the chart's last bar, and the
    axis names today."""
    with runtime.sessions() as db:
        for event in ("login.failed", "login.mfa_failed", "token.reuse_detected", "code.replayed", "test.old_failure"):
            audit_log.record(db, event)
        db.commit()
        two_days_ago = int(time.time()) - 2 * 86400
        db.execute(update(AuditEvent).where(AuditEvent.event == "test.old_failure").values(event="login.failed", at=two_days_ago))
        db.commit()
    page = (await world.admin.get("/admin")).text
    assert re.search(r'data-count="failures">4<', page)
    assert re.search(r'data-count="signin-failures">2<', page)
    assert re.search(r'data-count="reuse">1<', page) and re.search(r'data-count="replay">1<', page)
    issued = re.search(r'data-count="issued">(\d+)<', page).group(1)
    svg = page[page.index("<svg") : page.index("</svg>")]
    today = time.strftime("%m-%d", time.gmtime())
    assert f"{today}: {issued} tokens issued" in svg and f"{today}: 4 failures" in svg
    assert f"{time.strftime('%m-%d', time.gmtime(two_days_ago))}: 1 failures" in svg
    labels = re.findall(r'text-anchor="middle">([^<]+)</text>', svg)
    assert labels[-1] == "today" and len(labels) == 7
    assert time.strftime("%m-%d", time.gmtime(time.time() - 86400)) not in labels  # every other day back from today


# -- the audit log -------------------------------------------------------------------------------


async def test_the_audit_log_names_apps_reads_as_text_and_highlights_security_events(world, runtime):
    await submit(world.admin, f"/admin/users/{world.alice.id}/groups", {"groups": "readers, writers"}, csrf_page="/admin")
    with runtime.sessions() as db:
        audit_log.record(db, "token.reuse_detected", user_id=world.alice.id, client_id=world.client_id, family_revoked=True)
        db.commit()
    page = (await world.admin.get("/admin/audit")).text
    granted = page.split('<tr data-event="consent.granted">', 1)[1].split("</tr>", 1)[0]
    assert "<span data-client-name>Test MCP Client</span>" in granted and world.client_id in granted
    groups = page.split('<tr data-event="user.groups_changed">', 1)[1].split("</tr>", 1)[0]
    assert "groups=readers, writers" in groups and "[" not in groups  # not a Python list
    reuse = page.split('<tr data-event="token.reuse_detected">', 1)[1].split("</tr>", 1)[0]
    assert "data-security" in reuse and "family_revoked=yes" in reuse and "True" not in reuse
    assert "data-security" not in granted

    security = (await world.admin.get("/admin/audit", params={"security": "1"})).text
    assert re.findall(r'<tr data-event="([^"]+)">', security) == ["token.reuse_detected"]


async def test_the_audit_log_shows_times_in_the_viewers_zone_with_a_utc_fallback(world):
    page = (await world.admin.get("/admin/audit")).text
    match = re.search(
        r'<time datetime="(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)" data-local>(\d{4}-\d\d-\d\d \d\d:\d\d UTC)</time>', page
    )
    assert match and match.group(1)[:10] == match.group(2)[:10]
    assert '<script src="/static/admin-time.js" defer></script>' in page  # CSP: script-src 'self', no inline script
    script = await world.admin.get("/static/admin-time.js")
    assert script.status_code == 200 and "time[data-local][datetime]" in script.text and "Intl.DateTimeFormat" in script.text


async def test_the_audit_log_exports_csv_with_the_same_filters(world, runtime):
    with runtime.sessions() as db:
        audit_log.record(db, "login.failed", username='=HYPERLINK("http://evil.example")', reason="bad_credentials")
        db.commit()
    page = (await world.admin.get("/admin/audit", params={"event": "consent.granted", "user": "alice"})).text
    assert 'href="/admin/audit.csv?event=consent.granted&amp;user=alice"' in page

    exported = await world.admin.get("/admin/audit.csv", params={"event": "consent.granted", "user": "alice"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert exported.headers["content-disposition"].startswith('attachment; filename="ostiary-audit-')
    assert exported.headers["cache-control"] == "no-store"
    header, *rows = list(csv.reader(io.StringIO(exported.text)))
    assert header[:3] == ["time", "event", "security"] and "client_name" in header
    assert [r[1] for r in rows] == ["consent.granted"]
    record = dict(zip(header, rows[0], strict=True))
    assert (record["username"], record["client_name"], record["client_id"]) == ("alice", "Test MCP Client", world.client_id)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["time"]) and record["details"].startswith("{")

    everything = list(csv.reader(io.StringIO((await world.admin.get("/admin/audit.csv")).text)))
    assert len(everything) - 1 == len(re.findall(r"<tr data-event=", (await world.admin.get("/admin/audit")).text))
    failed = next(r for r in everything if r[1] == "login.failed")
    assert failed[4].startswith("'=")  # a spreadsheet shows it, never runs it
    for secret in (world.tokens["access_token"], world.tokens["refresh_token"], world.rs[1]):
        assert secret not in "\n".join(",".join(r) for r in everything)

    assert (await world.anonymous.get("/admin/audit.csv")).status_code == 303
    assert (await world.user.get("/admin/audit.csv", headers={"accept": "text/html"})).status_code == 403


# -- the user's own browser sessions (/account) --------------------------------------------------


async def test_a_user_signs_out_every_other_browser(world, runtime, new_client):
    """Two browsers signed in as alice: from one she ends the other; her apps stay connected."""
    from app.services import users as user_service
    from tests.support import login, page_csrf, user_row

    laptop = new_client(client_addr=("192.0.2.7", 50020), headers={"user-agent": "Laptop Firefox"})
    assert (await login(laptop)).status_code == 303
    with runtime.sessions() as db:
        alice = user_row(runtime, "alice")
        sessions = user_service.browser_sessions(db, alice, idle_timeout=runtime.settings.session_idle_timeout)
    assert len(sessions) == 2 and "Laptop Firefox" in {s.user_agent for s in sessions}

    # What /account shows of them, this browser marked.
    html = (await laptop.get("/account")).text
    section = html[html.index('id="sessions"') :]
    assert section.count("<tr") == 3 and section.count("data-current") == 1 and "192.0.2.7" in section
    assert 'action="/account/sessions/sign-out-others"' in section and "Sign out everywhere else" in section
    assert all(s.id_hash not in html for s in sessions)  # no session hash reaches the page

    done = await laptop.post("/account/sessions/sign-out-others", data={"csrf_token": await page_csrf(laptop)})
    assert (done.status_code, done.headers["location"]) == (303, "/account?done=signed-out-elsewhere#sessions")
    assert (await laptop.get("/account")).status_code == 200  # this browser stays
    assert (await world.user.get("/account")).status_code == 303  # the other one is signed out
    assert (await refresh(world.user, world.client_id, world.tokens["refresh_token"])).status_code == 200  # apps stay
    assert audit_events(runtime, "user.signed_out_elsewhere")[0].details["sessions_ended"] == 1
    assert (await laptop.post("/account/sessions/sign-out-others", data={})).status_code == 400  # no CSRF token
