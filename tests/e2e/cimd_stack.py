"""The stack for end-to-end tests of Client ID Metadata Documents (MCP 2025-11-25, CIMD draft)
with a real SDK client: a throwaway test CA; a real https server on 127.0.0.1 serving the
client's document as https://localhost:<port>/<path>; Ostiary configured to trust it
(OSTIARY_CIMD_CA_FILE = the test CA, OSTIARY_CIMD_ALLOWED_HOSTS = localhost, which is otherwise
refused as an SSRF target); user alice, the Notes resource and the example MCP server, set up the
way tests/e2e/test_mcp_python_sdk.py does.

The CA and the document server are tests/tls_documents.py. Shared by the e2e tests of the
TypeScript SDK and of the Python SDK in CIMD mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.servers import Process, example_mcp_server, ostiary_cli, ostiary_env, ostiary_server
from tests.support import empty_database, free_port
from tests.tls_documents import HOST, CertificateAuthority, DocumentServer, document_server, make_test_ca


def cimd_settings(ca: CertificateAuthority) -> dict[str, str]:
    """Ostiary's settings (for servers.ostiary_env) that let it fetch documents from this host."""
    return {"cimd_ca_file": str(ca.ca_file), "cimd_allowed_hosts": HOST}


# -- the whole stack ---------------------------------------------------------------------------


@dataclass
class CimdStack:
    issuer: str
    mcp_url: str
    database_url: str
    documents: DocumentServer
    ostiary: Process
    mcp_server: Process

    def logs(self) -> str:
        return f"--- ostiary log ---\n{self.ostiary.tail()}\n--- MCP server log ---\n{self.mcp_server.tail()}"


@contextmanager
def cimd_stack(directory: Path, *, username: str, password: str, **settings: str) -> Iterator[CimdStack]:
    """Database, document server, Ostiary (trusting the document server), `username`, the Notes
    resource (mcp:read, the default, and mcp:write), and the example MCP server."""
    ca = make_test_ca(directory / "test-ca")
    as_port, rs_port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{as_port}"
    mcp_url = f"http://127.0.0.1:{rs_port}/mcp"
    with empty_database(directory, "ostiary_e2e") as database_url, document_server(ca) as documents:
        env = ostiary_env(issuer, database_url, **cimd_settings(ca), **settings)
        with ostiary_server(env, as_port, directory / "ostiary.log") as ostiary:
            ostiary_cli(env, "users", "create", username, "--password-stdin", stdin=password + "\n")
            ostiary_cli(
                env, "resources", "add", mcp_url, "--name", "Notes",
                "--scope", "mcp:read=Read your notes", "--scope", "mcp:write=Change your notes",
                "--default-scope", "mcp:read",
            )  # fmt: skip
            with example_mcp_server(issuer, mcp_url, rs_port, directory / "mcp-server.log") as mcp_server:
                yield CimdStack(issuer, mcp_url, database_url, documents, ostiary, mcp_server)
