"""Scope hierarchies (MCP 2026-07-28 authorization, Step-Up Authorization Flow: servers MUST
account for scope hierarchies; docs/decisions.md#scope-hierarchy): a scope may include other
scopes of the same MCP server. What may be declared (console and CLI), the published document
resource servers read, the consent page's "includes", and consent covering: a consent to a
scope covers the scopes it includes, while the token carries exactly what was requested."""

from __future__ import annotations

import re
import subprocess

import pytest

from app.models import User
from app.oauth.authorize import AskConsent, IssueCode, PromptError, decide
from app.oauth.catalogue import ResourceInfo, ScopeInfo, closure
from app.oauth.errors import ConsentRequiredError
from app.services import Refused
from app.services import resources as resource_service
from app.services.resources import ScopeSpec
from tests.support import (
    ISSUER,
    OSTIARY,
    REDIRECT,
    RESOURCE,
    authorize_params,
    cli_env,
    create_user,
    grant_rows,
    login,
    pkce,
    query,
    refresh,
    register,
    signed_in_flow,
    sql,
    submit,
    tokens_for,
    verify_jwt,
)

pytestmark = pytest.mark.anyio

SCOPE_ITEM = re.compile(r'data-scope="([^"]+)"\s+data-scope-status="([^"]+)"')
INCLUDES = re.compile(r'data-scope="([^"]+)"[^>]*>(?:(?!</li>).)*?data-includes="([^"]*)"', re.S)


def hierarchical_resource(runtime, uri: str = RESOURCE, **implies: tuple[str, ...]) -> None:
    """The default MCP server's scopes (mcp:read, mcp:write, mcp:admin), each including what
    `implies` says (keyword names use _ for :), saved through the service as the console does."""
    declared = {"mcp:read": "Read your notes", "mcp:write": "Change your notes", "mcp:admin": "Administer the notes"}
    given = {k.replace("_", ":"): v for k, v in implies.items()}
    scopes = [ScopeSpec(n, d, is_default=n == "mcp:read", implies=given.get(n, ())) for n, d in declared.items()]
    with runtime.sessions() as db:
        resource_service.create(db, resource_service.check(uri, "Example MCP", None, scopes), via="cli")
        db.commit()
    runtime.invalidate_catalogue()


async def hierarchical_flow(client, runtime, **implies) -> dict:
    """A user `alice` signed in, a registered client, and the default MCP server where
    `implies` holds (by default mcp:write includes mcp:read)."""
    create_user(runtime)
    hierarchical_resource(runtime, **(implies or {"mcp_write": ("mcp:read",)}))
    reg = await register(client)
    assert (await login(client)).status_code == 303
    return reg


# -- the closure (unit) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "implies, names, expected",
    [
        pytest.param({}, ["a"], {"a"}, id="no hierarchy"),
        pytest.param({"w": ["r"]}, ["w"], {"w", "r"}, id="one level"),
        pytest.param({"admin": ["w"], "w": ["r"]}, ["admin"], {"admin", "w", "r"}, id="transitive"),
        pytest.param({"a": ["b"], "b": ["a"]}, ["a"], {"a", "b"}, id="a cycle ends"),
        pytest.param({"a": ["a"]}, ["a"], {"a"}, id="a scope implying itself ends"),
        pytest.param({"w": ["r"]}, ["r"], {"r"}, id="implication goes one way"),
        pytest.param({"w": ["r"]}, ["openid", "w"], {"openid", "w", "r"}, id="names outside the hierarchy are kept"),
    ],
)
def test_closure(implies, names, expected):
    assert closure(implies, names) == expected


def test_includes_is_transitive_in_catalogue_order():
    resource = ResourceInfo(
        1,
        RESOURCE,
        "Notes",
        600,
        {
            "read": ScopeInfo("read", "Read", True, None),
            "write": ScopeInfo("write", "Write", False, None, ("read",)),
            "admin": ScopeInfo("admin", "Admin", False, None, ("write",)),
        },
    )
    assert resource.includes("admin") == ["read", "write"]
    assert resource.includes("read") == []
    assert resource.covered({"write"}) == {"write", "read"}


# -- what may be declared ---------------------------------------------------------------------


def _check(*scopes: ScopeSpec):
    return resource_service.check(RESOURCE, "Notes", None, list(scopes))


@pytest.mark.parametrize(
    "scopes, message",
    [
        pytest.param(
            [ScopeSpec("w", "W", implies=("r",))], "includes 'r', which is not a scope of this MCP server", id="unknown scope"
        ),
        pytest.param([ScopeSpec("w", "W", implies=("w",))], "a scope cannot include itself", id="itself"),
        pytest.param(
            [ScopeSpec("w", "W", implies=("openid",))],
            "includes 'openid', which is not a scope of this MCP server",
            id="a protocol scope",
        ),
        pytest.param(
            [ScopeSpec("w", "W", implies=("admin",)), ScopeSpec("admin", "A", allowed_groups=["ops"])],
            "Scope w includes admin, which only some groups may be granted",
            id="past a group limit (anyone -> ops)",
        ),
        pytest.param(
            [
                ScopeSpec("w", "W", allowed_groups=["ops", "dev"], implies=("admin",)),
                ScopeSpec("admin", "A", allowed_groups=["ops"]),
            ],
            "limit w to those groups too",
            id="past a group limit (ops, dev -> ops)",
        ),
    ],
)
def test_check_refuses(scopes, message):
    """docs/decisions.md#scope-hierarchy: only other scopes of the same MCP server, and never
    past a group limit."""
    with pytest.raises(Refused, match=re.escape(message)):
        _check(*scopes)


def test_check_accepts_cycles_group_subsets_and_lists_each_name_once():
    spec = _check(
        ScopeSpec("r", "R", implies=("w",)),
        ScopeSpec("w", "W", implies=("r", "r")),
        ScopeSpec("ops", "O", allowed_groups=["ops"], implies=("w", "admin")),
        ScopeSpec("admin", "A", allowed_groups=["ops", "dev"]),
    )
    assert [s.implies for s in spec.scopes] == [("w",), ("r",), ("w", "admin"), ()]


# -- the decision table (unit) ------------------------------------------------------------------

RESOURCE_INFO = ResourceInfo(
    1,
    RESOURCE,
    "Notes",
    600,
    {
        "read": ScopeInfo("read", "Read", True, None),
        "write": ScopeInfo("write", "Write", False, None, ("read",)),
        "admin": ScopeInfo("admin", "Admin", False, None, ("write",)),
    },
)
ALICE = User(id="u1", username="alice", groups=[])


@pytest.mark.parametrize(
    "prompts, scopes, consented, expected",
    [
        pytest.param("", ["read"], {"write"}, IssueCode(["read"], False), id="write covers read"),
        pytest.param("", ["read", "write"], {"write"}, IssueCode(["read", "write"], False), id="write covers read and itself"),
        pytest.param("", ["read"], {"admin"}, IssueCode(["read"], False), id="admin covers read through write"),
        pytest.param("none", ["read"], {"write"}, IssueCode(["read"], False), id="prompt=none, covered"),
        pytest.param("", ["write"], {"read"}, AskConsent([], ["write"], []), id="read does not cover write"),
        pytest.param("none", ["write"], {"read"}, PromptError(ConsentRequiredError), id="prompt=none, not covered"),
        pytest.param(
            "consent", ["read"], {"write"}, AskConsent(["read"], [], []), id="prompt=consent asks, read shown as allowed"
        ),
        pytest.param("", ["read", "admin"], {"write"}, AskConsent(["read"], ["admin"], []), id="step-up asks only for admin"),
    ],
)
def test_decide_counts_what_a_consent_includes(prompts, scopes, consented, expected):
    """docs/decisions.md#scope-hierarchy: a consented scope covers the scopes it includes; the
    code carries the requested scopes only."""
    outcome = decide(
        prompts=frozenset(prompts.split()),
        scopes=scopes,
        resource=RESOURCE_INFO,
        user=ALICE,
        auth_time=1000,
        requested_at=None,
        consented=consented,
        now_=1000,
    )
    assert outcome == expected


# -- the published document --------------------------------------------------------------------


async def test_the_document_lists_every_scope_with_what_it_includes(client, runtime):
    """docs/decisions.md#scope-hierarchy: public, cacheable, `implies` already transitive; the
    resource compared in canonical form (RFC 8707 §2)."""
    hierarchical_resource(runtime, mcp_write=("mcp:read",), mcp_admin=("mcp:write",))
    response = await client.get("/resources/scopes", params={"resource": "HTTPS://MCP.Example.com:443/mcp/"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "public, max-age=300"
    assert response.json() == {
        "resource": RESOURCE,
        "scopes": {
            "mcp:read": {"description": "Read your notes", "implies": []},
            "mcp:write": {"description": "Change your notes", "implies": ["mcp:read"]},
            "mcp:admin": {"description": "Administer the notes", "implies": ["mcp:read", "mcp:write"]},
        },
    }


@pytest.mark.parametrize(
    "params, status, error",
    [
        pytest.param({}, 400, "invalid_request", id="no resource"),
        pytest.param([("resource", RESOURCE), ("resource", RESOURCE)], 400, "invalid_request", id="resource twice"),
        pytest.param({"resource": "not a uri"}, 400, "invalid_target", id="not a URI (RFC 8707 §2)"),
        pytest.param({"resource": RESOURCE + "#frag"}, 400, "invalid_target", id="a fragment (RFC 8707 §2)"),
        pytest.param({"resource": "x" * 5000}, 400, "invalid_target", id="too long"),
        pytest.param({"resource": "https://unknown.example.com/mcp"}, 404, "invalid_target", id="not registered"),
    ],
)
async def test_the_document_refuses(client, runtime, params, status, error):
    """An RFC 6749 §5.2-shaped error body, never cached, never a 5xx."""
    hierarchical_resource(runtime)
    response = await client.get("/resources/scopes", params=params)
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"


async def test_the_document_is_for_servers_not_browsers(client, runtime):
    """No CORS (docs/decisions.md#cors-is-open-on-the-public-protocol-endpoints-only): resource
    servers read it, not pages."""
    hierarchical_resource(runtime)
    response = await client.get("/resources/scopes", params={"resource": RESOURCE}, headers={"Origin": "https://x.example"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


# -- the console and the CLI -------------------------------------------------------------------


def resource_form(uri: str, scopes: list[tuple[str, str, str, str]]) -> dict:
    """(name, description, groups, includes) rows."""
    data = {"uri": uri, "name": "Tools", "token_ttl": ""}
    for i, (scope, description, groups, implies) in enumerate(scopes):
        data |= {f"scope-{i}-name": scope, f"scope-{i}-description": description, f"scope-{i}-groups": groups}
        data[f"scope-{i}-implies"] = implies
    return data


async def test_the_console_sets_what_a_scope_includes(client, runtime):
    create_user(runtime, "root", admin=True)
    assert (await login(client, "root")).status_code == 303
    form = resource_form(
        "https://tools.example.com/mcp",
        [
            ("tools:read", "Read", "", ""),
            ("tools:write", "Write", "", "tools:read"),
            ("tools:admin", "Admin", "", "tools:write, tools:read"),
        ],
    )
    created = await submit(client, "/admin/resources/new", form, csrf_page="/admin")
    assert created.status_code == 303, created.text
    resource = runtime.catalogue.by_uri("https://tools.example.com/mcp")
    assert resource.scopes["tools:admin"].implies == ("tools:write", "tools:read")
    page = (await client.get(created.headers["location"].split("?")[0])).text
    assert 'name="scope-2-implies" value="tools:write, tools:read"' in page
    assert "/resources/scopes?resource=https%3A%2F%2Ftools.example.com%2Fmcp" in page  # for the server's author
    assert "[includes tools:read]" in (await client.get("/admin/resources")).text


@pytest.mark.parametrize(
    "scopes, message",
    [
        pytest.param([("a", "A", "", "b")], "includes &#39;b&#39;, which is not a scope of this MCP server", id="unknown"),
        pytest.param([("a", "A", "", "a")], "a scope cannot include itself", id="itself"),
        pytest.param([("a", "A", "", "b"), ("b", "B", "ops", "")], "only some groups may be granted", id="past a group limit"),
    ],
)
async def test_the_console_refuses_what_may_not_be_included(client, runtime, scopes, message):
    create_user(runtime, "root", admin=True)
    assert (await login(client, "root")).status_code == 303
    response = await submit(client, "/admin/resources/new", resource_form("https://x.example.com", scopes), csrf_page="/admin")
    assert response.status_code == 400 and message in response.text
    assert runtime.catalogue.all() == []


def ostiary(database_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*OSTIARY, *args], env=cli_env(database_url, OSTIARY_ISSUER=ISSUER), capture_output=True, text=True, timeout=60
    )


def test_the_cli_sets_what_a_scope_includes(clean_db, runtime):
    added = ostiary(
        clean_db, "resources", "add", "https://notes.example.com/mcp", "--name", "Notes",
        "--scope", "notes:read=Read your notes", "--scope", "notes:write=Change your notes",
        "--scope", "notes:admin=Administer", "--implies", "notes:write=notes:read", "--implies", "notes:admin=notes:write",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    resource = runtime.catalogue.by_uri("https://notes.example.com/mcp")
    assert resource.scopes["notes:write"].implies == ("notes:read",)
    assert resource.includes("notes:admin") == ["notes:read", "notes:write"]
    listing = ostiary(clean_db, "resources", "list").stdout
    assert re.search(r"notes:read notes:write>notes:read notes:admin>notes:write\s+600$", listing, re.M), listing


@pytest.mark.parametrize(
    "implies, message",
    [
        pytest.param(["notes:write"], '--implies takes "name=other[,other...]"', id="no ="),
        pytest.param(
            ["notes:other=notes:read"], "--implies 'notes:other' is not one of the --scope names", id="undeclared scope"
        ),
        pytest.param(
            ["notes:write=notes:delete"], "includes 'notes:delete', which is not a scope of this MCP server", id="unknown"
        ),
    ],
)
def test_the_cli_refuses_what_may_not_be_included(clean_db, implies, message):
    """Exit 2 with the reason, and nothing written."""
    args = ["resources", "add", "https://notes.example.com/mcp", "--name", "Notes", "--scope", "notes:read=Read"]
    result = ostiary(clean_db, *args, "--scope", "notes:write=Write", *(a for v in implies for a in ("--implies", v)))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert sql(clean_db, "SELECT count(*) FROM resources") == [(0,)]


# -- the consent page and consent covering -----------------------------------------------------


async def test_the_consent_page_says_what_a_scope_includes(client, runtime):
    """A scope that includes others lists them with their descriptions: the user sees
    everything Allow gives (docs/decisions.md#scope-hierarchy)."""
    reg = await hierarchical_flow(client, runtime, mcp_write=("mcp:read",), mcp_admin=("mcp:write",))
    response = await client.get("/authorize", params=authorize_params(reg["client_id"], pkce()[1], scope="mcp:admin"))
    page = await client.get(response.headers["location"])
    assert page.status_code == 200
    assert dict(SCOPE_ITEM.findall(page.text)) == {"mcp:admin": "new"}
    assert dict(INCLUDES.findall(page.text)) == {"mcp:admin": "mcp:read mcp:write"}
    assert "includes: <code>mcp:read</code> (Read your notes); <code>mcp:write</code> (Change your notes)" in page.text


async def test_a_scope_without_a_hierarchy_shows_no_includes(client, runtime):
    reg = await signed_in_flow(client, runtime)
    response = await client.get("/authorize", params=authorize_params(reg["client_id"], pkce()[1], scope="mcp:write"))
    page = await client.get(response.headers["location"])
    assert "data-includes" not in page.text and "includes:" not in page.text


@pytest.mark.parametrize(
    "later",
    [pytest.param("mcp:read", id="an included scope"), pytest.param("mcp:read mcp:write", id="it and what it includes")],
)
async def test_a_consent_covers_what_its_scopes_include(client, runtime, later):
    """docs/decisions.md#scope-hierarchy: after consenting to mcp:write, asking for mcp:read
    shows no consent page; the token carries exactly the scopes requested (never expanded), and
    the consent keeps what the user allowed."""
    reg = await hierarchical_flow(client, runtime)
    first = await tokens_for(client, reg["client_id"], scope="mcp:write")
    assert first["scope"] == "mcp:write"  # not expanded to mcp:read
    assert (await verify_jwt(client, first["access_token"])).claims["scope"] == "mcp:write"
    response = await client.get("/authorize", params=authorize_params(reg["client_id"], pkce()[1], scope=later))
    assert response.status_code == 302 and response.headers["location"].startswith(REDIRECT), response.headers
    assert "code" in query(response.headers["location"])
    body = await tokens_for(client, reg["client_id"], scope=later)
    assert body["scope"] == later
    assert (await verify_jwt(client, body["access_token"])).claims["scope"] == later
    assert [g.scope for g in grant_rows(runtime)] == ["mcp:write"]
    again = await refresh(client, reg["client_id"], body["refresh_token"])
    assert again.status_code == 200 and again.json()["scope"] == later


async def test_prompt_none_is_answered_when_the_consent_covers_the_request(client, runtime):
    """OIDC Core §3.1.2.1 prompt=none: no consent_required for an included scope."""
    reg = await hierarchical_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:write")
    params = authorize_params(reg["client_id"], pkce()[1], scope="mcp:read", prompt="none")
    q = query((await client.get("/authorize", params=params)).headers["location"])
    assert "code" in q and "error" not in q, q


async def test_an_included_scope_does_not_cover_the_broader_one(client, runtime):
    """Implication goes one way: consent to mcp:read still asks for mcp:write, which the page
    says includes mcp:read."""
    reg = await hierarchical_flow(client, runtime)
    await tokens_for(client, reg["client_id"], scope="mcp:read")
    response = await client.get("/authorize", params=authorize_params(reg["client_id"], pkce()[1], scope="mcp:write"))
    assert response.status_code == 303 and response.headers["location"].startswith("/consent/")
    page = (await client.get(response.headers["location"])).text
    assert dict(SCOPE_ITEM.findall(page)) == {"mcp:write": "new"}
    assert dict(INCLUDES.findall(page)) == {"mcp:write": "mcp:read"}
