"""A small MCP server (notes) protected by Ostiary.

    python examples/mcp_server/server.py --issuer http://127.0.0.1:8000 --url http://127.0.0.1:8001/mcp

Every setting also comes from the environment: OSTIARY_ISSUER, MCP_SERVER_URL, MCP_HOST,
MCP_PORT, MCP_READ_SCOPE, MCP_WRITE_SCOPE, MCP_SCOPE_IMPLIES. `list_notes` needs the read scope,
`add_note` the write scope; a scope that includes another (Ostiary publishes which) counts as
both. Notes live in memory, one list per user (the token's `sub`).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections import defaultdict
from urllib.parse import urlsplit

import uvicorn
from mcp.server import MCPServer
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from ostiary_auth import OstiaryTokenVerifier, protect
from starlette.applications import Starlette


def build_app(
    *, issuer: str, url: str, read_scope: str, write_scope: str, implies: dict[str, list[str]] | None = None
) -> Starlette:
    """`url` is this server's canonical URI: the RFC 8707 resource registered in Ostiary, the
    `aud` of the tokens it accepts, and where clients connect. `implies` ({scope: [scopes it
    includes]}) applies only until Ostiary's published scope hierarchy has been read."""
    verifier = OstiaryTokenVerifier(issuer, url)
    mcp = MCPServer(
        "Notes",
        instructions="Keeps short notes for the signed-in user.",
        token_verifier=verifier,
        # Plain strings: an AnyHttpUrl gains a trailing slash and then no longer matches the issuer.
        auth=AuthSettings(
            issuer_url=issuer,
            resource_server_url=url,
            required_scopes=[read_scope],
            validate_token_resource=True,
        ),
    )
    notes: dict[str, list[str]] = defaultdict(list)

    def user() -> str:
        token = get_access_token()  # the request's verified token (the middleware admits no other)
        if token is None or not token.subject:
            raise PermissionError("no signed-in user")
        return token.subject

    @mcp.tool()
    def list_notes() -> list[str]:
        """List your notes."""
        return notes[user()]

    @mcp.tool()
    def add_note(text: str) -> str:
        """Add a note."""
        notes[user()].append(text)
        return f"saved note {len(notes[user()])}"

    parts = urlsplit(url)
    app = mcp.streamable_http_app(
        streamable_http_path=parts.path or "/",
        # DNS-rebinding protection: accept only requests addressed to our own URL.
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[parts.netloc],
            allowed_origins=[f"{parts.scheme}://{parts.netloc}"],
        ),
    )
    return protect(
        app,
        issuer=issuer,
        resource=url,
        scopes=[read_scope, write_scope],
        base_scope=read_scope,
        tool_scopes={"list_notes": read_scope, "add_note": write_scope},
        resource_name="Notes",
        implies=implies,
        verifier=verifier,  # DPoP-bound tokens too (RFC 9449 §7.1)
    )


def parse_implies(text: str) -> dict[str, list[str]]:
    """`mcp:write=mcp:read other=a,b`: each scope and the scopes it includes."""
    implies: dict[str, list[str]] = {}
    for pair in text.split():
        name, sep, others = pair.partition("=")
        if not sep or not name or not others:
            raise ValueError(f"not SCOPE=SCOPE[,SCOPE...]: {pair!r}")
        implies.setdefault(name, []).extend(n for n in others.split(",") if n)
    return implies


def main() -> None:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--issuer", default=env("OSTIARY_ISSUER"), help="Ostiary's issuer URL")
    parser.add_argument("--url", default=env("MCP_SERVER_URL", "http://127.0.0.1:8001/mcp"), help="this server's URL")
    parser.add_argument("--host", default=env("MCP_HOST", "127.0.0.1"), help="address to listen on")
    parser.add_argument("--port", type=int, default=env("MCP_PORT"), help="port to listen on (default: the URL's)")
    parser.add_argument("--read-scope", default=env("MCP_READ_SCOPE", "mcp:read"))
    parser.add_argument("--write-scope", default=env("MCP_WRITE_SCOPE", "mcp:write"))
    parser.add_argument(
        "--implies",
        default=env("MCP_SCOPE_IMPLIES", ""),
        metavar="SCOPE=SCOPE,...",
        help="scope hierarchy to use until Ostiary's published one is read (space-separated pairs)",
    )
    args = parser.parse_args()
    if not args.issuer:
        parser.error("give --issuer or set OSTIARY_ISSUER")
    try:
        implies = parse_implies(args.implies)
    except ValueError as exc:
        parser.error(f"--implies: {exc}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = build_app(issuer=args.issuer, url=args.url, read_scope=args.read_scope, write_scope=args.write_scope, implies=implies)
    port = args.port or urlsplit(args.url).port or 8001
    uvicorn.run(app, host=args.host, port=port, log_level="warning")


if __name__ == "__main__":
    main()
