"""Two real `ostiary serve` replicas on one PostgreSQL database and one Redis, which must behave
as one server. The tests drive them over plain HTTP with the helpers of
tests/support.py, each given `base=<replica URL>` (see AUTHORIZE, TOKEN and public_client below).

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

import os
import random
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e.servers import Process, ostiary_cli, ostiary_env
from tests.support import OSTIARY, PASSWORD, RESOURCE, USERNAME, empty_database, free_port, redis_problem, sql, unavailable

REDIS_SERVER = "redis://127.0.0.1:6379"
CLAIM_KEY = "ostiary-e2e-replicas:claimed-by"

# How the replica tests' client talks to them, with the helpers of tests/support.py (each given
# `base=<replica URL>`): a public client (public_client); at /authorize a browser that signs in
# on the way (the sign-in form with its CSRF token, then the consent page's Allow) and asks for
# mcp:read (AUTHORIZE, for obtain_code and tokens_for); `resource` at /token (TOKEN, for
# exchange and refresh, and tokens_for's token_params).
AUTHORIZE = {"sign_in_as": (USERNAME, PASSWORD), "scope": "mcp:read"}
TOKEN = {"resource": RESOURCE}


def public_client(name: str = "Replica test client") -> dict:
    """The registration metadata of the replica tests' client."""
    return {"client_name": name, "response_types": ["code"], "token_endpoint_auth_method": "none"}


# -- Redis: a numbered database of our own ---------------------------------------------------------


@contextmanager
def private_redis_db() -> Iterator[str]:
    import redis

    problem = redis_problem(REDIS_SERVER + "/0")
    if problem is not None:
        unavailable(problem)
    probe = redis.Redis.from_url(REDIS_SERVER + "/0", socket_timeout=2)
    try:
        databases = int(probe.config_get("databases").get("databases", 16))
    finally:
        probe.close()
    me = f"{os.getpid()}-{secrets.token_hex(4)}"
    candidates = list(range(1, databases))
    random.shuffle(candidates)
    for number in candidates:
        conn = redis.Redis.from_url(f"{REDIS_SERVER}/{number}", socket_timeout=2)
        try:
            # Empty and unclaimed: take it (the mark expires by itself should this process die).
            if conn.dbsize() != 0 or not conn.set(CLAIM_KEY, me, nx=True, ex=900):
                continue
            if conn.dbsize() != 1:  # somebody else wrote into it at the same moment: leave it
                conn.delete(CLAIM_KEY)
                continue
            try:
                yield f"{REDIS_SERVER}/{number}"
            finally:
                # Only what the replicas wrote (limits' keys) and our mark.
                for key in conn.scan_iter(match="LIMITS*", count=500):
                    conn.delete(key)
                if conn.get(CLAIM_KEY) == me.encode():
                    conn.delete(CLAIM_KEY)
            return
        finally:
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
        """Run one statement on the shared database (support.sql)."""
        return sql(self.database_url, statement, **params)

    def scalar(self, statement: str, **params):
        return self.sql(statement, **params)[0][0]

    def cli(self, *args: str, stdin: str | None = None) -> str:
        return ostiary_cli(self.env, *args, stdin=stdin)

    def tails(self) -> str:
        return "\n".join(f"--- {r.name} log ---\n{r.process.tail(60)}" for r in self.both)


def _start(name: str, env: dict[str, str], port: int, log: Path) -> Process:
    argv = [*OSTIARY, "serve", "--host", "127.0.0.1", "--port", str(port), "--migrate"]
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
        database_url = stack.enter_context(empty_database(tmp_path, "ostiary_e2e"))
        redis_url = None
        if shared_limits or redis_problem(REDIS_SERVER + "/0") is None:
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
