"""The operator's command line, complete: every user, MCP server and client operation the console
has, `--json` on every list, help that says every option's default, one-line errors, and a
server that says in one line why it cannot start (exit 78, EX_CONFIG). Each command runs as an
operator runs it (a real `ostiary` process); its effect is checked over HTTP on the real app."""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import socket
import subprocess

import httpx
import pytest

from app.cli import build_parser
from app.main import create_app
from tests.support import (
    ISSUER,
    OSTIARY,
    PASSWORD,
    RESOURCE,
    ROOT,
    TEST_SECRET,
    audit_events,
    authorize_params,
    cli_env,
    create_resource,
    create_user,
    database_rows,
    execute,
    free_port,
    introspect,
    login,
    make_settings,
    pkce,
    refresh,
    register,
    tokens_for,
)
from tests.test_cli import Ostiary, assert_usage_error

pytestmark = pytest.mark.anyio


@pytest.fixture
def ostiary(clean_db, tmp_path) -> Ostiary:
    return Ostiary(clean_db, tmp_path)


@pytest.fixture
def app(ostiary):
    """The real app on the same database as the command line."""
    application = create_app(make_settings(ostiary.url), run_jobs=False)
    yield application
    application.state.runtime.engine.dispose()


@pytest.fixture
async def browser(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 50010)), base_url=ISSUER) as client:
        yield client


# -- users -------------------------------------------------------------------------------------


async def test_users_enable_set_password_reset_mfa_and_delete(ostiary, app, browser):
    runtime = app.state.runtime
    ostiary.ok("users", "create", "root", "--admin", "--password-stdin", stdin="an admin passphrase\n")
    ostiary.ok("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")

    ostiary.ok("users", "disable", "alice")
    assert "enabled user alice" in ostiary.ok("users", "enable", "alice")
    assert "is not disabled" in ostiary.ok("users", "enable", "alice")
    assert (await login(browser, "alice")).status_code == 303

    new = "a brand new passphrase for alice"
    out = ostiary.ok("users", "set-password", "alice", "--password-stdin", stdin=new + "\n")
    assert "set the password of alice; ended 1 browser session(s)" in out
    assert (await browser.get("/account")).status_code == 303  # signed out
    assert (await login(browser, "alice", PASSWORD)).status_code == 401
    assert (await login(browser, "alice", new)).status_code == 303
    assert [e.details["via"] for e in audit_events(runtime, "user.password_set")] == ["cli"]
    short = ostiary("users", "set-password", "alice", "--password-stdin", stdin="short\n")
    assert_usage_error(short, "ostiary users set-password")

    assert "nothing to reset" in ostiary.ok("users", "reset-mfa", "alice")
    execute(ostiary.url, "UPDATE users SET totp_secret_enc = 'x', totp_enabled_at = 1 WHERE username = 'alice'")
    assert "reset two-step verification of alice" in ostiary.ok("users", "reset-mfa", "alice")
    assert ostiary.rows("SELECT totp_secret_enc, totp_enabled_at FROM users WHERE username = 'alice'") == [(None, None)]
    assert (await browser.get("/account")).status_code == 303  # sessions signed in with the old factor end

    assert "deleted user alice" in ostiary.ok("users", "delete", "alice")
    assert [r[0] for r in ostiary.rows("SELECT username FROM users")] == ["root"]
    assert audit_events(runtime, "user.deleted")[0].details["via"] == "cli"
    missing = ostiary("users", "delete", "alice")
    assert_usage_error(missing, "ostiary users delete")

    last = ostiary("users", "delete", "root")  # the console's rule: never the last active admin
    assert_usage_error(last, "ostiary users delete")
    assert "last active admin" in last.stderr


async def test_deleting_a_user_ends_their_tokens(ostiary, app, browser):
    runtime = app.state.runtime
    create_user(runtime, "alice")
    create_resource(runtime)
    reg = await register(browser)
    assert (await login(browser)).status_code == 303
    tokens = await tokens_for(browser, reg["client_id"])
    ostiary.ok("users", "delete", "alice")
    refused = await refresh(browser, reg["client_id"], tokens["refresh_token"])
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")
    assert ostiary.rows("SELECT COUNT(*) FROM revoked_access_tokens") == [(1,)]  # inactive at introspection


# -- MCP servers -------------------------------------------------------------------------------


def test_resources_add_refuses_a_uri_it_would_rewrite_unless_told(ostiary):
    """docs/decisions.md#the-command-line-does-not-rewrite-a-resource-uri-silently: the URI is the
    audience of every token; the command line never stores another spelling than the one typed
    without --canonical."""
    scope = ["--name", "Notes", "--scope", "notes:read=Read your notes"]
    before = database_rows(ostiary.url)
    for typed, canonical, change in (
        ("https://mcp.example.com/mcp/", "https://mcp.example.com/mcp", "the trailing slash dropped"),
        ("https://MCP.example.com/Mcp", "https://mcp.example.com/Mcp", "scheme and host in lower case"),
        ("https://mcp.example.com:443/mcp", "https://mcp.example.com/mcp", "the default port dropped"),
    ):
        result = ostiary("resources", "add", typed, *scope)
        assert_usage_error(result, "ostiary resources add")
        assert f"would be stored as {canonical} ({change})" in result.stderr and "--canonical" in result.stderr
    assert database_rows(ostiary.url) == before
    assert "https://mcp.example.com/mcp" in ostiary.ok("resources", "add", "https://mcp.example.com/mcp/", *scope, "--canonical")
    # The path keeps its case (it belongs to the MCP server).
    ostiary.ok("resources", "add", "https://mcp.example.com/Tools", *scope)
    assert sorted(r[0] for r in ostiary.rows("SELECT uri FROM resources")) == [
        "https://mcp.example.com/Tools",
        "https://mcp.example.com/mcp",
    ]


async def test_resources_remove_refuses_while_consents_exist_unless_forced(ostiary, app, browser):
    runtime = app.state.runtime
    create_user(runtime, "alice")
    create_resource(runtime)
    ostiary.ok("resources", "add", "https://other.example.com/mcp", "--name", "Other", "--scope", "o=Other")
    reg = await register(browser)
    assert (await login(browser)).status_code == 303
    tokens = await tokens_for(browser, reg["client_id"])
    rs = ostiary.ok("clients", "add", "--name", "RS", "--confidential", "--introspect-any")
    auth = (re.search(r"^client_id: (\S+)$", rs, re.M)[1], re.search(r"^client_secret: (\S+)$", rs, re.M)[1])

    assert "removed MCP server https://other.example.com/mcp" in ostiary.ok(
        "resources", "remove", "https://other.example.com/mcp"
    )
    before = database_rows(ostiary.url)
    refused = ostiary("resources", "remove", RESOURCE)
    assert_usage_error(refused, "ostiary resources remove")
    assert "1 consent(s) to https://mcp.example.com/mcp exist: give --force" in refused.stderr
    assert database_rows(ostiary.url) == before

    out = ostiary.ok("resources", "remove", RESOURCE.upper().replace("/MCP", "/mcp"), "--force")  # canonical compare
    assert "removed MCP server https://mcp.example.com/mcp; revoked 1 consent(s)" in out
    assert ostiary.rows("SELECT COUNT(*) FROM resources") == [(0,)]
    assert ostiary.rows("SELECT COUNT(*) FROM grants") == [(0,)]
    assert (await introspect(browser, tokens["access_token"], auth)).json() == {"active": False}
    refused = await refresh(browser, reg["client_id"], tokens["refresh_token"])
    assert refused.json()["error"] == "invalid_grant"
    assert [e.details["via"] for e in audit_events(runtime, "consent.revoked")] == ["cli"]
    assert [e.resource for e in audit_events(runtime, "resource.removed")] == ["https://other.example.com/mcp", RESOURCE]
    assert_usage_error(ostiary("resources", "remove", RESOURCE), "ostiary resources remove")


# -- clients -----------------------------------------------------------------------------------


async def test_a_disabled_client_is_refused_at_authorize_and_token_until_enabled(ostiary, app, browser):
    """docs/decisions.md#a-disabled-client-is-refused-until-enabled: an error page at /authorize,
    `invalid_client` (401) at /token; nothing revoked, so its refresh token works again once it
    is enabled."""
    runtime = app.state.runtime
    create_user(runtime, "alice")
    create_resource(runtime)
    reg = await register(browser)
    client_id = reg["client_id"]
    assert (await login(browser)).status_code == 303
    tokens = await tokens_for(browser, client_id)

    assert ostiary.ok("clients", "disable", client_id).strip() == f"{client_id}: disabled"
    assert ostiary.ok("clients", "disable", client_id).strip() == f"{client_id}: disabled (already)"
    assert re.search(rf"^{re.escape(client_id)}\s.*\sdisabled$", ostiary.ok("clients", "list"), re.M)

    _, challenge = pkce()
    page = await browser.get("/authorize", params=authorize_params(client_id, challenge))
    assert page.status_code == 400 and page.headers["content-type"].startswith("text/html")
    assert "location" not in page.headers and "disabled by the administrator" in page.text
    refused = await refresh(browser, client_id, tokens["refresh_token"])
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")
    bad_type = await browser.get("/authorize", params=authorize_params(client_id, challenge, response_type="token"))
    assert bad_type.status_code == 400  # refused, never a 500

    assert ostiary.ok("clients", "enable", client_id).strip() == f"{client_id}: enabled"
    assert (await refresh(browser, client_id, tokens["refresh_token"])).status_code == 200
    assert [(e.event, e.details["via"]) for e in audit_events(runtime, "client.disabled")] == [("client.disabled", "cli")]
    assert len(audit_events(runtime, "client.enabled")) == 1

    assert "removed client" in ostiary.ok("clients", "remove", client_id)
    assert ostiary.rows("SELECT COUNT(*) FROM clients") == [(0,)]
    assert (await refresh(browser, client_id, tokens["refresh_token"])).status_code == 401
    assert_usage_error(ostiary("clients", "remove", client_id), "ostiary clients remove")
    assert_usage_error(ostiary("clients", "disable", "nobody"), "ostiary clients disable")


# -- lists, help, errors -----------------------------------------------------------------------


LISTS = [
    ["users", "list"],
    ["resources", "list"],
    ["clients", "list"],
    ["clients", "blocked"],
    ["clients", "hosts", "list"],
    ["idps", "list"],
    ["keys", "list"],
]


def _leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) of every command that runs something."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from _leaf_parsers(child, (*path, name))


def test_every_list_command_takes_json(ostiary):
    ostiary.ok("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
    ostiary.ok("resources", "add", RESOURCE, "--name", "Notes", "--scope", "notes:read=Read")
    ostiary.ok("clients", "block", "https://phish.example/c.json", "--reason", "phishing")
    listed = {tuple(p for p in path): p for path, p in _leaf_parsers(build_parser()) if path[-1] in ("list", "blocked")}
    assert set(listed) == {tuple(c) for c in LISTS}  # every list command is tested here
    outputs = {tuple(c): json.loads(ostiary.ok(*c, "--json")) for c in LISTS}
    assert all(isinstance(v, list) for v in outputs.values())
    assert [u["username"] for u in outputs[("users", "list")]] == ["alice"]
    assert outputs[("resources", "list")][0]["scopes"][0]["name"] == "notes:read"
    assert outputs[("clients", "blocked")][0]["reason"] == "phishing"
    assert {k["state"] for k in outputs[("keys", "list")]} >= {"active", "next"}


@pytest.mark.parametrize(
    ("path", "parser"), list(_leaf_parsers(build_parser())), ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_every_option_is_described_with_its_default(path, parser):
    help_text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"ostiary {' '.join(path)}: {action.dest} has no help"
        if action.option_strings and action.default not in (None, False, []):
            assert f"default: {action.default}" in " ".join(help_text.split()), (path, action.dest)


def test_the_readme_lists_every_command_and_only_those():
    """tests/test_readme.py parses every README form; this is the other direction."""
    readme = (ROOT / "README.md").read_text()
    forms = re.search(r"```text\n(.*?)```", readme.split("## The `ostiary` command\n", 1)[1], re.S).group(1).splitlines()
    documented = set()
    for line in forms:
        words = [w for w in shlex.split(line.split("#")[0])[1:]]
        documented.add(tuple(w for w in words[:3] if re.fullmatch(r"[a-z][a-z-]*", w)))
    commands = {path for path, _ in _leaf_parsers(build_parser())}
    for path in commands:
        assert any(d[: len(path)] == path for d in documented), f"README lacks ostiary {' '.join(path)}"
    for form in documented:
        assert any(form[: len(path)] == path for path in commands), form


def test_errors_are_one_line_and_the_help_hint(ostiary):
    result = ostiary("resources", "add", "https://mcp.example.com/mcp", "--name", "N", "--scope", "a=b", "--token-ttl", "x")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "ostiary resources add: error: argument --token-ttl: invalid int value: 'x'",
        "Run 'ostiary resources add --help' for its usage.",
    ]


# -- startup errors (B) ------------------------------------------------------------------------


def _serve(url: str, port: int, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*OSTIARY, "serve", "--port", str(port)],
        env=cli_env(url, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_keyring_that_cannot_decrypt_the_keys_stops_serve_with_one_line(ostiary):
    """The stored signing keys were encrypted under TEST_SECRET; a keyring without it is a
    setting to fix, said before anything is served (exit 78, EX_CONFIG)."""
    result = _serve(ostiary.url, free_port(), OSTIARY_SECRET_KEYS="another-secret-0123456789abcdef0123456789abcdef")
    assert result.returncode == 78, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("ostiary: invalid setting OSTIARY_SECRET_KEYS: no secret in it decrypts")
    assert "put back the secret" in line and TEST_SECRET not in line
    # ... and the same for a launcher that runs the app factory itself.
    factory = subprocess.run(
        ["python", "-c", "from app.main import create_app_from_env; create_app_from_env()"],
        env=cli_env(ostiary.url, OSTIARY_ISSUER=ISSUER, OSTIARY_SECRET_KEYS="another-secret-0123456789abcdef0123456789abcdef"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert factory.returncode == 78 and len(factory.stderr.splitlines()) == 1, factory.stderr
    assert "OSTIARY_SECRET_KEYS" in factory.stderr


def test_a_busy_port_stops_serve_with_one_line_before_serving(ostiary):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(ostiary.url, port)
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f"ostiary: port {port} on 127.0.0.1 is already in use: stop what listens there, or give another --port"
    ]


async def test_a_misdirected_host_log_line_names_the_host_and_the_settings(browser, caplog):
    with caplog.at_level(logging.WARNING, logger="ostiary.edge"):
        response = await browser.get("/login", headers={"Host": "auth.example.org"})
    assert response.status_code == 421
    (line,) = [r.getMessage() for r in caplog.records if "auth.example.org'" in r.getMessage()][-1:]
    assert "host 'auth.example.org'" in line and "127.0.0.1:8000" in line
    assert "OSTIARY_ISSUER" in line and "OSTIARY_EXTRA_HOSTS" in line
