"""The processes under test: a fresh database seeded with the real CLI, `ostiary serve` pinned to
a core, and the reference peer. Every process started here is stopped here, and only those.

`code` is the checkout whose `app` package a process runs: this repository (REPO), or with
--baseline another checkout of it, run from its own directory with PYTHONPATH=<it> so that its
`app` and migrations/ are imported, not this one's (the editable install puts REPO on sys.path
through a .pth file, which comes after PYTHONPATH and the working directory)."""

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
SEED_SCRIPT = Path(__file__).resolve().parent / "seed.py"


@dataclass(frozen=True)
class Database:
    url: str
    secret_keys: str | None  # OSTIARY_SECRET_KEYS; None on SQLite, whose keyring is the development file

    def env(self, issuer: str, code: Path = REPO) -> dict[str, str]:
        """The environment of every Ostiary process: ours only, none of the caller's OSTIARY_*;
        with another checkout, PYTHONPATH is that checkout alone."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OSTIARY_")}
        env.update(OSTIARY_DATABASE_URL=self.url, OSTIARY_ISSUER=issuer)
        if self.secret_keys:
            env["OSTIARY_SECRET_KEYS"] = self.secret_keys
        if code != REPO:
            env["PYTHONPATH"] = str(code)
        return env

    def keyring_env(self) -> dict[str, str]:
        """OSTIARY_SECRET_KEYS as the server has it: on SQLite, the development keyring's file."""
        if self.secret_keys is not None:
            return {"OSTIARY_SECRET_KEYS": self.secret_keys}
        sqlite_file = self.url.removeprefix("sqlite:///")
        return {"OSTIARY_SECRET_KEYS": Path(sqlite_file + ".secret-keys").read_text().strip()}


@contextmanager
def fresh_database(server_url: str | None, workdir: Path, name: str = "ostiary") -> Iterator[Database]:
    """SQLite `<name>.db` in `workdir`, or a throwaway database `ostiary_bench_<random>` on the
    PostgreSQL server of `server_url`, dropped afterwards."""
    if server_url is None:
        yield Database(f"sqlite:///{workdir / f'{name}.db'}", None)
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


def cli(env: dict[str, str], *args: str, stdin: str | None = None, code: Path = REPO) -> str:
    """`ostiary ARGS` (python -m app.cli of `code`); its output, or RuntimeError with its error."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and fixed arguments
        [sys.executable, "-m", "app.cli", *args], env=env, input=stdin, capture_output=True, text=True, cwd=code, timeout=120
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"ostiary {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
        )
    return done.stdout


def _python(env: dict[str, str], code: Path, script: str, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
    """`python -c SCRIPT ARGS` in `code`; its output, or RuntimeError with its error."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and our own script
        [sys.executable, "-c", script, *args], env=env, input=stdin, capture_output=True, text=True, cwd=code, timeout=timeout
    )
    if done.returncode != 0:
        tail = "\n".join((done.stderr.strip() or done.stdout.strip()).splitlines()[-5:])
        raise RuntimeError(f"python -c in {code} failed ({done.returncode}): {tail}")
    return done.stdout


def check_checkout(code: Path, env: dict[str, str]) -> None:
    """The processes of `code` import its own app package, not this repository's."""
    where = Path(_python(env, code, "import app; print(app.__file__)").strip()).resolve()
    if not where.is_relative_to(code.resolve()):
        raise RuntimeError(f"the processes meant to run {code} import app from {where}")


def seed_with_cli(db: Database, issuer: str, code: Path = REPO) -> tuple[str, str]:
    """Migrate and seed as an operator would, with the CLI of `code`; returns the MCP server's
    introspection credentials."""
    env = db.env(issuer, code)
    if code != REPO:
        check_checkout(code, env)
    if db.secret_keys is None:
        # The development keyring `ostiary serve` makes beside the SQLite file (app/settings.py),
        # made now because `clients add` needs it before the server first starts.
        script = "from app.settings import ensure_development_keyring, load_settings; ensure_development_keyring(load_settings())"
        _python(env, code, script)
    print(cli(env, "migrate", code=code).strip(), file=sys.stderr)
    cli(env, "users", "create", USERNAME, "--password-stdin", stdin=PASSWORD + "\n", code=code)
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
        code=code,
    )
    out = cli(env, "clients", "add", "--name", INTROSPECTOR_NAME, "--confidential", "--resource-server", RESOURCE_URI, code=code)
    values = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    if "client_id" not in values or "client_secret" not in values:
        raise RuntimeError(f"ostiary clients add printed no client_id/client_secret: {out!r}")
    return values["client_id"].strip(), values["client_secret"].strip()


# benchmarks/seed.py run on another checkout's app package (its models, hashing and sealing):
# the file by path, so that the checkout's own benchmarks/ (if it has one) plays no part.
_SEED_MAIN = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
_SEED_USERS = (
    "import runpy, sys; seed = runpy.run_path(sys.argv[1]); "
    "seed['insert_users'](sys.argv[2], prefix=sys.argv[3], count=int(sys.argv[4]), password=sys.stdin.read())"
)


def seed_scale(db: Database, issuer: str, counts: list[str], code: Path = REPO) -> None:
    """`python -m benchmarks.seed` on the fresh database, with the server's keyring; with
    another checkout as `code`, this seed.py on that checkout's app package."""
    env = {**db.env(issuer, code), **db.keyring_env()}
    command = [sys.executable, "-m", "benchmarks.seed"] if code == REPO else [sys.executable, "-c", _SEED_MAIN, str(SEED_SCRIPT)]
    subprocess.run([*command, "--database-url", db.url, *counts], env=env, check=True, cwd=code)  # noqa: S603


def seed_first_users(db: Database, issuer: str, *, prefix: str, count: int, code: Path = REPO) -> int:
    """The first-time users of `firstlogin` (benchmarks/seed.py insert_users): in this process
    with this repository's models, or with another checkout's models in a process of its own."""
    if code == REPO:
        from benchmarks import seed  # imports the app's models: only where they are needed

        return seed.insert_users(db.url, prefix=prefix, count=count, password=PASSWORD)
    env = {**db.env(issuer, code), **db.keyring_env()}
    _python(env, code, _SEED_USERS, str(SEED_SCRIPT), db.url, prefix, str(count), stdin=PASSWORD, timeout=600)
    return count


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

    def __init__(
        self,
        db: Database,
        *,
        port: int,
        workers: int,
        cpus: str | None,
        log: Path,
        extra_env: dict[str, str],
        code: Path = REPO,
    ):
        self.port = port
        self.issuer = f"http://127.0.0.1:{port}"
        self.code = code
        self.env = {**db.env(self.issuer, code), **extra_env}
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
                self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.code, start_new_session=True
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
