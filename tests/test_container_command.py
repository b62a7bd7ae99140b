"""docker compose, without a Docker engine.

No Docker engine runs here, so these tests read the Dockerfile and docker-compose.yml and run the
image's exact start command (its ENTRYPOINT script, taken verbatim from the Dockerfile, then its
CMD) in the environment compose gives the app, against the local PostgreSQL. The only
substitutions are the ones a container network makes: the `db` host becomes the local server (with
its credentials and a throwaway database), 0.0.0.0 becomes 127.0.0.1 and port 8000 a free port.

PostgreSQL: the server of OSTIARY_TEST_DATABASE_URL when set, else postgres@127.0.0.1:5432. These
tests skip when it is unreachable, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text

from app.settings import canonical_issuer_problem
from app.stores import schema
from tests.support import ROOT, TEST_SECRET, free_port, postgres_database, psycopg_url

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
PG_ADMIN_URL = os.environ.get("OSTIARY_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
ISSUER = "https://auth.example.test"  # not loopback: the production rules apply (keys required)
DB_PASSWORD = "container-test-password"
START_TIMEOUT = 60
STOP_TIMEOUT = 30


# -- reading the Dockerfile ------------------------------------------------------------------


class Instruction:
    def __init__(self, keyword: str, args: str, heredocs: dict[str, str]):
        self.keyword = keyword
        self.args = args
        self.heredocs = heredocs  # delimiter -> body

    def __repr__(self) -> str:
        return f"{self.keyword} {self.args}"


HEREDOC_RE = re.compile(r"<<-?(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\1")


def parse_dockerfile(source: str) -> list[list[Instruction]]:
    """The instructions, grouped by build stage (each FROM starts one)."""
    lines = source.splitlines()
    stages: list[list[Instruction]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.rstrip().endswith("\\") and i < len(lines):  # line continuations
            nxt = lines[i]
            i += 1
            if nxt.lstrip().startswith("#"):
                continue
            line = line.rstrip()[:-1] + " " + nxt.strip()
        keyword, _, args = line.strip().partition(" ")
        heredocs: dict[str, str] = {}
        for match in HEREDOC_RE.finditer(args):
            delimiter = match.group(2)
            body: list[str] = []
            while i < len(lines) and lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"heredoc {delimiter} is not closed"
            i += 1
            heredocs[delimiter] = "\n".join(body) + "\n"
        instruction = Instruction(keyword.upper(), args.strip(), heredocs)
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, "the Dockerfile must start with FROM"
        stages[-1].append(instruction)
    return stages


def exec_form(args: str) -> list[str]:
    """A JSON ("exec form") argument list: the shell form would put sh in front of the server, and
    SIGTERM from `docker stop` would not reach it."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(a, str) for a in value), args
    return value


def last(stage: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in stage if ins.keyword == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]


def image_env(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for word in shlex.split(ins.args):
                name, _, value = word.partition("=")
                env[name] = value
    return env


def entrypoint_script(stage: list[Instruction], path: str) -> str:
    """The body of the heredoc the Dockerfile copies to ``path``."""
    for ins in stage:
        if ins.keyword == "COPY" and ins.heredocs:
            words = [w for w in ins.args.split() if not w.startswith("--")]
            if words and words[-1] == path:
                (body,) = ins.heredocs.values()
                return body
    raise AssertionError(f"the Dockerfile does not write {path}")


def healthcheck_command(stage: list[Instruction]) -> list[str]:
    args = last(stage, "HEALTHCHECK").args
    _, sep, command = args.partition("CMD ")
    assert sep, "HEALTHCHECK must have a CMD"
    return exec_form(command.strip())


@pytest.fixture(scope="module")
def dockerfile() -> list[list[Instruction]]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(dockerfile) -> list[Instruction]:
    return dockerfile[-1]


# -- reading docker-compose.yml --------------------------------------------------------------


class MissingVariable(Exception):
    pass


INTERPOLATION_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's variable interpolation: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error} and $$."""

    def replace(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        value = env.get(name)
        missing = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if missing else value
        if op in (":?", "?"):
            if missing:
                raise MissingVariable(f"{name}: {arg}")
            return value
        return value or ""

    return INTERPOLATION_RE.sub(replace, value)


def environment(service: dict, env: dict[str, str]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {name: interpolate(str(value), env) for name, value in raw.items()}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def host_env() -> dict[str, str]:
    """What compose reads from the operator's shell (or an .env file)."""
    return {
        "OSTIARY_ISSUER": ISSUER,
        "OSTIARY_SECRET_KEYS": TEST_SECRET,
        "OSTIARY_DB_PASSWORD": DB_PASSWORD,
        # The test plays the TLS-terminating proxy in front of the container, from 127.0.0.1.
        "OSTIARY_TRUSTED_PROXIES": "127.0.0.1",
    }


# What the TLS proxy in front of the container adds to every request it forwards.
VIA_PROXY = {"Host": "auth.example.test", "X-Forwarded-Proto": "https"}


# -- the shape of the two files ----------------------------------------------------------------


def test_dockerfile_builds_a_non_root_image_that_waits_migrates_and_serves(dockerfile, final):
    for stage in dockerfile:
        assert stage[0].args.split()[0] == "python:3.11-slim", stage[0]
    assert any(ins.keyword == "RUN" and re.search(r"pip install \.(\s|$)", ins.args) for stage in dockerfile for ins in stage)

    users = [ins.args for ins in final if ins.keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the server must not run as root"
    assert "8000" in last(final, "EXPOSE").args.split()

    assert exec_form(last(final, "CMD").args) == ["ostiary", "serve", "--host", "0.0.0.0", "--port", "8000", "--migrate"]
    entrypoint = exec_form(last(final, "ENTRYPOINT").args)
    assert entrypoint == ["ostiary-entrypoint"]
    script = entrypoint_script(final, "/usr/local/bin/ostiary-entrypoint")
    assert script.startswith("#!/usr/bin/env python3\n")
    assert "os.execvp" in script  # the server replaces the script: it is PID 1 and gets SIGTERM
    compile(script, "ostiary-entrypoint", "exec")

    check = healthcheck_command(final)
    assert check[:2] == ["python", "-c"] and "http://127.0.0.1:8000/healthz" in check[2]
    assert "--start-period" in last(final, "HEALTHCHECK").args

    # The image's own PATH puts the virtual environment (where `pip install .` put ostiary) first.
    assert image_env(final)["PATH"].startswith("/opt/ostiary/bin:")


def test_compose_runs_the_app_on_postgres_16_with_a_volume_and_a_healthcheck(compose):
    services = compose["services"]
    app, db = services["ostiary"], services["db"]

    assert app["build"] in (".", {"context": "."})
    assert app["depends_on"] == {"db": {"condition": "service_healthy"}, "redis": {"condition": "service_healthy"}}
    # Replicas share rate-limit counters through the redis service (OSTIARY_REDIS_URL).
    redis = services["redis"]
    assert redis["image"].startswith("redis:") and "ping" in redis["healthcheck"]["test"]
    assert environment(app, host_env())["OSTIARY_REDIS_URL"] == "redis://redis:6379/0"
    assert "8000:8000" in [interpolate(str(port), {}) for port in app["ports"]]

    assert db["image"] == "postgres:16"
    volume = next(v for v in db["volumes"] if str(v).endswith(":/var/lib/postgresql/data"))
    name = volume.split(":")[0]
    assert not name.startswith((".", "/")), "a named volume, not a bind mount"
    assert name in compose["volumes"]
    test = db["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "pg_isready" and "-h" in test
    assert db["healthcheck"]["retries"] >= 1


def test_compose_takes_the_issuer_and_keys_from_the_environment(compose):
    app, db = compose["services"]["ostiary"], compose["services"]["db"]

    env = environment(app, host_env())
    assert env["OSTIARY_ISSUER"] == ISSUER
    assert env["OSTIARY_SECRET_KEYS"] == TEST_SECRET

    defaults = environment(app, {k: v for k, v in host_env().items() if k != "OSTIARY_ISSUER"})
    assert defaults["OSTIARY_ISSUER"] == "http://localhost:8000"
    assert canonical_issuer_problem(defaults["OSTIARY_ISSUER"]) is None

    # Without the keys (or the database password) compose refuses to start, with a message.
    for required in ("OSTIARY_SECRET_KEYS", "OSTIARY_DB_PASSWORD"):
        for unset in ({}, {required: ""}):
            partial = {k: v for k, v in host_env().items() if k != required} | unset
            with pytest.raises(MissingVariable, match=f"^{required}: set {required}"):
                environment(app, partial)
    with pytest.raises(MissingVariable, match=r"^OSTIARY_DB_PASSWORD"):
        environment(db, {})

    # The app's database URL is the db service's database, user and password.
    db_env = environment(db, host_env())
    url = urlsplit(env["OSTIARY_DATABASE_URL"])
    assert url.scheme == "postgresql"
    assert (url.hostname, url.port) == ("db", 5432)
    assert url.username == db_env["POSTGRES_USER"]
    assert url.password == db_env["POSTGRES_PASSWORD"] == DB_PASSWORD
    assert url.path == "/" + db_env["POSTGRES_DB"]


# -- running the start command -------------------------------------------------------------------


def can_run_as_pid1() -> bool:
    """Whether we may start a process in a new PID namespace here (as root, usually)."""
    if not shutil.which("unshare") or not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        return False
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A throwaway database on the test PostgreSQL server; its URL."""
    with postgres_database(PG_ADMIN_URL, "ostiary_container") as url:
        yield url


def on_local_server(compose_url: str, local_url: str) -> str:
    """compose's database URL pointed at the local server: its host, port, credentials and the
    throwaway database replace `ostiary:PASSWORD@db:5432/ostiary`; the rest is kept."""
    compose_parts, local = urlsplit(compose_url), urlsplit(local_url)
    assert compose_parts.hostname == "db"
    return urlunsplit((compose_parts.scheme, local.netloc, local.path, compose_parts.query, compose_parts.fragment))


class Container:
    """The image's start command and environment, as a local process."""

    def __init__(self, final: list[Instruction], compose: dict, tmp_path: Path, database_url: str, **host):
        self.port = free_port()
        self.dir = tmp_path
        script = self.dir / "ostiary-entrypoint"
        script.write_text(entrypoint_script(final, "/usr/local/bin/ostiary-entrypoint"))
        script.chmod(0o755)

        cmd = exec_form(last(final, "CMD").args)
        assert cmd.count("0.0.0.0") == 1 and cmd.count("8000") == 1
        cmd = ["127.0.0.1" if a == "0.0.0.0" else str(self.port) if a == "8000" else a for a in cmd]
        (entrypoint,) = exec_form(last(final, "ENTRYPOINT").args)
        assert entrypoint == script.name
        self.argv = [str(script), *cmd]

        check = healthcheck_command(final)
        self.healthcheck = [a.replace("127.0.0.1:8000/", f"127.0.0.1:{self.port}/") for a in check]
        assert self.healthcheck != check

        # The test's own virtual environment plays /opt/ostiary: `python3`, `python` and `ostiary`.
        venv_bin = Path(sys.executable).parent
        assert (venv_bin / "ostiary").exists(), f"`ostiary` is not installed in {venv_bin}"
        self.env = {k: v for k, v in image_env(final).items() if k != "PATH"}
        self.env |= {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.dir), "LANG": "C.UTF-8"}
        app_env = environment(compose["services"]["ostiary"], host_env() | host)
        app_env["OSTIARY_DATABASE_URL"] = on_local_server(app_env["OSTIARY_DATABASE_URL"], database_url)
        # compose's redis service is the local Redis here (its address only; the database stays).
        redis_url = urlsplit(app_env["OSTIARY_REDIS_URL"])
        assert redis_url.hostname == "redis"
        app_env["OSTIARY_REDIS_URL"] = urlunsplit((redis_url.scheme, "127.0.0.1:6379", redis_url.path, "", ""))
        self.env |= app_env
        self.log = self.dir / "container.log"
        self.process: subprocess.Popen | None = None

    def run(self, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv, env=self.env, cwd=self.dir, capture_output=True, text=True, timeout=timeout)

    def start(self, *, as_pid1: bool = False) -> None:
        """Start the command; with ``as_pid1``, as PID 1 of a new PID namespace, as in a container
        (``self.pid`` is then the server's PID, ``self.process`` the `unshare` around it)."""
        argv = ["unshare", "--pid", "--fork", *self.argv] if as_pid1 else self.argv
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                argv, env=self.env, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid = self.process.pid
        if as_pid1:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            deadline = time.monotonic() + 10
            while not children.read_text().split():
                assert self.process.poll() is None and time.monotonic() < deadline, self.output()
                time.sleep(0.01)
            self.pid = int(children.read_text().split()[0])

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_ready(self) -> httpx.Response:
        deadline = time.monotonic() + START_TIMEOUT
        response = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the start command exited with {self.process.returncode}:\n{self.output()}")
            try:
                response = httpx.get(self.url("/readyz"), timeout=2)
                if response.status_code == 200:
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"/readyz did not answer 200 within {START_TIMEOUT} s ({response}):\n{self.output()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


class LateDatabase:
    """A TCP relay to the PostgreSQL server that refuses connections until `open()`: a database
    container that is still starting."""

    def __init__(self, database_url: str):
        parts = urlsplit(database_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.port = free_port()
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        self.url = urlunsplit((parts.scheme, f"{netloc}127.0.0.1:{self.port}", parts.path, "", ""))
        self.server: socket.socket | None = None
        self.sockets: list[socket.socket] = []

    def open(self) -> None:
        self.server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                return
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        for s in [self.server, *self.sockets]:
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()


@pytest.fixture
def container(final, compose, tmp_path, pg_database):
    made: list[Container] = []

    def factory(database_url: str | None = None, **host) -> Container:
        c = Container(final, compose, tmp_path, database_url or pg_database, **host)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.stop()


@pytest.mark.postgres
@pytest.mark.slow
def test_the_start_command_waits_migrates_serves_and_stops_on_sigterm(container, pg_database):
    late = LateDatabase(pg_database)
    box = container(database_url=late.url)
    engine = create_engine(psycopg_url(pg_database))
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")).scalar() == 0

        as_pid1 = can_run_as_pid1()
        box.start(as_pid1=as_pid1)
        # The database is not up yet: the command waits for it (not exits, not serves) ...
        deadline = time.monotonic() + 20
        while "waiting for the database" not in box.output():
            assert box.process.poll() is None, box.output()
            assert time.monotonic() < deadline, f"the command does not say it waits:\n{box.output()}"
            time.sleep(0.1)
        time.sleep(1)
        assert box.process.poll() is None, box.output()
        with pytest.raises(httpx.TransportError):
            httpx.get(box.url("/healthz"), timeout=2)
        # ... and goes on once the database accepts connections.
        late.open()
        ready = box.wait_ready()
        assert ready.json()["status"] == "ok"

        # The script exec'd the server: the process `docker stop` signals is the server itself.
        cmdline = Path(f"/proc/{box.pid}/cmdline")
        if cmdline.exists():
            words = cmdline.read_bytes().split(b"\0")
            assert b"serve" in words and not any(w.endswith(b"ostiary-entrypoint") for w in words), words

        # --migrate brought the empty database to the head revision.
        assert schema.current(engine) == schema.head()

        # Straight to the container over plain http: refused (HTTPS required, wrong Host) ...
        direct = httpx.get(box.url("/.well-known/oauth-authorization-server"), timeout=5)
        assert direct.status_code in (400, 421), direct.text
        # ... through the proxy: served.
        metadata = httpx.get(box.url("/.well-known/oauth-authorization-server"), headers=VIA_PROXY, timeout=5)
        assert metadata.status_code == 200
        assert metadata.json()["issuer"] == ISSUER
        jwks_uri = urlsplit(metadata.json()["jwks_uri"])
        assert f"{jwks_uri.scheme}://{jwks_uri.netloc}" == ISSUER
        jwks = httpx.get(box.url(jwks_uri.path), headers=VIA_PROXY, timeout=5)
        assert jwks.status_code == 200 and jwks.json()["keys"]

        check = subprocess.run(box.healthcheck, env=box.env, cwd=box.dir, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr

        os.kill(box.pid, signal.SIGTERM)  # what `docker stop` does
        try:
            code = box.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not stop within {STOP_TIMEOUT} s of SIGTERM:\n{box.output()}")
        output = box.output()
        # uvicorn shuts down gracefully, then re-raises the signal it caught. PID 1 (the server in
        # the container) ignores it and exits 0; any other process is ended by it.
        expected = (0,) if as_pid1 else (0, -signal.SIGTERM)
        assert code in expected, f"exit status {code} (as PID 1: {as_pid1}):\n{output}"
        assert "Finished server process" in output, output
        assert "Traceback" not in output, output

        # And the healthcheck notices a server that is gone.
        check = subprocess.run(box.healthcheck, env=box.env, cwd=box.dir, capture_output=True, text=True, timeout=30)
        assert check.returncode != 0
    finally:
        box.stop()
        late.close()
        engine.dispose()


@pytest.mark.postgres
def test_without_secret_keys_the_start_command_refuses_and_writes_nothing(container, pg_database):
    box = container()
    del box.env["OSTIARY_SECRET_KEYS"]
    result = box.run()
    assert result.returncode == 78, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "OSTIARY_SECRET_KEYS" in lines[0], result.stderr
    engine = create_engine(psycopg_url(pg_database))
    try:
        assert schema.current(engine) is None
    finally:
        engine.dispose()


def test_the_entrypoint_gives_up_on_an_unreachable_database_after_its_timeout(final, compose, tmp_path):
    closed = free_port()  # nothing listens there
    box = Container(final, compose, tmp_path, f"postgresql://postgres@127.0.0.1:{closed}/ostiary")
    box.env["OSTIARY_DB_WAIT_TIMEOUT"] = "2"
    started = time.monotonic()
    result = box.run(timeout=30)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 20
    assert "waiting for the database" in result.stderr
    assert "did not accept connections within 2 s" in result.stderr
    assert "Traceback" not in result.stderr
