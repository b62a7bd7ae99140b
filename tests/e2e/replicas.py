"""Two real `ostiary serve` replicas on one PostgreSQL database and one Redis, and the plain-HTTP
client side that tests drive them with (issue 6, item 5: several replicas behave as one server).

Both replicas are configured exactly alike, with one issuer: `http://127.0.0.1:<port of A>`.
A deployment puts a load balancer in front of them that forwards the issuer's Host header
unchanged to whichever replica it picks; the tests do what that load balancer does and send
`Host: 127.0.0.1:<port of A>` to B as well (see `Replicas.host`). So neither replica needs an
OSTIARY_EXTRA_HOSTS entry that a production deployment would not have, and the Host allow-list
(app/security/hosts.py) stays as strict as in production.

Rate-limit counters live in a Redis database of their own for each stack: one of Redis's
numbered databases that is empty when the stack starts, marked as taken by this process, and
emptied of the keys the replicas wrote (and the mark) when the stack stops.

Everything binds and talks to 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from sqlalchemy import text

from e2e.servers import BIN, Process, free_port, ostiary_cli, ostiary_env, throwaway_database

REDIS_SERVER = "redis://127.0.0.1:6379"
USERNAME = "alice"
PASSWORD = "correct horse battery staple"
RESOURCE = "https://mcp.example.com/mcp"
REDIRECT = "http://127.0.0.1:9876/callback"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
CLAIM_KEY = "ostiary-e2e-replicas:claimed-by"


# -- Redis: a numbered database of our own ---------------------------------------------------------


def redis_problem() -> str | None:
    """Why the replicas cannot share a Redis here, or None."""
    import redis

    try:
        probe = redis.Redis.from_url(REDIS_SERVER + "/0", socket_timeout=2)
        probe.ping()
        probe.close()
    except Exception as exc:
        return f"Redis at {REDIS_SERVER} is unreachable: {exc}"
    return None


@contextmanager
def private_redis_db() -> Iterator[str]:
    import redis

    problem = redis_problem()
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    probe = redis.Redis.from_url(REDIS_SERVER + "/0", socket_timeout=2)
    databases = int(probe.config_get("databases").get("databases", 16))
    probe.close()
    me = f"{os.getpid()}-{secrets.token_hex(4)}"
    candidates = list(range(1, databases))
    random.shuffle(candidates)
    for number in candidates:
        conn = redis.Redis.from_url(f"{REDIS_SERVER}/{number}", socket_timeout=2)
        # Empty and unclaimed: take it (the mark expires by itself should this process die).
        if conn.dbsize() == 0 and conn.set(CLAIM_KEY, me, nx=True, ex=900):
            if conn.dbsize() != 1:  # somebody else wrote into it at the same moment: leave it
                conn.delete(CLAIM_KEY)
                conn.close()
                continue
            try:
                yield f"{REDIS_SERVER}/{number}"
            finally:
                # Only what the replicas wrote (limits' keys) and our mark.
                for key in conn.scan_iter(match="LIMITS*", count=500):
                    conn.delete(key)
                if conn.get(CLAIM_KEY) == me.encode():
                    conn.delete(CLAIM_KEY)
                conn.close()
            return
        conn.close()
    pytest.skip("no empty Redis database to use")


# -- the two replicas ---------------------------------------------------------------------------------


@dataclass
class Replica:
    name: str
    port: int
    process: Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no shutdown of any kind."""
        self.process.proc.send_signal(signal.SIGKILL)
        self.process.proc.wait(timeout=10)


@dataclass
class Replicas:
    issuer: str
    database_url: str
    redis_url: str | None
    env: dict[str, str]
    a: Replica
    b: Replica
    logs: Path
    extra: dict = field(default_factory=dict)

    @property
    def host(self) -> str:
        """The Host header every request carries, whichever replica it reaches."""
        return urlsplit(self.issuer).netloc

    @property
    def both(self) -> tuple[Replica, Replica]:
        return (self.a, self.b)

    def http(self, **kwargs) -> httpx.AsyncClient:
        """One client for both replicas (full URLs), with the issuer's Host header: a browser
        or an MCP client behind the load balancer. Cookies are shared by both replicas."""
        kwargs.setdefault("timeout", 30.0)
        headers = {"Host": self.host, **kwargs.pop("headers", {})}
        return httpx.AsyncClient(headers=headers, follow_redirects=False, **kwargs)

    def sql(self, statement: str, **params):
        """Run one statement on the shared database; all rows for a SELECT."""
        from app.infra.db import make_engine

        engine = make_engine(self.database_url)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return list(result) if result.returns_rows else result.rowcount
        finally:
            engine.dispose()

    def scalar(self, statement: str, **params):
        return self.sql(statement, **params)[0][0]

    def cli(self, *args: str, stdin: str | None = None) -> str:
        return ostiary_cli(self.env, *args, stdin=stdin)

    def tails(self) -> str:
        return "\n".join(f"--- {r.name} log ---\n{r.process.tail(60)}" for r in self.both)


def _start(name: str, env: dict[str, str], port: int, log: Path) -> Process:
    argv = [str(BIN / "ostiary"), "serve", "--host", "127.0.0.1", "--port", str(port), "--migrate"]
    return Process(name, argv, env, log).start()


def wait_ready(process: Process, port: int, timeout: float = 40.0) -> None:
    """/readyz answers 200: the database answers and a key can sign."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise RuntimeError(f"{process.name} exited with {process.proc.returncode}:\n{process.tail()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} not ready on port {port} after {timeout}s:\n{process.tail()}")


@contextmanager
def replica_stack(tmp_path: Path, *, together: bool = False, shared_limits: bool = False, **settings: str) -> Iterator[Replicas]:
    """A throwaway PostgreSQL database, a Redis database of its own, replicas A and B, a user
    and a resource made with the real CLI. A migrates and creates the keys, then B starts on
    that; or, `together`, both start at the same moment on the empty database (`serve
    --migrate` each, as `docker compose up --scale` does). `settings` are OSTIARY_* values
    (lower-case names without the prefix).

    Redis is used when it answers. A test about shared rate limits (`shared_limits`) needs it;
    the others, whose limits are set out of the way, still run without it (each replica then
    counts for itself), so that what they prove about the shared database is proved even
    where no Redis runs."""
    if not os.environ.get("OSTIARY_TEST_DATABASE_URL"):
        pytest.skip("replicas share a PostgreSQL database (set OSTIARY_TEST_DATABASE_URL)")
    with ExitStack() as stack:
        database_url = stack.enter_context(throwaway_database(tmp_path))
        redis_url = None
        if shared_limits or redis_problem() is None:
            redis_url = stack.enter_context(private_redis_db())
        port_a, port_b = free_port(), free_port()
        while port_b == port_a:
            port_b = free_port()
        issuer = f"http://127.0.0.1:{port_a}"
        if redis_url:
            settings = {**settings, "redis_url": redis_url}
        env = ostiary_env(issuer, database_url, **settings)
        logs = tmp_path
        a = _start("replica A", env, port_a, logs / "replica-a.log")
        stack.callback(a.stop)
        if not together:
            wait_ready(a, port_a)
        b = _start("replica B", env, port_b, logs / "replica-b.log")
        stack.callback(b.stop)
        if together:
            wait_ready(a, port_a)
            wait_ready(b, port_b)
        ostiary_cli(env, "users", "create", USERNAME, "--password-stdin", stdin=PASSWORD + "\n")
        ostiary_cli(
            env, "resources", "add", RESOURCE, "--name", "Notes",
            "--scope", "mcp:read=Read your notes", "--scope", "mcp:write=Change your notes",
            "--default-scope", "mcp:read",
        )  # fmt: skip
        wait_ready(b, port_b)
        replicas = Replicas(issuer, database_url, redis_url, env, Replica("A", port_a, a), Replica("B", port_b, b), logs)
        yield replicas


# -- the client side over plain HTTP -------------------------------------------------------------------


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def csrf_from(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, f"no CSRF token in the page:\n{html[:500]}"
    return match.group(1)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def register(http: httpx.AsyncClient, base: str, name: str = "Replica test client") -> dict:
    body = {
        "redirect_uris": [REDIRECT],
        "client_name": name,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }
    response = await http.post(f"{base}/register", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def obtain_code(
    http: httpx.AsyncClient, client_id: str, *, authorize_at: str, sign_in_at: str | None = None
) -> tuple[str, str]:
    """Run /authorize at one replica and, when asked to, sign in (CSRF form) and Allow on the
    consent page, following the pages at `sign_in_at` (default: the same replica). Returns
    (code, PKCE verifier)."""
    pages = sign_in_at or authorize_at
    verifier, challenge = pkce()
    state = "st-" + secrets.token_hex(4)
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "resource": RESOURCE,
        "scope": "mcp:read",
        "state": state,
    }
    response = await http.get(f"{authorize_at}/authorize", params=params)
    for _ in range(8):
        assert response.status_code in (302, 303), f"{response.status_code}: {response.text[:500]}"
        location = response.headers["location"]
        if location.startswith(REDIRECT):
            got = query(location)
            assert "code" in got, got
            assert got["state"] == state and got["iss"], got
            return got["code"], verifier
        target = urljoin(pages + "/", location) if not location.startswith("http") else location
        path = urlsplit(target).path
        page = await http.get(target)
        if path.endswith("/login"):
            assert page.status_code == 200, page.text[:500]
            response = await http.post(
                target.split("?", 1)[0],
                data={
                    "username": USERNAME,
                    "password": PASSWORD,
                    "csrf_token": csrf_from(page.text),
                    "next": query(target).get("next", ""),
                },
            )
        elif "/consent/" in path:
            if page.status_code in (302, 303):
                response = page
                continue
            assert page.status_code == 200, page.text[:500]
            response = await http.post(target, data={"decision": "allow", "csrf_token": csrf_from(page.text)})
        else:
            response = page
    raise AssertionError(f"no code after following the pages: {response.status_code} {response.headers}")


async def exchange(http: httpx.AsyncClient, base: str, client_id: str, code: str, verifier: str) -> httpx.Response:
    return await http.post(
        f"{base}/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": REDIRECT,
            "client_id": client_id,
            "resource": RESOURCE,
        },
    )


async def refresh(http: httpx.AsyncClient, base: str, client_id: str, refresh_token: str) -> httpx.Response:
    return await http.post(
        f"{base}/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id, "resource": RESOURCE},
    )


async def tokens_for(http: httpx.AsyncClient, client_id: str, *, authorize_at: str, redeem_at: str) -> dict:
    code, verifier = await obtain_code(http, client_id, authorize_at=authorize_at)
    response = await exchange(http, redeem_at, client_id, code, verifier)
    assert response.status_code == 200, response.text
    return response.json()


def jwt_header(token: str) -> dict:
    import json

    head = token.split(".", 1)[0]
    return json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))


def verify_jwt(token: str, jwks: dict):
    from joserfc import jwt
    from joserfc.jwk import KeySet

    return jwt.decode(token, KeySet.import_key_set(jwks))


__all__ = [
    "PASSWORD",
    "REDIRECT",
    "RESOURCE",
    "USERNAME",
    "Replica",
    "Replicas",
    "csrf_from",
    "exchange",
    "jwt_header",
    "obtain_code",
    "pkce",
    "private_redis_db",
    "query",
    "redis_problem",
    "refresh",
    "register",
    "replica_stack",
    "tokens_for",
    "verify_jwt",
    "wait_ready",
]
