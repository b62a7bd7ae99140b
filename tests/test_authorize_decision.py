"""The authorization endpoint's decision table (app/oauth/authorize.decide), one row per rule:
sign-in first (OIDC Core §3.1.2.1 prompt=login and prompt=none), then the user's choice, the
access policy by groups, and incremental consent (only what is new is asked)."""

from __future__ import annotations

import pytest

from app.models import User
from app.oauth.authorize import AskConsent, Deny, IssueCode, PromptError, SignIn, decide
from app.oauth.catalogue import ResourceInfo, ScopeInfo
from app.oauth.errors import ConsentRequiredError, LoginRequiredError

RESOURCE = ResourceInfo(
    id=1,
    uri="https://mcp.example.com/mcp",
    name="Notes",
    token_ttl=600,
    scopes={
        "read": ScopeInfo("read", "Read", True, None),
        "write": ScopeInfo("write", "Write", False, None),
        "admin": ScopeInfo("admin", "Administer", False, ("ops",)),
    },
)
ALICE = User(id="u1", username="alice", groups=[])
OPS = User(id="u2", username="olga", groups=["ops"])
T = 1_000_000

CASES = [
    # (what, prompts, scopes, user, auth_time, requested_at, consented, decision, expected)
    ("nobody signed in", "", ["read"], None, None, None, set(), None, SignIn(force=False)),
    ("nobody signed in, prompt=none", "none", ["read"], None, None, None, set(), None, PromptError(LoginRequiredError)),
    ("prompt=login on /authorize", "login", ["read"], ALICE, T, None, {"read"}, None, SignIn(force=True)),
    ("prompt=login, signed in before the request", "login", ["read"], ALICE, T - 5, T, {"read"}, None, SignIn(force=True)),
    ("prompt=login, signed in after the request", "login", ["read"], ALICE, T + 5, T, {"read"}, None, IssueCode(["read"], False)),
    ("first consent", "", ["read"], ALICE, T, None, set(), None, AskConsent([], ["read"], [])),
    ("consent covers the request", "", ["read"], ALICE, T, None, {"read", "write"}, None, IssueCode(["read"], False)),
    (
        "step-up asks only for what is new",
        "",
        ["read", "write"],
        ALICE,
        T,
        None,
        {"read"},
        None,
        AskConsent(["read"], ["write"], []),
    ),
    ("prompt=consent asks again", "consent", ["read"], ALICE, T, None, {"read"}, None, AskConsent(["read"], [], [])),
    ("prompt=none, new scope", "none", ["write"], ALICE, T, None, {"read"}, None, PromptError(ConsentRequiredError)),
    ("prompt=none, covered", "none", ["read"], ALICE, T, None, {"read"}, None, IssueCode(["read"], False)),
    (
        "a group-limited scope is left out",
        "",
        ["read", "admin"],
        ALICE,
        T,
        None,
        set(),
        None,
        AskConsent([], ["read"], ["admin"]),
    ),
    ("a member of the group may grant it", "", ["admin"], OPS, T, None, set(), None, AskConsent([], ["admin"], [])),
    ("policy allows none of it", "", ["admin"], ALICE, T, None, set(), None, Deny("policy")),
    ("protocol scopes alone are not refused", "", ["openid"], ALICE, T, None, set(), None, AskConsent([], ["openid"], [])),
    ("the user allows", "", ["read", "admin"], ALICE, T, None, set(), "allow", IssueCode(["read"], True)),
    ("the user denies", "", ["read"], ALICE, T, None, set(), "deny", Deny("user")),
    ("an expired form shows the page again", "", ["read"], ALICE, T, None, {"read"}, "show", AskConsent(["read"], [], [])),
    ("denying needs a signed-in user", "", ["read"], None, None, T, set(), "deny", SignIn(force=False)),
]


@pytest.mark.parametrize(
    "prompts, scopes, user, auth_time, requested_at, consented, decision, expected",
    [pytest.param(*c[1:], id=c[0]) for c in CASES],
)
def test_decision_table(prompts, scopes, user, auth_time, requested_at, consented, decision, expected):
    outcome = decide(
        prompts=frozenset(prompts.split()),
        scopes=scopes,
        resource=RESOURCE,
        user=user,
        auth_time=auth_time,
        requested_at=requested_at,
        consented=consented,
        decision=decision,
    )
    assert outcome == expected


@pytest.mark.parametrize(
    "prompts, max_age, auth_time, requested_at, expected",
    [
        pytest.param("", 60, T - 30, None, IssueCode(["read"], False), id="sign-in within max_age"),
        pytest.param("", 60, T - 61, None, SignIn(force=True), id="sign-in older than max_age: again"),
        pytest.param("none", 60, T - 61, None, PromptError(LoginRequiredError), id="older than max_age, prompt=none"),
        pytest.param("", 0, T - 1, None, SignIn(force=True), id="max_age=0 is a fresh sign-in"),
        pytest.param("", 0, T + 2, T, IssueCode(["read"], False), id="max_age=0, signed in after the request"),
        pytest.param("", 60, T - 100, T - 50, IssueCode(["read"], False), id="stored request: counted from the request"),
        pytest.param("", 60, T - 200, T - 50, SignIn(force=True), id="stored request, sign-in too old for it"),
    ],
)
def test_max_age_oidc_core_3_1_2_1(prompts, max_age, auth_time, requested_at, expected):
    """OIDC Core §3.1.2.1: a sign-in older than max_age seconds must be repeated."""
    outcome = decide(
        prompts=frozenset(prompts.split()),
        scopes=["read"],
        resource=RESOURCE,
        user=ALICE,
        auth_time=auth_time,
        requested_at=requested_at,
        consented={"read"},
        max_age=max_age,
        now_=T,
    )
    assert outcome == expected
