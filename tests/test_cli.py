"""The operator CLI, each command through a real `ostiary` process, against the
test database (a throwaway SQLite file, or PostgreSQL with OSTIARY_TEST_DATABASE_URL).

The forms are a contract. Bad arguments or values: one line saying what is wrong and one pointing
to --help on stderr (not the whole usage block), exit 2, and nothing written (checked by comparing
every row of every table before and after).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from app.infra import workers
from app.infra.db import make_engine
from app.main import create_app
from app.security.secrets import Keyring
from app.stores import schema
from tests.support import (
    ISSUER,
    OSTIARY,
    PASSWORD,
    PG_URL,
    TEST_SECRET,
    cli_env,
    database_rows,
    database_text,
    empty_database,
    execute,
    free_port,
    login,
    make_settings,
)

pytestmark = pytest.mark.anyio


class Ostiary:
    """`ostiary ...` against one database."""

    def __init__(self, url: str, cwd: Path):
        self.url, self.cwd = url, cwd

    def __call__(self, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*OSTIARY, *args],
            input=stdin if stdin is not None else "",
            env=cli_env(self.url, **{"OSTIARY_ISSUER": ISSUER, **env}),
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ok(self, *args: str, stdin: str | None = None, **env: str) -> str:
        result = self(*args, stdin=stdin, **env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def rows(self, statement: str) -> list[tuple]:
        engine = make_engine(self.url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(statement))]
        finally:
            engine.dispose()


@pytest.fixture
def ostiary(clean_db, tmp_path) -> Ostiary:
    """The migrated test database, with no users, clients, resources or grants."""
    return Ostiary(clean_db, tmp_path)


@pytest.fixture
def ostiary_no_keys(fresh_keys, tmp_path) -> Ostiary:
    """The same, without signing keys."""
    return Ostiary(fresh_keys, tmp_path)


def assert_usage_error(result: subprocess.CompletedProcess, usage: str) -> None:
    """Exit 2, and on stderr exactly: `<command>: error: <why>` and the hint to its --help."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    error, hint = result.stderr.splitlines()
    assert error.startswith(f"{usage}: error: "), result.stderr
    assert hint == f"Run '{usage} --help' for its usage."
    assert "usage:" not in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


def app_on(url: str):
    return create_app(make_settings(url), run_jobs=False)


def asgi_client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 50003)), base_url=ISSUER)


# -- migrate -----------------------------------------------------------------------------------


@pytest.fixture
def empty_ostiary(request, empty_database_url, tmp_path) -> Ostiary:
    return Ostiary(empty_database_url, tmp_path)


def test_migrate_from_empty(empty_ostiary):
    out = empty_ostiary.ok("migrate")
    assert f"database at revision {schema.head()} (was empty)" in out
    engine = make_engine(empty_ostiary.url)
    assert schema.is_current(engine)
    engine.dispose()
    assert "(up to date)" in empty_ostiary.ok("migrate")


def test_migrate_needs_no_secret_keys(empty_ostiary):
    """A release job migrates before any server starts, often without the servers' secrets: with
    a production issuer and no OSTIARY_SECRET_KEYS, migrate still runs (serve still refuses)."""
    env = {"OSTIARY_SECRET_KEYS": "", "OSTIARY_ISSUER": "https://auth.example.com"}
    assert f"database at revision {schema.head()}" in empty_ostiary.ok("migrate", **env)
    refused = empty_ostiary("users", "list", **env)
    assert refused.returncode != 0 and "OSTIARY_SECRET_KEYS" in refused.stderr


# -- users -------------------------------------------------------------------------------------


async def test_users_create_list_disable(ostiary):
    assert "created admin user admin" in ostiary.ok(
        "users", "create", "admin", "--admin", "--password-stdin", stdin="an admin passphrase\n"
    )
    assert "created user alice" in ostiary.ok("users", "create", "Alice", "--password-stdin", stdin=PASSWORD + "\n")
    listing = ostiary.ok("users", "list")
    assert re.search(r"^admin\s+yes\s+active", listing, re.M)
    assert re.search(r"^alice\s+active", listing, re.M)  # usernames are case-folded
    assert PASSWORD not in database_text(ostiary.url)  # argon2id only

    app = app_on(ostiary.url)
    try:
        async with asgi_client(app) as browser, asgi_client(app) as other:
            assert (await login(browser, "alice")).status_code == 303
            assert (await browser.get("/account")).status_code == 200

            out = ostiary.ok("users", "disable", "alice")
            assert "disabled user alice; ended 1 browser session(s)" in out
            assert re.search(r"^alice\s+disabled", ostiary.ok("users", "list"), re.M)
            assert (await browser.get("/account")).status_code == 303  # the session ended
            refused = await login(other, "alice")
            assert refused.status_code == 401  # a disabled user cannot sign in
            assert "Incorrect username or password." in refused.text
    finally:
        app.state.runtime.engine.dispose()
    assert "already disabled" in ostiary.ok("users", "disable", "alice")


def test_users_disable_never_disables_the_last_admin(ostiary):
    """The same last-admin rule as the console: the CLI cannot leave the server without an
    active admin either."""
    ostiary.ok("users", "create", "root", "--admin", "--password-stdin", stdin="an admin passphrase\n")
    result = ostiary("users", "disable", "root")
    assert_usage_error(result, "ostiary users disable")
    assert "last active admin" in result.stderr
    assert re.search(r"^root\s+yes\s+active", ostiary.ok("users", "list"), re.M)
    ostiary.ok("users", "create", "second", "--admin", "--password-stdin", stdin="another admin passphrase\n")
    assert "disabled user root" in ostiary.ok("users", "disable", "root")


USERS_BAD = [
    pytest.param(["users", "create", "bob", "--password-stdin"], "short\n", id="password too short"),
    pytest.param(["users", "create", "bob"], PASSWORD + "\n", id="no --password-stdin and no terminal"),
    pytest.param(["users", "create", "bo b", "--password-stdin"], PASSWORD + "\n", id="username with a space"),
    pytest.param(["users", "create", "ALICE", "--password-stdin"], PASSWORD + "\n", id="existing username"),
    pytest.param(["users", "disable", "nobody"], "", id="disable unknown user"),
]


@pytest.mark.parametrize("args, stdin", USERS_BAD)
def test_users_bad_values_exit_2_write_nothing(bad_runs, args, stdin):
    bad_runs.check(args, stdin, f"ostiary users {args[1]}")


# -- resources ---------------------------------------------------------------------------------


def test_resources_add_prints_canonical_uri_rfc8707(ostiary):
    """With --canonical the operator accepts the canonical form; without it, see
    tests/test_cli_complete.py (docs/decisions.md#the-command-line-does-not-rewrite-a-resource-uri-silently)."""
    out = ostiary.ok(
        "resources", "add", "HTTPS://MCP.Example.COM:443/mcp/", "--canonical",
        "--name", "Notes",
        "--scope", "notes:read=Read your notes",
        "--scope", "notes:write=Change your notes",
        "--default-scope", "notes:read",
        "--token-ttl", "300",
    )  # fmt: skip
    assert "https://mcp.example.com/mcp" in out
    listing = ostiary.ok("resources", "list")
    assert re.search(r"^https://mcp\.example\.com/mcp\s+Notes\s+notes:read\* notes:write\s+300$", listing, re.M)
    assert ostiary.rows("SELECT uri, name, token_ttl FROM resources") == [("https://mcp.example.com/mcp", "Notes", 300)]
    assert sorted(ostiary.rows("SELECT name, description, is_default FROM resource_scopes")) == [
        ("notes:read", "Read your notes", True),
        ("notes:write", "Change your notes", False),
    ]
    ostiary.ok("resources", "add", "https://files.example.com", "--name", "Files", "--scope", "files=Your files")
    assert re.search(r"^https://files\.example\.com\s+Files\s+files\s+600$", ostiary.ok("resources", "list"), re.M)


GOOD = ["--name", "Notes", "--scope", "notes:read=Read your notes"]


RESOURCES_BAD = [
    pytest.param(["ftp://mcp.example.com", *GOOD], id="URI not https"),
    pytest.param(["http://mcp.example.com/mcp", *GOOD], id="URI http on a public host"),
    pytest.param(["https://mcp.example.com/mcp#frag", *GOOD], id="URI with fragment"),
    pytest.param(["mcp.example.com/mcp", *GOOD], id="URI relative"),
    pytest.param(["https://user@mcp.example.com", *GOOD], id="URI with user information"),
    pytest.param(["https://mcp.example.com", "--name", "Notes"], id="no scope"),
    pytest.param(["https://mcp.example.com", "--name", "Notes", "--scope", "notes:read"], id="scope without description"),
    pytest.param(["https://mcp.example.com", "--name", "Notes", "--scope", "notes:read="], id="scope with empty description"),
    pytest.param(["https://mcp.example.com", "--name", "Notes", "--scope", "notes read=x"], id="scope with a space"),
    pytest.param(["https://mcp.example.com", "--name", "Notes", "--scope", "notes:*=everything"], id="wildcard scope"),
    pytest.param(["https://mcp.example.com", "--name", "Notes", "--scope", 'no"quote=x'], id="scope with a quote"),
    pytest.param(["https://mcp.example.com", "--name", "Notes", "--scope", "offline_access=x"], id="protocol scope"),
    pytest.param(["https://mcp.example.com", *GOOD, "--scope", "notes:read=again"], id="duplicate scope"),
    pytest.param(["https://mcp.example.com", *GOOD, "--default-scope", "notes:write"], id="default scope not declared"),
    pytest.param(["https://mcp.example.com", *GOOD, "--token-ttl", "29"], id="token ttl under 30 s"),
    pytest.param(["https://mcp.example.com", *GOOD, "--token-ttl", "3601"], id="token ttl over one hour"),
    pytest.param(["https://mcp.example.com", *GOOD, "--token-ttl", "ten"], id="token ttl not a number"),
    pytest.param(["https://mcp.example.com", "--name", " ", "--scope", "a=b"], id="blank name"),
    pytest.param(["HTTPS://Existing.example.com/", *GOOD, "--canonical"], id="already registered (another spelling)"),
]


@pytest.mark.parametrize("args", RESOURCES_BAD)
def test_resources_add_bad_values_exit_2_write_nothing(bad_runs, args):
    bad_runs.check(["resources", "add", *args], "", "ostiary resources add")


# -- clients -----------------------------------------------------------------------------------


def test_clients_add_public(ostiary):
    result = ostiary("clients", "add", "--name", "Desktop app", "--redirect-uri", "http://127.0.0.1:33418/callback")
    assert result.returncode == 0, result.stderr
    (client_id,) = re.findall(r"^client_id: (\S+)$", result.stdout, re.M)
    assert "client_secret" not in result.stdout
    assert ostiary.rows("SELECT id, token_endpoint_auth_method, secret_hash FROM clients") == [(client_id, "none", None)]
    assert re.search(
        rf"^{re.escape(client_id)}\s+Desktop app\s+admin\s+public\s+127\.0\.0\.1:33418", ostiary.ok("clients", "list"), re.M
    )


def test_users_unlock_lifts_a_second_factor_lock(ostiary):
    """docs/decisions.md#wrong-totp-codes-lock-the-account-after-twenty-in-a-row: an admin at the
    command line lifts the lock."""
    ostiary.ok("users", "create", "carol", "--password-stdin", stdin=PASSWORD + "\n")
    assert "was not locked" in ostiary.ok("users", "unlock", "carol")
    execute(ostiary.url, "UPDATE users SET locked_at = 1, mfa_failures = 20 WHERE username = 'carol'")
    assert "user carol: unlocked" in ostiary.ok("users", "unlock", "carol")
    assert ostiary.rows("SELECT locked_at, mfa_failures FROM users WHERE username = 'carol'") == [(None, 0)]
    assert ostiary("users", "unlock", "nobody").returncode == 2


def test_clients_block_unblock_and_list(ostiary):
    """A metadata-document URL blocked from the command line is listed, and unblocked again."""
    url = "https://phish.example/client.json"
    assert f"{url}: blocked" in ostiary.ok("clients", "block", url, "--reason", "phishing")
    assert "(already)" in ostiary.ok("clients", "block", url)
    assert re.search(rf"^{re.escape(url)}\s+phishing", ostiary.ok("clients", "blocked"), re.M)
    assert f"{url}: unblocked" in ostiary.ok("clients", "unblock", url)
    assert url not in ostiary.ok("clients", "blocked")


def test_clients_trust_and_untrust(ostiary):
    """docs/decisions.md#errors-of-self-registered-clients-stay-on-ostiary-until-sign-in."""
    execute(
        ostiary.url,
        "INSERT INTO clients (id, kind, name, token_endpoint_auth_method, redirect_uris, grant_types, response_types,"
        " metadata, trusted, introspect_any, created_at, updated_at)"
        " VALUES ('dyn1', 'dynamic', 'Dyn', 'none', '[]', '[]', '[]', '{}', false, false, 0, 0)",
    )
    assert "dyn1: trusted" in ostiary.ok("clients", "trust", "dyn1")
    assert ostiary.rows("SELECT trusted FROM clients WHERE id = 'dyn1'") == [(True,)]
    assert "dyn1: not trusted" in ostiary.ok("clients", "untrust", "dyn1")
    assert ostiary.rows("SELECT trusted FROM clients WHERE id = 'dyn1'") == [(False,)]
    refused = ostiary("clients", "trust", "nobody")
    assert refused.returncode == 2 and "no client 'nobody'" in refused.stderr


def test_clients_add_mcp_server_credentials_for_introspection(ostiary):
    """docs/decisions.md#introspection-is-for-the-tokens-mcp-server: an MCP server's credentials
    are linked to it (no redirect URI needed); --introspect-any is explicit."""
    ostiary.ok("resources", "add", "https://notes.example.com/mcp", "--name", "Notes", "--scope", "notes=Notes")
    out = ostiary.ok(
        "clients", "add", "--name", "Notes server", "--confidential", "--resource-server", "HTTPS://notes.example.com/mcp"
    )
    (client_id,) = re.findall(r"^client_id: (\S+)$", out, re.M)
    out = ostiary.ok("clients", "add", "--name", "Auditor", "--confidential", "--introspect-any")
    (auditor,) = re.findall(r"^client_id: (\S+)$", out, re.M)
    rows = dict(
        (r[0], r[1:])
        for r in ostiary.rows("SELECT c.id, r.uri, c.introspect_any FROM clients c LEFT JOIN resources r ON r.id = c.resource_id")
    )
    assert rows[client_id] == ("https://notes.example.com/mcp", False)
    assert rows[auditor] == (None, True)
    unknown = ostiary("clients", "add", "--name", "X", "--confidential", "--resource-server", "https://nowhere.example/mcp")
    assert unknown.returncode == 2 and "no MCP server" in unknown.stderr
    public = ostiary("clients", "add", "--name", "X", "--introspect-any")
    assert public.returncode == 2 and "need --confidential" in public.stderr
    no_redirect = ostiary("clients", "add", "--name", "X")
    assert no_redirect.returncode == 2 and "--redirect-uri is required" in no_redirect.stderr


def test_clients_add_confidential_secret_printed_once_hash_stored(ostiary):
    result = ostiary(
        "clients", "add", "--name", "Web app", "--confidential",
        "--redirect-uri", "https://app.example.com/callback", "--redirect-uri", "https://app.example.com/other",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (client_id,) = re.findall(r"^client_id: (\S+)$", result.stdout, re.M)
    (secret,) = re.findall(r"^client_secret: (\S+)$", result.stdout, re.M)
    assert len(secret) >= 43
    assert "shown once" in result.stderr
    dump = database_text(ostiary.url)
    # No bearer secret stored in clear (docs/decisions.md#bearer-secrets-are-stored-as-keyed-hmacs).
    assert secret not in dump
    ((stored_id, method, secret_hash, uris),) = ostiary.rows(
        "SELECT id, token_endpoint_auth_method, secret_hash, redirect_uris FROM clients"
    )
    assert (stored_id, method) == (client_id, "client_secret_basic")
    assert secret_hash == Keyring([TEST_SECRET.encode()]).hash(secret)  # HMAC-SHA256 under the keyring
    assert "app.example.com/other" in str(uris)
    listing = ostiary.ok("clients", "list")
    assert secret not in listing and re.search(rf"^{re.escape(client_id)}\s+Web app\s+admin\s+confidential", listing, re.M)


CLIENTS_BAD = [
    pytest.param(["--name", "X", "--redirect-uri", "http://app.example.com/cb"], id="http on a public host"),
    pytest.param(["--name", "X", "--redirect-uri", "https://app.example.com/cb#frag"], id="fragment"),
    pytest.param(["--name", "X", "--redirect-uri", "https://*.example.com/cb"], id="wildcard"),
    pytest.param(["--name", "X", "--redirect-uri", "javascript:alert(1)"], id="javascript"),
    pytest.param(["--name", "X", "--redirect-uri", "/callback"], id="relative"),
    pytest.param(
        ["--name", "X", "--redirect-uri", "https://ok.example.com/cb", "--redirect-uri", "data:text/html,x"],
        id="one bad among good",
    ),
    pytest.param(["--name", "", "--redirect-uri", "https://app.example.com/cb"], id="empty name"),
    pytest.param(["--name", "X"], id="missing --redirect-uri"),
    pytest.param(["--redirect-uri", "https://app.example.com/cb"], id="missing --name"),
]


@pytest.mark.parametrize("args", CLIENTS_BAD)
def test_clients_add_bad_values_exit_2_write_nothing(bad_runs, args):
    bad_runs.check(["clients", "add", *args], "", "ostiary clients add")


# -- keys --------------------------------------------------------------------------------------


async def test_keys_list_and_rotate_jwks_changes(ostiary_no_keys):
    ostiary = ostiary_no_keys
    assert "no keys yet" in ostiary.ok("keys", "list")

    # The first run creates the active and next keys, then refuses: the next key was only just
    # published, and resource servers may still hold a JWKS without it.
    refused = ostiary("keys", "rotate")
    assert refused.returncode == 1 and "not rotated" in refused.stderr
    states = dict(ostiary.rows("SELECT state, kid FROM signing_keys"))
    assert set(states) == {"active", "next"}
    listing = ostiary.ok("keys", "list")
    assert re.search(rf"^{states['active']}\s+RS256\s+active", listing, re.M)
    assert re.search(rf"^{states['next']}\s+RS256\s+next", listing, re.M)
    assert "next scheduled rotation" in listing

    app = app_on(ostiary.url)
    try:
        async with asgi_client(app) as c:
            before = (await c.get("/jwks")).json()
            assert [k["kid"] for k in before["keys"]] == [states["active"], states["next"]]

            out = ostiary.ok("keys", "rotate", "--force")
            assert f"rotated: {states['next']} now signs" in out
            app.state.runtime.keys.invalidate()  # as the reload interval would
            after = (await c.get("/jwks")).json()
            kids = [k["kid"] for k in after["keys"]]
            assert kids[0] == states["next"] and states["active"] in kids and len(kids) == 3

            again = ostiary("keys", "rotate")  # the new next key is too young again
            assert again.returncode == 1
            app.state.runtime.keys.invalidate()
            assert (await c.get("/jwks")).json() == after
    finally:
        app.state.runtime.engine.dispose()
    listing = ostiary.ok("keys", "list")
    assert re.search(rf"^{states['active']}\s+RS256\s+retired", listing, re.M)
    assert re.search(rf"^{states['next']}\s+RS256\s+active", listing, re.M)


# -- bad arguments -----------------------------------------------------------------------------


ARGUMENTS_BAD = [
    pytest.param([], "ostiary", id="no command"),
    pytest.param(["frobnicate"], "ostiary", id="unknown command"),
    pytest.param(["users"], "ostiary users", id="users without action"),
    pytest.param(["users", "shred", "alice"], "ostiary users", id="unknown users action"),
    pytest.param(["users", "create", "--password-stdin"], "ostiary users create", id="users create without USERNAME"),
    pytest.param(["users", "disable"], "ostiary users disable", id="users disable without USERNAME"),
    pytest.param(
        ["resources", "add", "https://mcp.example.com", "--scope", "a=b"],
        "ostiary resources add",
        id="resources add without --name",
    ),
    pytest.param(["resources", "add", "--name", "X", "--scope", "a=b"], "ostiary resources add", id="resources add without URI"),
    pytest.param(["clients"], "ostiary clients", id="clients without action"),
    pytest.param(["keys", "rotate", "--now"], "ostiary keys rotate", id="unknown option"),
    pytest.param(["keys", "shred"], "ostiary keys", id="unknown keys action"),
    pytest.param(["serve", "--port", "70000"], "ostiary serve", id="serve port out of range"),
    pytest.param(["serve", "--port", "http"], "ostiary serve", id="serve port not a number"),
    pytest.param(["serve", "--workers", "0"], "ostiary serve", id="serve zero workers"),
]


@pytest.mark.parametrize("args, usage", ARGUMENTS_BAD)
def test_bad_arguments_exit_2_with_usage_write_nothing(bad_runs, args, usage):
    bad_runs.check(args, "", usage)


def test_bad_arguments_never_create_a_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'never.db'}"
    cases = [
        (["users", "create", "bob", "--password-stdin"], "short\n"),
        (["users", "disable", "nobody"], ""),
        (["resources", "add", "nope", *GOOD], ""),
        (["frobnicate"], ""),
    ]
    results = run_parallel(Ostiary(url, tmp_path), cases)
    assert [r.returncode for r in results] == [2, 2, 2, 2]
    assert list(tmp_path.iterdir()) == []  # no database, no generated keyring


# -- the bad-value cases, run at once ----------------------------------------------------------


def run_parallel(ostiary: Ostiary, cases: list[tuple[list[str], str]]) -> list[subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 2)) as pool:
        return list(pool.map(lambda case: ostiary(*case[0], stdin=case[1]), cases))


class BadRuns:
    """Every bad-value case of this module, run concurrently against one seeded database; the
    database is dumped before and after (any case that wrote something shows in the diff)."""

    def __init__(self, ostiary: Ostiary):
        ostiary.ok("migrate")
        ostiary.ok("users", "create", "alice", "--password-stdin", stdin=PASSWORD + "\n")
        ostiary.ok("resources", "add", "https://existing.example.com", *GOOD)
        cases = [(list(p.values[0]), p.values[1]) for p in USERS_BAD]
        cases += [(["resources", "add", *p.values[0]], "") for p in RESOURCES_BAD]
        cases += [(["clients", "add", *p.values[0]], "") for p in CLIENTS_BAD]
        cases += [(list(p.values[0]), "") for p in ARGUMENTS_BAD]
        self.before = database_rows(ostiary.url)
        results = run_parallel(ostiary, cases)
        self.after = database_rows(ostiary.url)
        self.results = {(tuple(args), stdin): result for (args, stdin), result in zip(cases, results, strict=True)}

    def check(self, args: list[str], stdin: str, usage: str) -> None:
        assert_usage_error(self.results[(tuple(args), stdin)], usage)
        changed = {t: (self.before.get(t), rows) for t, rows in self.after.items() if self.before.get(t) != rows}
        assert changed == {}, f"a bad command wrote to the database: {changed}"


@pytest.fixture(scope="module")
def bad_runs(database_url, tmp_path_factory) -> Iterator[BadRuns]:
    directory = tmp_path_factory.mktemp("cli-bad")
    with empty_database(directory) as url:  # its own database: this runs once for the module
        yield BadRuns(Ostiary(url, directory))


# -- serve -------------------------------------------------------------------------------------


def serve_until_ready(url: str, cwd: Path, *args: str) -> None:
    """Start `ostiary serve` on 127.0.0.1, wait for /readyz, check it serves, stop it."""
    port = free_port()
    proc = subprocess.Popen(
        [*OSTIARY, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
        env=cli_env(url),  # no OSTIARY_ISSUER: serve derives http://127.0.0.1:PORT
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "ostiary serve did not become ready"
            time.sleep(0.1)
        doc = httpx.get(base + "/.well-known/oauth-authorization-server", timeout=5).json()
        assert doc["issuer"] == base
        assert len(httpx.get(base + "/jwks", timeout=5).json()["keys"]) == 2
    finally:
        _stop(proc, 15)


def _stop(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL after `timeout` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()


def _sockets_of(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds open (none once it has ended)."""
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _tcp_sockets(port: int) -> dict[int, str]:
    """inode -> "listen" or "established" of the IPv4 TCP sockets whose local port is `port`."""
    states = {"0A": "listen", "01": "established"}
    found = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] in states:
            found[int(fields[9])] = states[fields[3]]
    return found


def _workers(parent: int, port: int) -> dict[int, set[int]]:
    """worker pid -> the inodes of the listening sockets on `port` it holds, for each child of
    `parent` that listens there."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    listening = {inode for inode, state in _tcp_sockets(port).items() if state == "listen"}
    held = {int(pid): _sockets_of(int(pid)) & listening for pid in children}
    return {pid: inodes for pid, inodes in held.items() if inodes}


@pytest.mark.skipif(not workers.can_share_port(), reason="SO_REUSEPORT balancing is Linux's")
def test_serve_workers_each_listen_and_share_the_connections(ostiary):
    """docs/decisions.md#workers-listen-on-their-own-sockets: with --workers 2 each worker has its
    own listening socket on the port and new connections reach both (one shared socket let one
    worker take every keep-alive connection); a worker that dies is replaced; SIGTERM stops all."""
    port = free_port()
    proc = subprocess.Popen(
        [*OSTIARY, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=cli_env(ostiary.url),
        cwd=ostiary.cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"

    def until(condition, what: str) -> None:
        deadline = time.monotonic() + 30
        while not condition():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    clients = [httpx.Client(base_url=base, timeout=5) for _ in range(24)]
    try:
        until(lambda: len(_workers(proc.pid, port)) == 2, "two workers did not start listening")
        first = _workers(proc.pid, port)
        assert all(len(inodes) == 1 for inodes in first.values())
        assert len(set().union(*first.values())) == 2  # two sockets, not one shared
        for client in clients:  # 24 keep-alive connections, each opened and answered
            assert client.get("/readyz").status_code == 200
        established = {inode for inode, state in _tcp_sockets(port).items() if state == "established"}
        held = {pid: len(_sockets_of(pid) & established) for pid in first}
        assert sum(held.values()) == 24, held
        assert all(count > 0 for count in held.values()), held  # 2 * 2**-24 to fail by chance
        # A second server cannot join the workers' group by accident: serve checks the port first.
        second = subprocess.run(
            [*OSTIARY, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            env=cli_env(ostiary.url),
            cwd=ostiary.cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 78 and "already in use" in second.stderr, second.stderr

        dead = next(iter(first))
        os.kill(dead, signal.SIGKILL)
        until(lambda: len(_workers(proc.pid, port)) == 2 and dead not in _workers(proc.pid, port), "no replacement")
        with httpx.Client(base_url=base, timeout=5) as fresh:
            assert fresh.get("/.well-known/oauth-authorization-server").json()["issuer"] == base
        survivors = list(_workers(proc.pid, port))
    finally:
        for client in clients:
            client.close()
        _stop(proc, 30)
    assert proc.returncode == 0
    assert not any(Path(f"/proc/{pid}").exists() for pid in survivors)


@pytest.mark.skipif(bool(PG_URL), reason="serve migrates by itself on SQLite only")
def test_serve_migrates_sqlite_by_itself(empty_ostiary):
    serve_until_ready(empty_ostiary.url, empty_ostiary.cwd)
    engine = make_engine(empty_ostiary.url)
    assert schema.is_current(engine)
    engine.dispose()


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL only")
def test_serve_refuses_pending_migrations_on_postgresql(empty_ostiary):
    result = subprocess.run(
        [*OSTIARY, "serve", "--port", str(free_port())],
        env=cli_env(empty_ostiary.url),
        cwd=empty_ostiary.cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "ostiary migrate" in result.stderr and "--migrate" in result.stderr
    engine = make_engine(empty_ostiary.url)
    assert schema.current(engine) is None  # nothing applied
    engine.dispose()


@pytest.mark.skipif(not PG_URL, reason="PostgreSQL only")
def test_serve_migrate_on_postgresql(empty_ostiary):
    serve_until_ready(empty_ostiary.url, empty_ostiary.cwd, "--migrate")
    engine = make_engine(empty_ostiary.url)
    assert schema.is_current(engine)
    engine.dispose()
