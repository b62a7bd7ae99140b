"""The processes under test: a fresh database seeded with the real CLI, `ostiary serve` pinned to
a core, and the reference peer. Every process started here is stopped here, and only those."""

from __future__ import annotations

import http.client
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from benchmarks import report
from benchmarks.targets import PASSWORD, PEER_PORT, USERNAME

RESOURCE_URI = "http://127.0.0.1:9400/mcp"
INTROSPECTOR_NAME = "bench-rs"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Database:
    url: str
    secret_keys: str | None  # OSTIARY_SECRET_KEYS; None on SQLite, whose keyring is the development file

    def env(self, issuer: str) -> dict[str, str]:
        """The environment of every Ostiary process: ours only, none of the caller's OSTIARY_*."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OSTIARY_")}
        env.update(OSTIARY_DATABASE_URL=self.url, OSTIARY_ISSUER=issuer)
        if self.secret_keys:
            env["OSTIARY_SECRET_KEYS"] = self.secret_keys
        return env


@contextmanager
def fresh_database(server_url: str | None, workdir: Path) -> Iterator[Database]:
    """SQLite in `workdir`, or a throwaway database `ostiary_bench_<random>` on the PostgreSQL
    server of `server_url`, dropped afterwards."""
    if server_url is None:
        yield Database(f"sqlite:///{workdir / 'ostiary.db'}", None)
        return
    import psycopg  # only needed here
    from psycopg import sql
    from sqlalchemy.engine import make_url

    admin = make_url(server_url).set(drivername="postgresql")
    name = f"ostiary_bench_{secrets.token_hex(4)}"
    admin_dsn = admin.render_as_string(hide_password=False)
    try:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise RuntimeError(f"cannot create a database on {admin.render_as_string()}: {exc}") from None
    print(f"created PostgreSQL database {name}", file=sys.stderr)
    try:
        # PostgreSQL has no development keyring: a keyring for this run only.
        yield Database(admin.set(database=name).render_as_string(hide_password=False), secrets.token_urlsafe(48))
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        print(f"dropped PostgreSQL database {name}", file=sys.stderr)


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """`ostiary ARGS` (python -m app.cli); its output, or RuntimeError with its error."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and fixed arguments
        [sys.executable, "-m", "app.cli", *args], env=env, input=stdin, capture_output=True, text=True, cwd=REPO, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"ostiary {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout


def seed_with_cli(db: Database, issuer: str) -> tuple[str, str]:
    """Migrate and seed as an operator would; returns the MCP server's introspection credentials."""
    env = db.env(issuer)
    if db.secret_keys is None:
        # The development keyring `ostiary serve` makes beside the SQLite file (app/settings.py),
        # made now because `clients add` needs it before the server first starts.
        code = "from app.settings import ensure_development_keyring, load_settings; ensure_development_keyring(load_settings())"
        subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=REPO, capture_output=True, timeout=60)  # noqa: S603
    print(cli(env, "migrate").strip(), file=sys.stderr)
    cli(env, "users", "create", USERNAME, "--password-stdin", stdin=PASSWORD + "\n")
    cli(
        env,
        "resources",
        "add",
        RESOURCE_URI,
        "--name",
        "Benchmark MCP server",
        "--scope",
        "mcp:read=Read",
        "--scope",
        "mcp:write=Write",
        "--default-scope",
        "mcp:read",
    )
    out = cli(env, "clients", "add", "--name", INTROSPECTOR_NAME, "--confidential", "--resource-server", RESOURCE_URI)
    values = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    if "client_id" not in values or "client_secret" not in values:
        raise RuntimeError(f"ostiary clients add printed no client_id/client_secret: {out!r}")
    return values["client_id"].strip(), values["client_secret"].strip()


def seed_scale(db: Database, issuer: str, counts: list[str]) -> None:
    """`python -m benchmarks.seed` on the fresh database, with the server's keyring."""
    env = db.env(issuer)
    if db.secret_keys is None:
        sqlite_file = db.url.removeprefix("sqlite:///")
        env["OSTIARY_SECRET_KEYS"] = Path(sqlite_file + ".secret-keys").read_text().strip()
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "benchmarks.seed", "--database-url", db.url, *counts], env=env, check=True, cwd=REPO
    )


def pin_command(cpus: str | None) -> list[str]:
    """`taskset -c CPUS` when there is more than one core to choose from (else nothing)."""
    taskset = shutil.which("taskset")
    if cpus is None or taskset is None or len(os.sched_getaffinity(0)) < 2:
        return []
    return [taskset, "-c", cpus]


def _http_ok(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class OstiaryServer:
    """`ostiary serve` in its own session (a Ctrl-C reaches us, not it), logging to a file."""

    def __init__(self, db: Database, *, port: int, workers: int, cpus: str | None, log: Path, extra_env: dict[str, str]):
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.env = {**db.env(self.issuer), **extra_env}
        self.command = [
            *pin_command(cpus),
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None  # taskset execs: the same process

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ostiary serve exited with {self.proc.returncode}; {self.log}:\n{_tail(self.log)}")
            if _http_ok(self.port, "/readyz"):  # the database answers and a key can sign
                return
            time.sleep(0.2)
        raise RuntimeError(f"ostiary serve did not become ready in {timeout:.0f} s; {self.log}:\n{_tail(self.log)}")

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down gracefully), then SIGKILL for whatever of the tree is left."""
        if self.proc is None or self.proc.poll() is not None:
            return
        tree = report.process_tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=25)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in tree[1:]:  # worker processes of --workers N, if any outlived the parent
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


class Peer:
    """The reference server of the shared bench-peer checkout (`peer.sh start-mcp`)."""

    def __init__(self, directory: Path, *, cpus: str | None, log_copy: Path) -> None:
        self.dir = directory
        self.cpus = cpus
        self.log_copy = log_copy
        self.started = False

    def start(self) -> None:
        script = self.dir / "peer.sh"
        node = self.dir / "oidc-provider" / "node_modules" / ".bin" / "node"
        if not script.exists():
            raise RuntimeError(f"--peer {self.dir}: no peer.sh there")
        if not node.exists():
            raise RuntimeError(f"--peer {self.dir}: not installed; run {self.dir / 'install.sh'} first")
        env = {
            **os.environ,
            "SIGNING_ALG": "RS256",
            "PEER_CPU": self.cpus if len(os.sched_getaffinity(0)) > 1 and self.cpus else "",
        }
        # Its own session: a Ctrl-C at the terminal reaches us, and we stop it.
        done = subprocess.run(  # noqa: S603 - the peer's own script
            [str(script), "start-mcp"], env=env, capture_output=True, text=True, timeout=60, start_new_session=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"peer.sh start-mcp failed: {done.stderr.strip() or done.stdout.strip()}")
        self.started = done.stdout.startswith("started")
        if not self.started:
            print(f"peer: {done.stdout.strip()} (not started by this run: it is left running)", file=sys.stderr)

    def stop(self) -> None:
        if not self.started:
            return
        with suppress(OSError):
            shutil.copyfile(f"/tmp/peer-oidc-{PEER_PORT}.log", self.log_copy)  # noqa: S108 - where peer.sh logs
        subprocess.run([str(self.dir / "peer.sh"), "stop", str(PEER_PORT)], capture_output=True, timeout=30, check=False)  # noqa: S603
        self.started = False


def scratch_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="ostiary-bench-"))
