"""End to end: the official MCP Python SDK's machine-client providers (MCP extension
io.modelcontextprotocol/oauth-client-credentials) against `ostiary serve` and the example MCP
server, in real processes.

An admin creates two machine clients with the real CLI: one with a secret
(ClientCredentialsOAuthProvider, client_secret_basic) and one with a key pair
(PrivateKeyJWTOAuthProvider, RFC 7523 §2.2). Each SDK client discovers Ostiary from the MCP
server's 401 (RFC 9728), gets a client_credentials token for the MCP server and calls a tool.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import httpx2
import pytest
from joserfc.jwk import RSAKey
from mcp.client import Client
from mcp.client.auth.extensions.client_credentials import (
    ClientCredentialsOAuthProvider,
    PrivateKeyJWTOAuthProvider,
    SignedJWTParameters,
)
from mcp.client.streamable_http import streamable_http_client

from tests.e2e.servers import example_mcp_server, ostiary_cli, ostiary_env, ostiary_server
from tests.support import MemoryStorage, empty_database, free_port, sql

pytestmark = pytest.mark.slow


@dataclass
class Stack:
    issuer: str
    mcp_url: str
    database_url: str
    secret_client: tuple[str, str]
    keyed_client: str
    key: RSAKey


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    as_port, rs_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{as_port}"
    mcp_url = f"http://127.0.0.1:{rs_port}/mcp"
    key = RSAKey.generate_key(2048, parameters={"kid": "agent-1"})
    jwks = tmp_path / "agent-jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    with empty_database(tmp_path, "ostiary_e2e_machine") as database_url:
        env = ostiary_env(issuer, database_url)
        with ostiary_server(env, as_port, tmp_path / "ostiary.log"):
            ostiary_cli(
                env, "resources", "add", mcp_url, "--name", "Notes",
                "--scope", "mcp:read=Read your notes", "--scope", "mcp:write=Change your notes", "--default-scope", "mcp:read",
            )  # fmt: skip
            printed = ostiary_cli(
                env, "clients", "add", "--name", "Nightly report", "--client-credentials", "--resource", mcp_url, "--scope", "mcp:read"
            )  # fmt: skip
            secret_client = (
                re.search(r"client_id: (\S+)", printed).group(1),
                re.search(r"client_secret: (\S+)", printed).group(1),
            )
            printed = ostiary_cli(
                env, "clients", "add", "--name", "Signing agent", "--client-credentials", "--resource", mcp_url,
                "--scope", "mcp:read", "--jwks-file", str(jwks),
            )  # fmt: skip
            keyed_client = re.search(r"client_id: (\S+)", printed).group(1)
            with example_mcp_server(issuer, mcp_url, rs_port, tmp_path / "mcp-server.log"):
                yield Stack(issuer, mcp_url, database_url, secret_client, keyed_client, key)


async def _list_notes(stack: Stack, provider) -> None:
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30.0) as http,
        Client(streamable_http_client(stack.mcp_url, http_client=http), cache=None) as client,
    ):
        listed = await client.call_tool("list_notes", {})
        assert not listed.is_error, listed


async def test_sdk_machine_clients_get_tokens_and_call_a_tool(stack: Stack):
    secret_storage, key_storage = MemoryStorage(), MemoryStorage()
    with anyio.fail_after(60):
        client_id, secret = stack.secret_client
        await _list_notes(
            stack,
            ClientCredentialsOAuthProvider(
                server_url=stack.mcp_url, storage=secret_storage, client_id=client_id, client_secret=secret, issuer=stack.issuer
            ),
        )
        pem = stack.key.as_pem(private=True).decode()
        signer = SignedJWTParameters(issuer=stack.keyed_client, subject=stack.keyed_client, signing_key=pem)
        await _list_notes(
            stack,
            PrivateKeyJWTOAuthProvider(
                server_url=stack.mcp_url,
                storage=key_storage,
                client_id=stack.keyed_client,
                assertion_provider=signer.create_assertion_provider(),
                issuer=stack.issuer,
            ),
        )
    assert secret_storage.tokens.refresh_token is None and key_storage.tokens.refresh_token is None
    issued = sql(
        stack.database_url,
        "SELECT client_id FROM audit_events WHERE event = 'token.issued' AND CAST(details AS TEXT) LIKE '%client_credentials%'",
    )
    assert {row[0] for row in issued} == {client_id, stack.keyed_client}
