"""Signing in through an organisation's OpenID Connect provider (OIDC Core §3.1, Ostiary as
the relying party; RFC 7636 PKCE; RFC 9207 iss).

The provider is faked at the network edge only: its discovery document, JWK Set and token
endpoint are served to Ostiary's outbound transport, and the token endpoint checks the PKCE
verifier and the client's credentials as a real one would; the test plays the browser at the
provider's authorization endpoint by reading the request Ostiary sent there.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from app.main import create_app
from app.services.identities import add_provider
from tests.support import (
    ISSUER,
    audit_events,
    create_resource,
    query,
    register,
    sql,
    tokens_for,
    verify_jwt,
)

pytestmark = pytest.mark.anyio

IDP = "https://login.acme.example"
KEY = RSAKey.generate_key(2048, parameters={"kid": "acme-1"})
CLIENT_ID, CLIENT_SECRET = "ostiary-at-acme", "upstream-secret"


class Provider:
    """The upstream provider at the network edge."""

    def __init__(self) -> None:
        self.codes: dict[str, dict] = {}  # code -> what the authorization request said, and the ID token claims
        self.token_requests: list[dict] = []

    def authorize(self, url: str, **claims) -> str:
        """The user signs in at the provider: the callback URL it redirects the browser to."""
        q = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        assert url.startswith(IDP + "/authorize?")
        assert q["response_type"] == "code" and q["client_id"] == CLIENT_ID and q["code_challenge_method"] == "S256"
        code = f"code-{len(self.codes)}"
        t = int(time.time())
        id_claims = {"iss": IDP, "sub": "00u1abcd", "aud": CLIENT_ID, "iat": t, "exp": t + 300, "nonce": q["nonce"],
                     "email": "grace@acme.example", "groups": ["writers"]}  # fmt: skip
        id_claims.update(claims)
        self.codes[code] = {"challenge": q["code_challenge"], "redirect_uri": q["redirect_uri"], "claims": id_claims}
        return f"{q['redirect_uri']}?code={code}&state={q['state']}&iss={IDP}"

    def handler(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url == IDP + "/.well-known/openid-configuration":
            doc = {
                "issuer": IDP,
                "authorization_endpoint": IDP + "/authorize",
                "token_endpoint": IDP + "/token",
                "jwks_uri": IDP + "/keys",
            }
            return self._json(doc)
        if url == IDP + "/keys":
            return self._json({"keys": [KEY.as_dict(private=False)]})
        if url == IDP + "/token":
            form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
            self.token_requests.append(form)
            basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            issued = self.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "").encode()
            challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
            if request.headers.get("authorization") != f"Basic {basic}" or issued is None or issued["challenge"] != challenge:
                return self._json({"error": "invalid_grant"}, 400)
            id_token = jwt.encode({"alg": "RS256", "kid": "acme-1"}, issued["claims"], KEY)
            return self._json({"access_token": "upstream-at", "token_type": "Bearer", "id_token": id_token})
        return httpx.Response(404)

    @staticmethod
    def _json(body: dict, status: int = 200) -> httpx.Response:
        return httpx.Response(status, content=json.dumps(body).encode(), headers={"Content-Type": "application/json"})


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
def app(settings, provider):
    application = create_app(settings, run_jobs=False, fetch_transport=httpx.MockTransport(provider.handler))
    yield application
    application.state.runtime.engine.dispose()


@pytest.fixture
def acme(runtime):
    with runtime.sessions() as db:
        add_provider(
            db, runtime.keyring, name="acme", issuer=IDP, client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
            groups_claim="groups", allowed_domains=["acme.example"],
        )  # fmt: skip
        db.commit()


async def sign_in_through_acme(client, provider: Provider, next_url: str = "/account", **claims) -> httpx.Response:
    start = await client.get("/login/acme", params={"next": next_url})
    assert start.status_code == 303, start.text
    callback = provider.authorize(start.headers["location"], **claims)
    return await client.get(callback.removeprefix(ISSUER))


async def test_sign_in_page_offers_the_provider(client, acme):
    page = await client.get("/login")
    assert 'data-idp="acme"' in page.text and "Sign in with acme" in page.text


async def test_a_user_signs_in_through_the_provider_and_an_mcp_client_gets_tokens(client, runtime, provider, acme):
    """The user is provisioned on first sight, linked by (issuer, sub), with the provider's
    groups; then an MCP client's authorization code flow runs for that user."""
    done = await sign_in_through_acme(client, provider)
    assert done.status_code == 303 and done.headers["location"] == "/account", done.text
    assert (await client.get("/account")).status_code == 200
    [(user_id, username, groups)] = sql(runtime.settings, "SELECT id, username, groups FROM users")
    assert username == "grace@acme.example" and "writers" in str(groups)
    assert sql(runtime.settings, "SELECT issuer, subject FROM user_identities") == [(IDP, "00u1abcd")]
    assert provider.token_requests[-1]["redirect_uri"] == f"{ISSUER}/login/acme/callback"
    assert audit_events(runtime, "login.succeeded")[-1].details["idp"] == "acme"
    create_resource(runtime)
    reg = await register(client)
    tokens = await tokens_for(client, reg["client_id"], scope="mcp:read")
    assert (await verify_jwt(client, tokens["access_token"])).claims["sub"] == user_id


@pytest.mark.parametrize(
    "claims, status",
    [
        pytest.param({"nonce": "another-sign-in"}, 400, id="nonce from another sign-in (OIDC Core 3.1.3.7)"),
        pytest.param({"aud": "someone-else"}, 400, id="ID token for another client"),
        pytest.param({"iss": "https://evil.example"}, 400, id="ID token from another issuer"),
        pytest.param({"exp": int(time.time()) - 600, "iat": int(time.time()) - 900}, 400, id="expired ID token"),
        pytest.param({"email": "mallory@evil.example"}, 403, id="an email domain the provider may not vouch for"),
    ],
)
async def test_id_tokens_that_do_not_hold_are_refused(client, runtime, provider, acme, claims, status):
    response = await sign_in_through_acme(client, provider, **claims)
    assert response.status_code == status, response.text
    assert (await client.get("/account")).status_code == 303  # not signed in
    assert sql(runtime.settings, "SELECT count(*) FROM users")[0][0] == 0


async def test_state_and_iss_must_match_and_the_cookie_works_once(client, runtime, provider, acme):
    start = await client.get("/login/acme")
    callback = provider.authorize(start.headers["location"]).removeprefix(ISSUER)
    forged = await client.get(callback.replace("state=", "state=x"))
    assert forged.status_code == 400
    # The pending sign-in was used up by that attempt: even the right answer is refused now.
    assert (await client.get(callback)).status_code == 400
    start = await client.get("/login/acme")
    callback = provider.authorize(start.headers["location"]).removeprefix(ISSUER)
    mixed_up = await client.get(callback.replace(f"iss={IDP}", "iss=https%3A%2F%2Fother-idp.example"))
    assert mixed_up.status_code == 400 and "another identity provider" in mixed_up.text


async def test_an_error_from_the_provider_is_a_page(client, runtime, provider, acme):
    start = await client.get("/login/acme")
    state = query(start.headers["location"])["state"]
    response = await client.get("/login/acme/callback", params={"error": "access_denied", "state": state})
    assert response.status_code == 400 and "did not sign you in" in response.text


async def test_a_locally_disabled_user_cannot_sign_in_through_the_provider(client, runtime, provider, acme):
    assert (await sign_in_through_acme(client, provider)).status_code == 303
    sql(runtime.settings, "UPDATE users SET disabled_at = 1")
    await client.post("/logout", data={})
    client.cookies.clear()
    refused = await sign_in_through_acme(client, provider)
    assert refused.status_code == 403


async def test_unknown_provider_is_404(client):
    assert (await client.get("/login/nobody")).status_code == 404
    assert (await client.get("/login/nobody/callback", params={"code": "x", "state": "y"})).status_code == 404


@pytest.mark.parametrize("settings_overrides", [{"local_sign_in": False}])
async def test_the_provider_can_be_the_only_way_to_sign_in(client, runtime, provider, acme):
    """OSTIARY_LOCAL_SIGN_IN=false: no password form, and a posted password is refused."""
    from tests.support import create_user

    page = await client.get("/login")
    assert 'name="password"' not in page.text and "Sign in with acme" in page.text
    create_user(runtime, "bob")
    response = await client.post("/login", data={"username": "bob", "password": "x", "csrf_token": "x"})
    assert response.status_code == 403 and "Passwords are not used" in response.text
    assert (await sign_in_through_acme(client, provider)).status_code == 303
