"""DPoP: sender-constrained access and refresh tokens (RFC 9449).

The client here is built with joserfc, as a real DPoP client would be: an ES256 key of its own, a
fresh proof (`typ` dpop+jwt, the public `jwk`, `jti`, `htm`, `htu`, `iat`, and `ath`/`nonce` where
needed) per request. Every hostile proof is refused with `invalid_dpop_proof` and leaves the code
usable for the honest retry.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from sqlalchemy import select

from app.main import create_app
from app.models import RefreshToken
from app.services.clients import create_machine_client
from app.services.resources import find
from tests.support import (
    ISSUER,
    REDIRECT,
    RESOURCE,
    TOKEN_URL,
    DPoPClient,
    admin_client,
    create_resource,
    introspect,
    obtain_code,
    register,
    signed_in_flow,
    verify_jwt,
)

pytestmark = pytest.mark.anyio


async def code_exchange(client, client_id: str, *, proofs=(), auth=None, **extra) -> tuple[httpx.Response, str, str]:
    """Obtain a code (signed-in browser) and redeem it with these DPoP headers; returns the
    response and what a retry needs (code, verifier)."""
    code, verifier, _ = await obtain_code(client, client_id, **extra)
    return await redeem(client, client_id, code, verifier, proofs=proofs, auth=auth), code, verifier


async def redeem(client, client_id, code, verifier, *, proofs=(), auth=None) -> httpx.Response:
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier, "redirect_uri": REDIRECT}
    if auth is None:
        data["client_id"] = client_id
    headers = [("DPoP", p) for p in proofs]
    return await client.post("/token", data=data, headers=headers, auth=auth)


async def refresh_with(client, client_id: str, refresh_token: str, *proofs: str, auth=None) -> httpx.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if auth is None:
        data["client_id"] = client_id
    return await client.post("/token", data=data, headers=[("DPoP", p) for p in proofs], auth=auth)


def refresh_rows(runtime) -> list[RefreshToken]:
    with runtime.sessions() as db:
        return list(db.scalars(select(RefreshToken).order_by(RefreshToken.id)))


# -- metadata ------------------------------------------------------------------------------------


async def test_metadata_lists_the_proof_algorithms(client):
    """RFC 9449 §5.1: `dpop_signing_alg_values_supported`, asymmetric algorithms only."""
    doc = (await client.get("/.well-known/oauth-authorization-server")).json()
    algs = doc["dpop_signing_alg_values_supported"]
    assert "ES256" in algs and "RS256" in algs
    assert not {"none", "HS256", "HS384", "HS512"} & set(algs)


# -- issuing bound tokens --------------------------------------------------------------------------


async def test_a_public_client_gets_dpop_bound_access_and_refresh_tokens(client, runtime):
    """RFC 9449 §5: token_type DPoP (§5.1), `cnf.jkt` in the JWT access token (§6.1), the
    introspection response names the key (§6.2), and a public client's refresh token is bound."""
    reg = await signed_in_flow(client, runtime)
    key = DPoPClient()
    response, _, _ = await code_exchange(client, reg["client_id"], proofs=[key.proof()])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "DPoP"
    claims = (await verify_jwt(client, body["access_token"])).claims
    assert claims["cnf"] == {"jkt": key.jkt}
    assert [row.jkt for row in refresh_rows(runtime)] == [key.jkt]
    info = (await introspect(client, body["access_token"], admin_client(runtime))).json()
    assert info["active"] is True and info["token_type"] == "DPoP" and info["cnf"] == {"jkt": key.jkt}


async def test_without_a_proof_tokens_stay_bearer(client, runtime):
    """RFC 9449 §5: DPoP is what the client chooses; without a proof nothing changes."""
    reg = await signed_in_flow(client, runtime)
    response, _, _ = await code_exchange(client, reg["client_id"])
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert "cnf" not in (await verify_jwt(client, body["access_token"])).claims
    assert [row.jkt for row in refresh_rows(runtime)] == [None]


async def test_a_bound_refresh_token_needs_a_proof_of_the_same_key(client, runtime):
    """RFC 9449 §5: a public client's refresh token is usable only with a proof of its key: a
    stolen one (no proof, or the thief's own key) is refused, and the refusals do not spend it."""
    reg = await signed_in_flow(client, runtime)
    key, thief = DPoPClient(), DPoPClient()
    first = (await code_exchange(client, reg["client_id"], proofs=[key.proof()]))[0].json()
    missing = await refresh_with(client, reg["client_id"], first["refresh_token"])
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_dpop_proof"
    other = await refresh_with(client, reg["client_id"], first["refresh_token"], thief.proof())
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant"
    good = await refresh_with(client, reg["client_id"], first["refresh_token"], key.proof())
    assert good.status_code == 200, good.text
    second = good.json()
    assert second["token_type"] == "DPoP" and second["refresh_token"] != first["refresh_token"]
    assert (await verify_jwt(client, second["access_token"])).claims["cnf"] == {"jkt": key.jkt}
    assert [row.jkt for row in refresh_rows(runtime)] == [key.jkt, key.jkt]  # the successor too


async def test_a_confidential_clients_refresh_token_is_not_bound(client, runtime):
    """RFC 9449 §5: refresh tokens of confidential clients are already bound to the client's
    credentials; only the access token is bound to the proof's key."""
    reg = await signed_in_flow(client, runtime, token_endpoint_auth_method="client_secret_basic")
    auth = (reg["client_id"], reg["client_secret"])
    key = DPoPClient()
    body = (await code_exchange(client, reg["client_id"], proofs=[key.proof()], auth=auth))[0].json()
    assert body["token_type"] == "DPoP"
    assert [row.jkt for row in refresh_rows(runtime)] == [None]
    plain = await refresh_with(client, reg["client_id"], body["refresh_token"], auth=auth)
    assert plain.status_code == 200 and plain.json()["token_type"] == "Bearer"


async def test_a_machine_client_gets_a_bound_token(client, runtime):
    """RFC 9449 §5 applies to every grant: client credentials (RFC 6749 §4.4) included."""
    create_resource(runtime)
    with runtime.sessions() as db:
        row, secret = create_machine_client(db, runtime.keyring, name="Agent", resource=find(db, RESOURCE), scopes=["mcp:read"])
        db.commit()
    key = DPoPClient(RSAKey.generate_key(2048), alg="PS256")
    response = await client.post(
        "/token", data={"grant_type": "client_credentials"}, headers={"DPoP": key.proof()}, auth=(row.id, secret)
    )
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "DPoP"
    assert (await verify_jwt(client, response.json()["access_token"])).claims["cnf"] == {"jkt": key.jkt}


# -- hostile proofs at the token endpoint --------------------------------------------------------

HOSTILE = {
    # name: (how the proof is made, what RFC 9449 §4.3 check refuses it)
    "wrong-htm": lambda k: [k.proof(htm="GET")],  # (8)
    "wrong-htu": lambda k: [k.proof(htu=ISSUER + "/revoke")],  # (9)
    "htu-another-host": lambda k: [k.proof(htu="http://127.0.0.2:8000/token")],  # (9)
    "stale-iat": lambda k: [k.proof(iat=int(time.time()) - 3600)],  # (11)
    "future-iat": lambda k: [k.proof(iat=int(time.time()) + 3600)],  # (11)
    "iat-not-a-number": lambda k: [k.proof(iat="now")],  # (11)
    "no-jti": lambda k: [k.proof(jti=None)],  # (3)
    "wrong-typ": lambda k: [k.proof(header={"typ": "JWT"})],  # (4)
    "no-jwk": lambda k: [k.proof(header={"jwk": None})],  # (7)
    "private-key-in-jwk": lambda k: [k.proof(header={"jwk": k.key.as_dict(private=True)})],  # (7)
    "signed-by-another-key": lambda k: [k.proof(header={"jwk": ECKey.generate_key("P-256").as_dict(private=False)})],  # (6)
    "two-dpop-headers": lambda k: [k.proof(), k.proof()],  # (1)
    "not-a-jwt": lambda k: ["not.a-jwt"],  # (2)
    "empty": lambda k: [""],  # (2)
}


def _hs256_proof(_: DPoPClient) -> list[str]:
    """(5): a MAC is not a proof of possession: alg HS256 with a symmetric `jwk`."""
    secret = OctKey.generate_key(256)
    head = {"typ": "dpop+jwt", "alg": "HS256", "jwk": secret.as_dict(private=False)}
    claims = {"jti": uuid.uuid4().hex, "htm": "POST", "htu": TOKEN_URL, "iat": int(time.time())}
    return [jwt.encode(head, claims, secret, algorithms=["HS256"])]


def _unsigned_proof(_: DPoPClient) -> list[str]:
    """(5): alg none is never accepted."""
    key = ECKey.generate_key("P-256")
    head = {"typ": "dpop+jwt", "alg": "none", "jwk": key.as_dict(private=False)}
    claims = {"jti": uuid.uuid4().hex, "htm": "POST", "htu": TOKEN_URL, "iat": int(time.time())}
    b64 = [base64.urlsafe_b64encode(json.dumps(p).encode()).rstrip(b"=").decode() for p in (head, claims)]
    return [f"{b64[0]}.{b64[1]}."]


HOSTILE["hs256"] = _hs256_proof
HOSTILE["alg-none"] = _unsigned_proof


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_proofs_are_refused_and_the_code_survives(case, client, runtime):
    """RFC 9449 §4.3 / §5: a proof that fails any check is `invalid_dpop_proof` (400), no token
    is issued, and the code is still there for the honest client's retry."""
    reg = await signed_in_flow(client, runtime)
    key = DPoPClient()
    response, code, verifier = await code_exchange(client, reg["client_id"], proofs=HOSTILE[case](key))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_dpop_proof"
    assert response.headers["cache-control"] == "no-store"
    retry = await redeem(client, reg["client_id"], code, verifier, proofs=[key.proof()])
    assert retry.status_code == 200, retry.text
    assert retry.json()["token_type"] == "DPoP"


async def test_a_replayed_proof_is_refused_on_every_replica(client, runtime, settings):
    """RFC 9449 §11.1: a proof's `jti` is used once. The store is the shared database, so a
    second replica (another app on the same database) refuses the replay too."""
    reg = await signed_in_flow(client, runtime)
    key = DPoPClient()
    proof = key.proof()
    first = (await code_exchange(client, reg["client_id"], proofs=[proof]))[0].json()
    replica = create_app(settings, run_jobs=False)
    try:
        transport = httpx.ASGITransport(app=replica, client=("127.0.0.1", 50002))
        async with httpx.AsyncClient(transport=transport, base_url=ISSUER) as other:
            again = await refresh_with(other, reg["client_id"], first["refresh_token"], proof)
    finally:
        replica.state.runtime.engine.dispose()
    assert again.status_code == 400 and again.json()["error"] == "invalid_dpop_proof"
    assert "already used" in again.json()["error_description"]


async def test_htu_is_compared_without_query_and_after_normalisation(client, runtime):
    """RFC 9449 §4.3 (9): the query and fragment are ignored, and the URI is compared after
    RFC 3986 §6.2.2/§6.2.3 normalisation (scheme and host case)."""
    reg = await signed_in_flow(client, runtime)
    key = DPoPClient()
    response, _, _ = await code_exchange(client, reg["client_id"], proofs=[key.proof(htu="HTTP://127.0.0.1:8000/token?x=1#f")])
    assert response.status_code == 200, response.text


# -- what the client registered, and what the server requires --------------------------------------


async def test_a_client_registered_with_dpop_bound_access_tokens_must_send_proofs(client, runtime):
    """RFC 9449 §5.2: `dpop_bound_access_tokens` true: token requests without a proof are
    rejected; with one they succeed."""
    reg = await signed_in_flow(client, runtime, dpop_bound_access_tokens=True)
    response, code, verifier = await code_exchange(client, reg["client_id"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_dpop_proof"
    retry = await redeem(client, reg["client_id"], code, verifier, proofs=[DPoPClient().proof()])
    assert retry.status_code == 200 and retry.json()["token_type"] == "DPoP"


async def test_dpop_bound_access_tokens_must_be_a_boolean(client, runtime):
    """RFC 9449 §5.2 defines a boolean; RFC 7591 §3.2.2: invalid metadata is refused."""
    create_resource(runtime)
    response = await client.post("/register", json={"redirect_uris": [REDIRECT], "dpop_bound_access_tokens": "yes"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_client_metadata"
    ok = await register(client, dpop_bound_access_tokens=False)
    assert ok.get("dpop_bound_access_tokens") is False


@pytest.mark.parametrize("settings_overrides", [{"dpop_required_for_public_clients": True}])
async def test_the_server_can_require_dpop_of_every_public_client(client, runtime):
    """OSTIARY_DPOP_REQUIRED_FOR_PUBLIC_CLIENTS: a public client without a proof is refused; a
    confidential client (bound by its credentials) is not."""
    reg = await signed_in_flow(client, runtime)
    response, code, verifier = await code_exchange(client, reg["client_id"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_dpop_proof"
    assert (await redeem(client, reg["client_id"], code, verifier, proofs=[DPoPClient().proof()])).status_code == 200
    confidential = await register(client, token_endpoint_auth_method="client_secret_basic")
    auth = (confidential["client_id"], confidential["client_secret"])
    plain, _, _ = await code_exchange(client, confidential["client_id"], auth=auth)
    assert plain.status_code == 200 and plain.json()["token_type"] == "Bearer"


@pytest.mark.parametrize("settings_overrides", [{"dpop_nonce": True}])
async def test_server_nonces(client, runtime):
    """RFC 9449 §8: without the server's nonce the proof is refused with `use_dpop_nonce` and a
    `DPoP-Nonce` header; a proof carrying it succeeds, and the response brings the next nonce.
    A made-up nonce is refused."""
    reg = await signed_in_flow(client, runtime)
    key = DPoPClient()
    response, code, verifier = await code_exchange(client, reg["client_id"], proofs=[key.proof()])
    assert response.status_code == 400 and response.json()["error"] == "use_dpop_nonce"
    nonce = response.headers["dpop-nonce"]
    bogus = await redeem(client, reg["client_id"], code, verifier, proofs=[key.proof(nonce="0" * 32)])
    assert bogus.status_code == 400 and bogus.json()["error"] == "use_dpop_nonce"
    ok = await redeem(client, reg["client_id"], code, verifier, proofs=[key.proof(nonce=nonce)])
    assert ok.status_code == 200, ok.text
    assert ok.headers["dpop-nonce"]


async def test_cors_lets_browsers_send_proofs_and_read_nonces(client):
    """RFC 9449 §4.1 / §8: a browser-based client sends the `DPoP` header and reads
    `DPoP-Nonce`."""
    pre = await client.options(
        "/token",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "dpop",
        },
    )
    assert "DPoP" in pre.headers["access-control-allow-headers"]
    real = await client.post("/token", data={}, headers={"Origin": "https://app.example"})
    assert "DPoP-Nonce" in real.headers["access-control-expose-headers"]


# -- using a bound token at our own protected resource (userinfo) -----------------------------------


async def test_userinfo_accepts_a_bound_token_only_with_a_proof_of_its_key(client, runtime):
    """RFC 9449 §7.1: the `DPoP` scheme and a proof whose `ath` names the token and whose key is
    the token's `cnf.jkt`; never as a bearer token; a proof's jti is used once."""
    reg = await signed_in_flow(client, runtime)
    key = DPoPClient()
    body = (await code_exchange(client, reg["client_id"], proofs=[key.proof()], scope="openid mcp:read"))[0].json()
    token, url = body["access_token"], ISSUER + "/userinfo"
    as_bearer = await client.get("/userinfo", headers={"Authorization": f"Bearer {token}"})
    assert as_bearer.status_code == 401 and as_bearer.json()["error"] == "invalid_token"
    proof = key.proof("GET", url, access_token=token)
    ok = await client.get("/userinfo", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert ok.status_code == 200 and ok.json()["preferred_username"] == "alice"
    replay = await client.get("/userinfo", headers={"Authorization": f"DPoP {token}", "DPoP": proof})
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_dpop_proof"
    assert replay.headers["www-authenticate"].startswith("DPoP ") and "algs=" in replay.headers["www-authenticate"]
    no_ath = await client.get("/userinfo", headers={"Authorization": f"DPoP {token}", "DPoP": key.proof("GET", url)})
    assert no_ath.status_code == 401
    thief = DPoPClient().proof("GET", url, access_token=token)
    stolen = await client.get("/userinfo", headers={"Authorization": f"DPoP {token}", "DPoP": thief})
    assert stolen.status_code == 401 and "key" in stolen.json()["error_description"]
