"""The servers under test: what differs between Ostiary and the reference peer, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

REDIRECT_URI = "http://127.0.0.1:9/cb"  # nothing listens there: the driver reads the code off the Location header
USERNAME = "alice"
PASSWORD = "correct horse battery staple"
FIRST_USER_PREFIX = "bench-u-"  # the first-time users of firstlogin: bench-u-0, bench-u-1, ...

# RFC 8414 §3 first; OpenID Connect Discovery for servers that only serve that one.
DISCOVERY_PATHS = ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration")

SCENARIOS = ("discovery", "jwks", "authcode", "refresh", "introspect", "firstlogin", "register")


@dataclass
class Target:
    """One authorization server under test.

    `signin_params` go on the authorization request of a sign-in through the pages only (the
    worker set-up, a first login, re-establishing a refresh chain), never on the returning-user
    loop. `introspector` is a confidential client's (client_id, secret) for RFC 7662
    introspection; None: the driver registers one by RFC 7591 at start. `client_store_limit`:
    the server keeps at most about this many clients (an in-memory LRU), so a `register` run
    evicts the driver's own clients and signed-in sessions, which are then set up again.
    `skip`: scenarios this target cannot run (a note says why); the others run them alone.
    """

    name: str
    issuer: str
    resource: str
    scope: str
    pid_file: str | None = None  # where the server's pid is, for CPU and memory figures
    pid: int | None = None
    redirect_uri: str = REDIRECT_URI
    username: str = USERNAME
    password: str = PASSWORD
    discovery_paths: tuple[str, ...] = DISCOVERY_PATHS
    signin_params: dict[str, str] = field(default_factory=dict)
    # firstlogin: "new-users" signs in a pre-seeded new user per operation (`first_user_prefix`
    # + n, n < first_user_count); "same-user" signs the one user in again with a fresh browser.
    firstlogin: Literal["new-users", "same-user"] = "new-users"
    first_user_prefix: str = FIRST_USER_PREFIX
    first_user_count: int = 0
    introspect_kind: Literal["access_token", "refresh_token"] = "access_token"
    introspector: tuple[str, str] | None = None
    client_store_limit: int | None = None
    skip: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def server_pid(self) -> int | None:
        if self.pid is not None:
            return self.pid
        if self.pid_file:
            try:
                with open(self.pid_file) as fh:
                    return int(fh.read().strip())
            except (OSError, ValueError):
                return None
        return None


def ostiary(port: int, *, first_users: int, introspector: tuple[str, str], name: str = "ostiary") -> Target:
    """Ostiary on `port`; with --baseline, a second one (`ostiary-baseline`) of another checkout."""
    return Target(
        name=name,
        issuer=f"http://127.0.0.1:{port}",
        resource="http://127.0.0.1:9400/mcp",
        scope="mcp:read",
        first_user_count=first_users,
        introspector=introspector,
        notes=["introspect: the worker's access token (JWT), HTTP Basic as the MCP server's own client (RFC 7662 §2.1)"],
    )


PEER_PORT = 4103


def peer() -> Target:
    """node-oidc-provider behind mcp-peer.mjs (`SIGNING_ALG=RS256 peer.sh start-mcp`)."""
    return Target(
        name="oidc-provider",
        issuer=f"http://127.0.0.1:{PEER_PORT}",
        resource="http://127.0.0.1:9103/mcp",
        # OIDC Core §11: oidc-provider grants offline_access (a refresh token) only when the
        # authorization request has prompt=consent, so the sign-in asks for it.
        scope="mcp:read offline_access",
        pid_file=f"/tmp/peer-oidc-{PEER_PORT}.pid",  # noqa: S108 - where peer.sh writes it
        signin_params={"prompt": "consent"},
        firstlogin="same-user",
        # oidc-provider refuses to introspect its JWT access tokens (unsupported_token_type).
        introspect_kind="refresh_token",
        client_store_limit=1000,
        notes=[
            "firstlogin: the peer has one user: alice with a fresh cookie jar and prompt=consent (login and consent pages each time)",
            "introspect: the worker's refresh token (opaque), HTTP Basic as a confidential client registered by RFC 7591",
            "in-memory LRU of about 1000 entries: clients and sessions are set up again after each register run",
        ],
    )
