"""End to end with the official MCP TypeScript SDK v2 (`@modelcontextprotocol/client` 2.4.0,
MCP 2026-07-28) machine providers, through tests/node/machine_flow.mjs, against `ostiary serve`
and the example MCP server in real processes:

- ClientCredentialsProvider and PrivateKeyJwtProvider with machine clients an admin created
  (MCP extension io.modelcontextprotocol/oauth-client-credentials);
- CrossAppAccessProvider (enterprise-managed authorization): the SDK presents an ID-JAG signed by
  an enterprise IdP that Ostiary trusts (its discovery document and keys served over TLS by the
  test document server).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator

import pytest
from joserfc.jwk import RSAKey

from tests.e2e.cimd_stack import CimdStack, cimd_stack
from tests.e2e.servers import ostiary_cli, ostiary_env
from tests.support import PASSWORD, ROOT, USERNAME, clean_env, sql, unavailable

pytestmark = pytest.mark.slow

NODE_DIR = ROOT / "tests" / "node"
FLOW = NODE_DIR / "machine_flow.mjs"


@pytest.fixture
def node() -> str:
    path = shutil.which("node")
    if path is None:
        unavailable("node is missing")
    if not (NODE_DIR / "node_modules" / "@modelcontextprotocol" / "client" / "package.json").exists():
        unavailable("tests/node/node_modules/@modelcontextprotocol/client is missing (run `npm ci` in tests/node)")
    return path


@pytest.fixture
def stack(tmp_path) -> Iterator[CimdStack]:
    with cimd_stack(tmp_path, username=USERNAME, password=PASSWORD) as stack:
        yield stack


def run(node: str, stack: CimdStack, mode: str, client_id: str, **env: str) -> dict:
    # --name=value: a value never reads as an option, whatever its first character.
    argv = [
        node,
        str(FLOW),
        f"--server-url={stack.mcp_url}",
        f"--issuer={stack.issuer}",
        f"--mode={mode}",
        f"--client-id={client_id}",
    ]
    try:
        done = subprocess.run(argv, cwd=NODE_DIR, env=clean_env(**env), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the node client did not finish in 60 s:\n{exc.stderr}\n{stack.logs()}")
    if done.returncode != 0:
        pytest.fail(f"the node client failed ({done.returncode}):\n{done.stderr[-4000:]}\n{stack.logs()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_ts_sdk_v2_machine_clients_and_cross_app_access(node, stack: CimdStack, tmp_path):
    env = ostiary_env(stack.issuer, stack.database_url)
    printed = ostiary_cli(
        env, "clients", "add", "--name", "TS agent", "--client-credentials", "--resource", stack.mcp_url, "--scope", "mcp:read"
    )
    secret_client, secret = re.search(r"client_id: (\S+)", printed).group(1), re.search(r"client_secret: (\S+)", printed).group(1)
    summary = run(node, stack, "client-credentials", secret_client, E2E_CLIENT_SECRET=secret)
    assert summary["access_token"] and summary["refresh_token"] is None

    key = RSAKey.generate_key(2048, parameters={"kid": "ts-agent"})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    printed = ostiary_cli(
        env, "clients", "add", "--name", "TS signing agent", "--client-credentials", "--resource", stack.mcp_url,
        "--scope", "mcp:read", "--jwks-file", str(jwks),
    )  # fmt: skip
    keyed_client = re.search(r"client_id: (\S+)", printed).group(1)
    summary = run(node, stack, "private-key-jwt", keyed_client, E2E_PRIVATE_JWK=json.dumps(key.as_dict(private=True)))
    assert summary["access_token"]

    idp_key = RSAKey.generate_key(2048, parameters={"kid": "idp-ts"})
    idp = stack.documents.url("/idp")
    stack.documents.documents["/idp/.well-known/openid-configuration"] = {"issuer": idp, "jwks_uri": idp + "/keys"}
    stack.documents.documents["/idp/keys"] = {"keys": [idp_key.as_dict(private=False)]}
    ostiary_cli(env, "idps", "add", "acme", "--issuer", idp, "--id-jag")
    printed = ostiary_cli(
        env, "clients", "add", "--name", "TS chat", "--confidential", "--redirect-uri", "https://chat.example/cb"
    )
    chat, chat_secret = re.search(r"client_id: (\S+)", printed).group(1), re.search(r"client_secret: (\S+)", printed).group(1)
    summary = run(
        node, stack, "cross-app", chat,
        E2E_CLIENT_SECRET=chat_secret, E2E_IDP_ISSUER=idp, E2E_IDP_PRIVATE_JWK=json.dumps(idp_key.as_dict(private=True)),
    )  # fmt: skip
    assert summary["access_token"]
    issued = sql(stack.database_url, "SELECT client_id FROM audit_events WHERE event = 'token.issued'")
    assert {secret_client, keyed_client, chat} <= {row[0] for row in issued}
    assert sql(stack.database_url, "SELECT subject FROM user_identities") == [("lin-42",)]
