"""Enterprise-managed authorization (MCP extension
io.modelcontextprotocol/enterprise-managed-authorization): an admin-created confidential client
presents an ID-JAG from a trusted enterprise IdP with the JWT bearer grant (RFC 7523 §2.1) and gets
an access token for the MCP server named in it, for the user (issuer, sub) is linked to.

The IdP is faked at the network edge only: its discovery document and JWK Set are served to
Ostiary's outbound fetcher; ID-JAGs are signed here with its key.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey, RSAKey

from app.main import create_app
from app.services.identities import add_provider, remove_provider
from tests.support import (
    ISSUER,
    RESOURCE,
    admin_client,
    audit_events,
    create_resource,
    register,
    run_ostiary,
    sql,
    verify_jwt,
)

pytestmark = pytest.mark.anyio

IDP = "https://idp.example.com"
IDP_KEY = RSAKey.generate_key(2048, parameters={"kid": "idp-1"})
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


ANSWERS: dict[str, dict] = {}


@pytest.fixture
def app(settings):
    """The real app; the network edge plays the enterprise IdP (discovery and JWKS)."""
    answers = ANSWERS
    answers.clear()
    answers |= {
        IDP + "/.well-known/openid-configuration": {"issuer": IDP, "jwks_uri": IDP + "/keys"},
        IDP + "/keys": {"keys": [IDP_KEY.as_dict(private=False)]},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        body = answers.get(str(request.url))
        if body is None:
            return httpx.Response(404)
        return httpx.Response(200, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})

    application = create_app(settings, run_jobs=False, fetch_transport=httpx.MockTransport(handler))
    yield application
    application.state.runtime.engine.dispose()


@pytest.fixture
def world(runtime):
    """The Notes MCP server (mcp:write limited to the group writers), a trusted IdP, and an
    operator-created confidential client the IdP issues ID-JAGs to."""
    create_resource(runtime, groups={"mcp:write": ["writers"]})
    with runtime.sessions() as db:
        add_provider(db, runtime.keyring, name="acme", issuer=IDP, id_jag=True, groups_claim="groups")
        db.commit()
    return admin_client(runtime, name="Acme chat", resource=None)


def id_jag(for_client: str, *, key=IDP_KEY, alg="RS256", typ="oauth-id-jag+jwt", **overrides) -> str:
    t = int(time.time())
    claims = {
        "iss": IDP,
        "sub": "U019488227",
        "aud": ISSUER,
        "resource": RESOURCE,
        "client_id": for_client,
        "jti": uuid.uuid4().hex,
        "iat": t,
        "exp": t + 300,
        "scope": "mcp:read mcp:write",
        "email": "ada@acme.example",
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    header = {"alg": alg, "kid": "idp-1"}
    if typ:
        header["typ"] = typ
    return jwt.encode(header, claims, key)


async def exchange(client, auth, assertion: str, **data) -> httpx.Response:
    return await client.post("/token", data={"grant_type": GRANT, "assertion": assertion, **data}, auth=auth)


async def test_an_id_jag_gets_a_token_for_the_linked_user(client, runtime, world):
    """Extension §5: an access token for the MCP server in the ID-JAG, for the user linked to
    (iss, sub), provisioned on first sight; no refresh token."""
    client_id, _ = world
    response = await exchange(client, world, id_jag(client_id, scope="mcp:read"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert "refresh_token" not in body and body["scope"] == "mcp:read"
    claims = (await verify_jwt(client, body["access_token"])).claims
    [(user_id, username)] = sql(runtime.settings, "SELECT id, username FROM users")
    assert (claims["sub"], claims["aud"], claims["client_id"], username) == (user_id, RESOURCE, client_id, "ada@acme.example")
    assert sql(runtime.settings, "SELECT issuer, subject, user_id FROM user_identities") == [(IDP, "U019488227", user_id)]
    # The same (iss, sub) again, even with another email: the same user (never linked by email).
    again = await exchange(client, world, id_jag(client_id, scope="mcp:read", email="someone@else.example"))
    assert (await verify_jwt(client, again.json()["access_token"])).claims["sub"] == user_id
    event = audit_events(runtime, "token.issued")[-1]
    assert event.details["grant_type"] == GRANT and event.details["idp"] == "acme" and event.user_id == user_id


async def test_scopes_are_what_was_asked_within_the_assertion_and_the_users_groups(client, runtime, world):
    client_id, _ = world
    # Not in the group writers: mcp:write is dropped, mcp:read kept.
    body = (await exchange(client, world, id_jag(client_id))).json()
    assert body["scope"] == "mcp:read"
    # The IdP says the user is a writer: the group claim becomes the user's groups.
    body = (await exchange(client, world, id_jag(client_id, groups=["writers"]))).json()
    assert set(body["scope"].split()) == {"mcp:read", "mcp:write"}
    # Asking for more than the assertion carries is invalid_scope.
    beyond = await exchange(client, world, id_jag(client_id, scope="mcp:read"), scope="mcp:read mcp:write")
    assert (beyond.status_code, beyond.json()["error"]) == (400, "invalid_scope")


def _unsigned(client_id: str) -> str:
    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    t = int(time.time())
    claims = {
        "iss": IDP,
        "sub": "x",
        "aud": ISSUER,
        "resource": RESOURCE,
        "client_id": client_id,
        "jti": "j",
        "iat": t,
        "exp": t + 60,
    }
    return part({"alg": "none", "typ": "oauth-id-jag+jwt"}) + "." + part(claims) + "."


HOSTILE = {
    "wrong aud": (lambda cid: id_jag(cid, aud="https://other-as.example"), "invalid_grant"),
    "untrusted issuer": (lambda cid: id_jag(cid, iss="https://evil-idp.example"), "invalid_grant"),
    "expired": (lambda cid: id_jag(cid, iat=int(time.time()) - 900, exp=int(time.time()) - 300), "invalid_grant"),
    "valid for a day": (lambda cid: id_jag(cid, exp=int(time.time()) + 86400), "invalid_grant"),
    "alg none": (_unsigned, "invalid_grant"),
    "HS256": (lambda cid: id_jag(cid, key=OctKey.import_key(b"s" * 32), alg="HS256"), "invalid_grant"),
    "signed by another key": (
        lambda cid: id_jag(cid, key=RSAKey.generate_key(2048, parameters={"kid": "idp-1"})),
        "invalid_grant",
    ),
    "wrong typ": (lambda cid: id_jag(cid, typ="JWT"), "invalid_grant"),
    "no typ": (lambda cid: id_jag(cid, typ=None), "invalid_grant"),
    "issued to another client": (lambda cid: id_jag(cid, client_id="someone-else"), "invalid_grant"),
    "unknown resource": (lambda cid: id_jag(cid, resource="https://unknown.example/mcp"), "invalid_target"),
    "no jti": (lambda cid: id_jag(cid, jti=None), "invalid_grant"),
    "not a JWT": (lambda cid: "garbage", "invalid_grant"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_hostile_id_jags_are_refused(client, runtime, world, case):
    """Extension §5.1, RFC 7521 §5.2, RFC 7523 §3: each is refused with the right error."""
    make, error = HOSTILE[case]
    response = await exchange(client, world, make(world[0]))
    assert (response.status_code, response.json()["error"]) == (400, error), response.text
    assert sql(runtime.settings, "SELECT count(*) FROM users")[0][0] == 0


async def test_a_replayed_id_jag_is_refused(client, world):
    assertion = id_jag(world[0])
    assert (await exchange(client, world, assertion)).status_code == 200
    replay = await exchange(client, world, assertion)
    assert (replay.status_code, replay.json()["error"]) == (400, "invalid_grant")


async def test_only_operator_created_confidential_clients_may_present_id_jags(client, runtime, world):
    """Self-registered clients, public ones included, may not (unauthorized_client)."""
    reg = await register(client, token_endpoint_auth_method="client_secret_basic")
    refused = await exchange(client, (reg["client_id"], reg["client_secret"]), id_jag(reg["client_id"]))
    assert (refused.status_code, refused.json()["error"]) == (400, "unauthorized_client")


async def test_removing_the_provider_ends_trust_at_once(client, runtime, world):
    with runtime.sessions() as db:
        assert remove_provider(db, "acme")
        db.commit()
    refused = await exchange(client, world, id_jag(world[0]))
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_grant")


async def test_metadata_advertises_the_id_jag_profile(client):
    doc = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert GRANT in doc["grant_types_supported"]
    assert doc["authorization_grant_profiles_supported"] == ["urn:ietf:params:oauth:grant-profile:id-jag"]


def test_idps_cli_add_list_remove(clean_db, tmp_path):
    """The operator contract: add prints the redirect URI to register upstream; list --json
    never shows a secret; remove ends trust."""
    secret = tmp_path / "secret"
    secret.write_text("upstream-client-secret\n")
    out = run_ostiary(
        clean_db, "idps", "add", "okta", "--issuer", "https://acme.okta.example", "--client-id", "ostiary",
        "--client-secret-file", str(secret), "--groups-claim", "groups", "--id-jag",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"redirect_uri: {ISSUER}/login/okta/callback" in out.stdout
    listed = run_ostiary(clean_db, "idps", "list", "--json")
    assert json.loads(listed.stdout) == [
        {
            "name": "okta",
            "issuer": "https://acme.okta.example",
            "redirect_uri": f"{ISSUER}/login/okta/callback",
            "sign_in": True,
            "id_jag": True,
            "enabled": True,
        }
    ]
    assert "upstream-client-secret" not in listed.stdout
    assert "upstream-client-secret" not in str(sql(clean_db, "SELECT * FROM identity_providers"))
    duplicate = run_ostiary(clean_db, "idps", "add", "okta", "--issuer", "https://other.example", "--id-jag")
    assert duplicate.returncode == 2
    neither = run_ostiary(clean_db, "idps", "add", "x", "--issuer", "https://x.example")
    assert neither.returncode == 2
    assert run_ostiary(clean_db, "idps", "remove", "okta").returncode == 0
    assert json.loads(run_ostiary(clean_db, "idps", "list", "--json").stdout) == []


async def test_console_test_connection_fetches_the_providers_keys(client, runtime, world, new_client):
    from tests.support import create_user, login, submit

    create_user(runtime, "root", admin=True)
    admin = new_client()
    assert (await login(admin, "root", next_url="/admin")).status_code == 303
    ok = await submit(admin, "/admin/idps/acme/test", {}, csrf_page="/admin")
    assert ok.status_code == 200 and "acme answered" in ok.text
    with runtime.sessions() as db:
        add_provider(db, runtime.keyring, name="gone", issuer="https://gone.example", id_jag=True)
        db.commit()
    failed = await submit(admin, "/admin/idps/gone/test", {}, csrf_page="/admin")
    assert failed.status_code == 502 and "could not be reached" in failed.text


async def test_a_rolled_over_idp_key_is_fetched_when_its_kid_appears(client, runtime, world):
    """Key rollover: keys are cached, and an ID-JAG signed with a `kid` not seen before makes
    Ostiary fetch the provider's JWK Set again."""
    assert (await exchange(client, world, id_jag(world[0]))).status_code == 200
    new_key = RSAKey.generate_key(2048, parameters={"kid": "idp-2"})
    ANSWERS[IDP + "/keys"] = {"keys": [IDP_KEY.as_dict(private=False), new_key.as_dict(private=False)]}
    t = int(time.time())
    claims = {"iss": IDP, "sub": "U019488227", "aud": ISSUER, "resource": RESOURCE, "client_id": world[0],
              "jti": uuid.uuid4().hex, "iat": t, "exp": t + 300, "scope": "mcp:read"}  # fmt: skip
    rolled = jwt.encode({"alg": "RS256", "kid": "idp-2", "typ": "oauth-id-jag+jwt"}, claims, new_key)
    assert (await exchange(client, world, rolled)).status_code == 200
