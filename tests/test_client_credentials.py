"""Machine clients: the client credentials grant (RFC 6749 §4.4; MCP extension
io.modelcontextprotocol/oauth-client-credentials) with a secret or private_key_jwt (RFC 7523
§2.2, §3).

Only an admin creates them, each bound to one MCP server and a set of scopes; the token has
`sub` = the client, `aud` = the MCP server, and no refresh token.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from app.main import create_app
from app.services.clients import create_machine_client
from app.services.resources import find
from tests.support import (
    ISSUER,
    RESOURCE,
    admin_client,
    audit_events,
    create_resource,
    introspect,
    register,
    run_ostiary,
    verify_jwt,
)

pytestmark = pytest.mark.anyio

GRANT = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
JWKS_URI = "https://agent.example.com/jwks.json"


@pytest.fixture
def app(settings):
    """The real app; the network edge serves one client's JWK Set at JWKS_URI."""
    public = {"keys": [KEY.as_dict(private=False)]}

    def handler(request: httpx.Request) -> httpx.Response:
        if str(request.url) == JWKS_URI:
            return httpx.Response(200, content=json.dumps(public).encode(), headers={"Content-Type": "application/json"})
        return httpx.Response(404)

    application = create_app(settings, run_jobs=False, fetch_transport=httpx.MockTransport(handler))
    yield application
    application.state.runtime.engine.dispose()


def machine_client(runtime, scopes=("mcp:read",), *, jwks=None, jwks_uri=None) -> tuple[str, str | None]:
    with runtime.sessions() as db:
        row, secret = create_machine_client(
            db,
            runtime.keyring,
            name="Nightly agent",
            resource=find(db, RESOURCE),
            scopes=list(scopes),
            jwks=jwks,
            jwks_uri=jwks_uri,
        )
        db.commit()
        return row.id, secret


def assertion(client_id: str, *, key=KEY, alg="RS256", **overrides) -> str:
    t = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": ISSUER, "iat": t, "exp": t + 120, "jti": uuid.uuid4().hex}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": "k1"}, claims, key)


async def cc(client, *, auth=None, **data) -> httpx.Response:
    return await client.post("/token", data={"grant_type": "client_credentials", **data}, auth=auth)


async def test_a_machine_client_gets_a_token_for_its_mcp_server(client, runtime):
    """RFC 6749 §4.4.3 (no refresh token), RFC 9068 §2.2 (sub = the client when no user is
    involved), RFC 8707 (aud = the MCP server)."""
    create_resource(runtime)
    client_id, secret = machine_client(runtime, ("mcp:read", "mcp:write"))
    response = await cc(client, auth=(client_id, secret), resource=RESOURCE, scope="mcp:read")
    assert response.status_code == 200, response.text
    body = response.json()
    assert "refresh_token" not in body and body["token_type"] == "Bearer" and body["scope"] == "mcp:read"
    claims = (await verify_jwt(client, body["access_token"])).claims
    assert (claims["sub"], claims["client_id"], claims["aud"], claims["iss"]) == (client_id, client_id, RESOURCE, ISSUER)
    assert "auth_time" not in claims
    assert response.headers["cache-control"] == "no-store"
    # Introspection by the MCP server's credentials says active and names the client.
    rs = admin_client(runtime)
    info = (await introspect(client, body["access_token"], rs)).json()
    assert info["active"] is True and info["sub"] == client_id and info["username"] is None
    # No resource and no scope: the client's own MCP server, every scope allowed.
    both = (await cc(client, auth=(client_id, secret))).json()
    assert set(both["scope"].split()) == {"mcp:read", "mcp:write"}
    event = audit_events(runtime, "token.issued")[-1]
    assert event.details["grant_type"] == "client_credentials" and event.client_id == client_id
    # The MCP client-credentials extension sends the secret in the request content (OAuth 2.1
    # §2.4.1): accepted too, but never a wrong one.
    posted = await cc(client, client_id=client_id, client_secret=secret)
    assert posted.status_code == 200, posted.text
    assert (await cc(client, client_id=client_id, client_secret=secret + "x")).status_code == 401


@pytest.mark.parametrize(
    "data, status, error",
    [
        pytest.param({"scope": "mcp:write"}, 400, "invalid_scope", id="a scope the admin did not allow"),
        pytest.param({"scope": "mcp:read mcp:admin"}, 400, "invalid_scope", id="an unknown scope"),
        pytest.param({"resource": "https://other.example.com/mcp"}, 400, "invalid_target", id="another MCP server"),
        pytest.param({"resource": "not a uri"}, 400, "invalid_target", id="a malformed resource"),
    ],
)
async def test_requests_beyond_what_the_admin_allowed_are_refused(client, runtime, data, status, error):
    create_resource(runtime)
    create_resource(runtime, uri="https://other.example.com/mcp", name="Other")
    client_id, secret = machine_client(runtime)
    response = await cc(client, auth=(client_id, secret), **data)
    assert (response.status_code, response.json()["error"]) == (status, error)


async def test_only_machine_clients_may_use_the_grant(client, runtime):
    """RFC 6749 §5.2 unauthorized_client: a registered client (even one that lists the grant)
    and an operator's authorization-code client may not; a wrong secret is invalid_client."""
    create_resource(runtime)
    reg = await register(
        client, token_endpoint_auth_method="client_secret_basic", grant_types=["client_credentials", "authorization_code"]
    )
    refused = await cc(client, auth=(reg["client_id"], reg["client_secret"]))
    assert (refused.status_code, refused.json()["error"]) == (400, "unauthorized_client")
    operator_id, operator_secret = admin_client(runtime)
    refused = await cc(client, auth=(operator_id, operator_secret))
    assert refused.json()["error"] == "unauthorized_client"
    client_id, _ = machine_client(runtime)
    wrong = await cc(client, auth=(client_id, "not-the-secret"))
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_client")


async def test_machine_tokens_are_no_user_at_userinfo(client, runtime):
    create_resource(runtime)
    client_id, secret = machine_client(runtime)
    token = (await cc(client, auth=(client_id, secret))).json()["access_token"]
    response = await client.get("/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code in (401, 403) and "sub" not in response.text


async def test_metadata_advertises_the_grant_and_private_key_jwt(client):
    doc = (await client.get("/.well-known/oauth-authorization-server")).json()
    assert "client_credentials" in doc["grant_types_supported"]
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    assert "RS256" in doc["token_endpoint_auth_signing_alg_values_supported"]
    assert "none" not in doc["token_endpoint_auth_signing_alg_values_supported"]


# -- private_key_jwt ------------------------------------------------------------------------------


@pytest.mark.parametrize("keys", ["inline", "jwks_uri"])
async def test_private_key_jwt_authenticates_once_per_assertion(client, runtime, keys):
    """RFC 7523 §2.2 / §3: a signed assertion instead of a secret; its jti works once."""
    create_resource(runtime)
    if keys == "inline":
        client_id, secret = machine_client(runtime, jwks={"keys": [KEY.as_dict(private=False)]})
    else:
        client_id, secret = machine_client(runtime, jwks_uri=JWKS_URI)
    assert secret is None
    signed = assertion(client_id)
    ok = await cc(client, client_assertion_type=GRANT, client_assertion=signed, resource=RESOURCE)
    assert ok.status_code == 200, ok.text
    assert (await verify_jwt(client, ok.json()["access_token"])).claims["sub"] == client_id
    replay = await cc(client, client_assertion_type=GRANT, client_assertion=signed)
    assert (replay.status_code, replay.json()["error"]) == (401, "invalid_client")
    assert "already used" in replay.json()["error_description"]
    # The token endpoint URL as audience is accepted too (RFC 7523 §3).
    assert (
        await cc(client, client_assertion_type=GRANT, client_assertion=assertion(client_id, aud=ISSUER + "/token"))
    ).status_code == 200


def _none_alg(client_id: str) -> str:
    import base64

    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    t = int(time.time())
    return (
        part({"alg": "none"}) + "." + part({"iss": client_id, "sub": client_id, "aud": ISSUER, "exp": t + 60, "jti": "x"}) + "."
    )


HOSTILE = {
    "wrong audience": lambda cid: assertion(cid, aud="https://elsewhere.example"),
    "expired": lambda cid: assertion(cid, iat=int(time.time()) - 900, exp=int(time.time()) - 300),
    "valid for an hour": lambda cid: assertion(cid, exp=int(time.time()) + 3600),
    "no jti": lambda cid: assertion(cid, jti=None),
    "no exp": lambda cid: assertion(cid, exp=None),
    "iss is not the client": lambda cid: assertion(cid, iss="someone-else"),
    "alg none": _none_alg,
    "HS256 with a guessable key": lambda cid: assertion(cid, key=OctKey.import_key(b"k" * 32), alg="HS256"),
    "another key": lambda cid: assertion(cid, key=RSAKey.generate_key(2048)),
    "an EC key it did not register": lambda cid: assertion(cid, key=ECKey.generate_key("P-256"), alg="ES256"),
    "garbage": lambda cid: "not.a.jwt",
}


@pytest.mark.parametrize("make", list(HOSTILE.values()), ids=list(HOSTILE))
async def test_hostile_assertions_are_invalid_client(client, runtime, make):
    """RFC 7523 §3 (every MUST), never `none` or a symmetric algorithm: 401 invalid_client."""
    create_resource(runtime)
    client_id, _ = machine_client(runtime, jwks={"keys": [KEY.as_dict(private=False)]})
    response = await cc(client, client_assertion_type=GRANT, client_assertion=make(client_id))
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client"), response.text


async def test_a_secret_client_cannot_switch_to_an_assertion(client, runtime):
    create_resource(runtime)
    client_id, _ = machine_client(runtime)
    response = await cc(client, client_assertion_type=GRANT, client_assertion=assertion(client_id))
    assert response.status_code == 401


def test_cli_creates_machine_clients(clean_db, runtime, tmp_path):
    """The operator contract: `clients add --client-credentials --resource URI --scope S`, a
    secret printed once, or keys from --jwks-file / --jwks-uri."""
    create_resource(runtime)
    out = run_ostiary(
        clean_db, "clients", "add", "--name", "Agent", "--client-credentials", "--resource", RESOURCE, "--scope", "mcp:read"
    )
    assert out.returncode == 0, out.stderr
    assert "client_id:" in out.stdout and "client_secret:" in out.stdout
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [KEY.as_dict(private=False)]}))
    out = run_ostiary(
        clean_db, "clients", "add", "--name", "Keyed", "--client-credentials", "--resource", RESOURCE, "--scope", "mcp:read",
        "--jwks-file", str(jwks),
    )  # fmt: skip
    assert out.returncode == 0 and "client_secret" not in out.stdout, out.stderr
    private = tmp_path / "private.json"
    private.write_text(json.dumps({"keys": [KEY.as_dict(private=True)]}))
    bad = run_ostiary(
        clean_db, "clients", "add", "--name", "Oops", "--client-credentials", "--resource", RESOURCE, "--scope", "mcp:read",
        "--jwks-file", str(private),
    )  # fmt: skip
    assert bad.returncode == 2 and "public keys only" in bad.stderr
    unknown = run_ostiary(
        clean_db, "clients", "add", "--name", "X", "--client-credentials", "--resource", RESOURCE, "--scope", "nope"
    )
    assert unknown.returncode == 2 and "no scope nope" in unknown.stderr
    missing = run_ostiary(clean_db, "clients", "add", "--name", "X", "--client-credentials")
    assert missing.returncode == 2 and "needs --resource" in missing.stderr


async def test_remembered_assertions_are_forgotten_after_they_expire(client, runtime):
    """No table grows without bound: a jti is kept only until its assertion has expired."""
    from app.services import cleanup
    from tests.support import sql

    create_resource(runtime)
    client_id, _ = machine_client(runtime, jwks={"keys": [KEY.as_dict(private=False)]})
    assert (await cc(client, client_assertion_type=GRANT, client_assertion=assertion(client_id))).status_code == 200
    assert sql(runtime.settings, "SELECT count(*) FROM used_assertions")[0][0] == 1
    sql(runtime.settings, "UPDATE used_assertions SET expires_at = expires_at - 3600")
    cleanup.run(runtime.sessions, runtime.settings)
    assert sql(runtime.settings, "SELECT count(*) FROM used_assertions")[0][0] == 0


async def test_the_audit_log_filters_tokens_by_grant(client, runtime, new_client):
    """The console's audit log lists machine tokens apart (grant=client_credentials)."""
    from tests.support import create_user, login

    create_resource(runtime)
    client_id, secret = machine_client(runtime)
    assert (await cc(client, auth=(client_id, secret))).status_code == 200
    create_user(runtime, "root", admin=True)
    admin = new_client()
    assert (await login(admin, "root", next_url="/admin")).status_code == 303
    machine = await admin.get("/admin/audit", params={"event": "token.issued", "grant": "client_credentials"})
    assert machine.status_code == 200 and client_id in machine.text
    others = await admin.get("/admin/audit", params={"event": "token.issued", "grant": "id-jag"})
    assert client_id not in others.text
