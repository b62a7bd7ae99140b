"""End to end: the official MCP Python SDK's IdentityAssertionOAuthProvider (SEP-990, MCP
extension io.modelcontextprotocol/enterprise-managed-authorization) against `ostiary serve` and
the example MCP server, in real processes.

The enterprise IdP is a real https server on localhost (test CA) publishing its discovery
document and JWK Set; this test plays its token-exchange leg by signing the ID-JAG the SDK asks
for. An admin trusts the IdP with the real CLI (`ostiary idps add ... --id-jag`) and creates the
confidential client the IdP issues ID-JAGs to. The SDK exchanges the ID-JAG at Ostiary's token
endpoint and calls a tool on the MCP server with the token.
"""

from __future__ import annotations

import re
import time
import uuid

import anyio
import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from mcp.client import Client
from mcp.client.auth.extensions.identity_assertion import IdentityAssertionOAuthProvider
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.cimd_stack import cimd_stack
from tests.e2e.servers import ostiary_cli, ostiary_env
from tests.support import PASSWORD, USERNAME, MemoryStorage, sql

pytestmark = pytest.mark.slow


async def test_sdk_exchanges_an_id_jag_and_calls_a_tool(tmp_path):
    key = RSAKey.generate_key(2048, parameters={"kid": "acme-1"})
    with cimd_stack(tmp_path, username=USERNAME, password=PASSWORD) as stack:
        idp = stack.documents.url("/idp")
        stack.documents.documents["/idp/.well-known/openid-configuration"] = {"issuer": idp, "jwks_uri": idp + "/keys"}
        stack.documents.documents["/idp/keys"] = {"keys": [key.as_dict(private=False)]}
        env = ostiary_env(stack.issuer, stack.database_url)
        ostiary_cli(env, "idps", "add", "acme", "--issuer", idp, "--id-jag", "--groups-claim", "groups")
        printed = ostiary_cli(
            env, "clients", "add", "--name", "Acme chat", "--confidential", "--redirect-uri", "https://chat.example/cb"
        )
        client_id = re.search(r"client_id: (\S+)", printed).group(1)
        secret = re.search(r"client_secret: (\S+)", printed).group(1)

        async def issue_id_jag(audience: str, resource: str) -> str:
            # The IdP's token exchange (extension §4), reduced to what it signs.
            t = int(time.time())
            claims = {
                "iss": idp, "sub": "U019488227", "aud": audience, "resource": resource, "client_id": client_id,
                "jti": uuid.uuid4().hex, "iat": t, "exp": t + 300, "scope": "mcp:read", "email": "ada@acme.example",
            }  # fmt: skip
            return jwt.encode({"alg": "RS256", "kid": "acme-1", "typ": "oauth-id-jag+jwt"}, claims, key)

        storage = MemoryStorage()
        provider = IdentityAssertionOAuthProvider(
            server_url=stack.mcp_url,
            storage=storage,
            client_id=client_id,
            client_secret=secret,
            issuer=stack.issuer,
            assertion_provider=issue_id_jag,
            token_endpoint_auth_method="client_secret_basic",
        )
        with anyio.fail_after(60):
            async with (
                httpx2.AsyncClient(auth=provider, timeout=30.0) as http,
                Client(streamable_http_client(stack.mcp_url, http_client=http), cache=None) as client,
            ):
                listed = await client.call_tool("list_notes", {})
                assert not listed.is_error, listed
        assert storage.tokens is None or storage.tokens.refresh_token is None
        linked = sql(stack.database_url, "SELECT u.username FROM user_identities i JOIN users u ON u.id = i.user_id")
        assert linked == [("ada@acme.example",)], stack.logs()
