"""When a credential changes, the tokens obtained with it end (RFC 9700 §4.14.2;
docs/decisions.md#credentials-change-tokens-end).

Disabling a user revokes their refresh tokens for good (enabling them again does not restore
them); a password reset by link, an admin's reset of two-step verification and a password change
revoke them too, the change unless the user keeps their connected apps.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from tests.support import (
    PASSWORD,
    admin_client,
    create_resource,
    create_user,
    csrf_from,
    enrol_totp,
    introspect,
    login,
    refresh,
    register,
    submit,
    tokens_for,
)

pytestmark = pytest.mark.anyio

NEW_PASSWORD = "a much better passphrase"


@pytest.fixture
async def world(client, runtime, new_client):
    """alice signed in on `client`, with an app holding her tokens; root signed in to the console."""
    alice = create_user(runtime, "alice")
    create_user(runtime, "root", admin=True)
    create_resource(runtime)
    reg = await register(client)
    assert (await login(client)).status_code == 303
    tokens = await tokens_for(client, reg["client_id"], scope="mcp:read")
    admin = new_client()
    assert (await login(admin, "root", next_url="/admin")).status_code == 303
    return SimpleNamespace(
        alice=alice, browser=client, admin=admin, client_id=reg["client_id"], tokens=tokens, rs=admin_client(runtime)
    )


async def refresh_works(world) -> bool:
    response = await refresh(world.browser, world.client_id, world.tokens["refresh_token"])
    if response.status_code == 200:
        world.tokens = response.json()
        return True
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant", response.text
    return False


async def access_active(world) -> bool:
    return (await introspect(world.browser, world.tokens["access_token"], world.rs)).json()["active"]


async def test_disabling_revokes_for_good_enabling_does_not_restore(world):
    uid = world.alice.id
    asked = await submit(world.admin, f"/admin/users/{uid}/disable", {}, csrf_page="/admin")
    assert "refresh tokens are revoked" in asked.text
    assert (await submit(world.admin, f"/admin/users/{uid}/disable", {}, confirm=True, csrf_page="/admin")).status_code == 303
    assert not await access_active(world)
    assert (await submit(world.admin, f"/admin/users/{uid}/enable", {}, csrf_page="/admin")).status_code == 303
    assert not await refresh_works(world)
    assert not await access_active(world)


async def test_password_change_revokes_apps_unless_kept(world):
    form = {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD, "keep_apps": "on"}
    page = await world.browser.get("/account")
    assert 'name="keep_apps"' in page.text
    assert (await submit(world.browser, "/account/password", form)).status_code == 303
    assert await refresh_works(world)  # kept: the app goes on
    form = {"current_password": NEW_PASSWORD, "new_password": PASSWORD, "repeat_password": PASSWORD}
    assert (await submit(world.browser, "/account/password", form)).status_code == 303
    assert not await refresh_works(world)
    assert not await access_active(world)
    assert (await world.browser.get("/account")).status_code == 200  # this browser stays signed in


async def test_password_link_reset_revokes_apps(world, new_client):
    made = await submit(world.admin, f"/admin/users/{world.alice.id}/password-link", {}, csrf_page="/admin")
    link = re.search(r'value="(http[^"]+/setup-password/[^"]+)"', made.text).group(1)
    path = "/setup-password/" + link.rsplit("/", 1)[1]
    browser = new_client()
    form = await browser.get(path)
    body = {"csrf_token": csrf_from(form.text), "password": NEW_PASSWORD, "repeat_password": NEW_PASSWORD}
    assert (await browser.post(path, data=body)).status_code == 303
    assert not await refresh_works(world)
    assert (await world.browser.get("/account")).status_code == 303  # every session ended


async def test_mfa_reset_revokes_apps(world):
    await enrol_totp(world.browser)
    uid = world.alice.id
    assert (await submit(world.admin, f"/admin/users/{uid}/reset-mfa", {}, confirm=True, csrf_page="/admin")).status_code == 303
    assert not await refresh_works(world)
    assert not await access_active(world)
