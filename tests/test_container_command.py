"""docker compose, without a Docker engine.

No Docker engine runs here, so these tests read the Dockerfile and docker-compose.yml and run the
image's exact start command (its ENTRYPOINT script, taken verbatim from the Dockerfile, then its
CMD) in the environment compose gives the app, against the local PostgreSQL. The secrets are the
files the README's block makes when an operator's account runs it, seen as compose mounts them
(the same inode, under a /run/secrets stand-in); the command runs as a process that neither owns
them nor may override file permissions, as uid 10001 in the container is (when the tests run as
root, as in CI). The only substitutions are the ones a container network makes: the `db`
host becomes the local server (with its credentials and a throwaway database), Caddy's fixed
address becomes 127.0.0.1 (the test plays Caddy), 0.0.0.0 becomes 127.0.0.1 and port 8000 a free
port.

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
import tempfile
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
from tests.support import ROOT, free_port, postgres_database, psycopg_url, unavailable

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"
PG_ADMIN_URL = os.environ.get("OSTIARY_TEST_DATABASE_URL") or "postgresql://postgres@127.0.0.1:5432/postgres"
ISSUER = "https://auth.example.test"  # not loopback: the production rules apply (keys required)
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
    """What compose reads from the operator's shell (or an .env file): no secret."""
    return {"OSTIARY_ISSUER": ISSUER}


def caddy_address(compose: dict) -> str:
    return compose["services"]["caddy"]["networks"]["default"]["ipv4_address"]


# -- the README's secrets, as compose mounts them ----------------------------------------------

SECRETS_BLOCK = "# secrets: created once, kept on every later run"


def production_section() -> str:
    return README.read_text().split("## Running in production\n", 1)[1].split("\n## ", 1)[0]


def readme_block(first_line: str) -> str:
    """The ```sh block of README's "Running in production" that starts with ``first_line``."""
    blocks = re.findall(r"```sh\n(.*?)```", production_section(), re.S)
    found = [block for block in blocks if block.startswith(first_line + "\n")]
    assert len(found) == 1, f"README has {len(found)} sh blocks starting with {first_line!r}"
    return found[0]


def run_shell(script: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """A README block, pasted into a POSIX shell (dash on Debian: no bash-isms)."""
    return subprocess.run(
        ["sh", "-c", script], cwd=cwd, env=os.environ if env is None else env, capture_output=True, text=True, timeout=60
    )


def make_secrets(project: Path, *, uid: int | None = None) -> None:
    """Run the README's secrets block in the compose project directory ``project`` (as ``uid``,
    the operator's account, when given)."""
    block = readme_block(SECRETS_BLOCK)
    if uid is None:
        result = run_shell(block, project)
    else:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", "sh", "-c", block]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(project), "LANG": "C.UTF-8"}
        result = subprocess.run(argv, cwd=project, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def mounted_secrets(compose: dict, service: str, project: Path) -> dict[str, Path]:
    """Where compose mounts each secret of ``service`` (/run/secrets/<target>) -> the host file."""
    declared = compose["secrets"]
    mounts: dict[str, Path] = {}
    for item in compose["services"][service].get("secrets", []):
        source = item if isinstance(item, str) else item["source"]
        target = item if isinstance(item, str) else item.get("target", source)
        assert set(declared[source]) == {"file"}, f"secret {source} must come from a file"
        mounts[target if target.startswith("/") else f"/run/secrets/{target}"] = project / declared[source]["file"]
    return mounts


# The operator's account on the host, which runs the README's block and so owns the secrets.
OPERATOR_UID = 1000


def can_drop_privileges() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


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
    assert "127.0.0.1:8000:8000" in [interpolate(str(port), {}) for port in app["ports"]]

    assert db["image"] == "postgres:16"
    volume = next(v for v in db["volumes"] if str(v).endswith(":/var/lib/postgresql/data"))
    name = volume.split(":")[0]
    assert not name.startswith((".", "/")), "a named volume, not a bind mount"
    assert name in compose["volumes"]
    test = db["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "pg_isready" and "-h" in test
    assert db["healthcheck"]["retries"] >= 1


def test_compose_takes_the_issuer_from_the_environment_and_the_secrets_from_files(compose, tmp_path):
    app, db = compose["services"]["ostiary"], compose["services"]["db"]

    env = environment(app, host_env())
    assert env["OSTIARY_ISSUER"] == ISSUER
    defaults = environment(app, {})
    assert defaults["OSTIARY_ISSUER"] == "http://localhost:8000"
    assert canonical_issuer_problem(defaults["OSTIARY_ISSUER"]) is None
    # Forwarded headers are believed from Caddy's fixed address, whatever the host's environment.
    assert env["OSTIARY_TRUSTED_PROXIES"] == defaults["OSTIARY_TRUSTED_PROXIES"] == caddy_address(compose)

    # The secrets are files the README's block makes, mounted where the _FILE settings point.
    make_secrets(tmp_path)
    app_mounts, db_mounts = mounted_secrets(compose, "ostiary", tmp_path), mounted_secrets(compose, "db", tmp_path)
    assert {env["OSTIARY_DATABASE_URL_FILE"], env["OSTIARY_SECRET_KEYS_FILE"]} == set(app_mounts)
    db_env = environment(db, {})
    assert set(db_mounts) == {db_env["POSTGRES_PASSWORD_FILE"]}
    assert "OSTIARY_SECRET_KEYS" not in env and "OSTIARY_DATABASE_URL" not in env and "POSTGRES_PASSWORD" not in db_env

    # The app's database URL is the db service's database, user and password.
    url = urlsplit(app_mounts[env["OSTIARY_DATABASE_URL_FILE"]].read_text().strip())
    assert url.scheme == "postgresql"
    assert (url.hostname, url.port) == ("db", 5432)
    assert url.username == db_env["POSTGRES_USER"]
    assert url.password == db_mounts[db_env["POSTGRES_PASSWORD_FILE"]].read_text().strip()
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
    """The image's start command and environment, as a local process, with the README's secrets
    mounted as compose mounts them.

    In the container the server runs as uid 10001: not the secrets' owner (the operator's account
    on the host) and without a capability to override file permissions. Here (as root, with
    setpriv) it runs as root with every capability dropped, which reads a file exactly as uid
    10001 does: by its "other" permission bits. (The test's Python may live under /root, which
    uid 10001 could not enter.)"""

    def __init__(self, final: list[Instruction], compose: dict, database_url: str, *, unprivileged: bool = True, **host):
        self.port = free_port()
        # Not under pytest's tmp_path, which only its owner may enter: the operator's account runs
        # the README's block here.
        self.root = Path(tempfile.mkdtemp(prefix="ostiary-container-"))
        self.root.chmod(0o755)
        self.unprivileged = unprivileged and can_drop_privileges()
        self.dir = self.root / "home"  # the image's WORKDIR and HOME
        self.dir.mkdir()
        script = self.root / "ostiary-entrypoint"
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
        # compose's own healthcheck for the service (it replaces the image's).
        test = compose["services"]["ostiary"]["healthcheck"]["test"]
        assert test[0] == "CMD"
        self.compose_healthcheck = [a.replace("127.0.0.1:8000/", f"127.0.0.1:{self.port}/") for a in test[1:]]
        assert self.compose_healthcheck != test[1:]

        # The test's own virtual environment plays /opt/ostiary: `python3`, `python` and `ostiary`.
        venv_bin = Path(sys.executable).parent
        assert (venv_bin / "ostiary").exists(), f"`ostiary` is not installed in {venv_bin}"
        self.env = {k: v for k, v in image_env(final).items() if k != "PATH"}
        self.env |= {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(self.dir), "LANG": "C.UTF-8"}
        app_env = environment(compose["services"]["ostiary"], host_env() | host)

        # The compose project: the README's block makes ./secrets; each secret is "mounted" at a
        # /run/secrets stand-in as a hard link, the same inode with its owner and mode, which is
        # what compose's bind mount shows. The database URL alone is rewritten, for the local server.
        project = self.root / "project"
        project.mkdir()
        if self.unprivileged:
            os.chown(project, OPERATOR_UID, OPERATOR_UID)
        make_secrets(project, uid=OPERATOR_UID if self.unprivileged else None)
        run_secrets = self.root / "run-secrets"
        run_secrets.mkdir(mode=0o755)
        mounts = mounted_secrets(compose, "ostiary", project)
        for name, value in app_env.items():
            if name.endswith("_FILE") and value.startswith("/run/secrets/"):
                source, mounted = mounts[value], run_secrets / Path(value).name
                if name == "OSTIARY_DATABASE_URL_FILE":
                    mounted.write_text(on_local_server(source.read_text().strip(), database_url) + "\n")
                    info = source.stat()
                    os.chown(mounted, info.st_uid, info.st_gid)
                    mounted.chmod(info.st_mode & 0o777)
                else:
                    os.link(source, mounted)
                app_env[name] = str(mounted)
        # The test plays Caddy, from 127.0.0.1.
        assert app_env["OSTIARY_TRUSTED_PROXIES"] == caddy_address(compose)
        app_env["OSTIARY_TRUSTED_PROXIES"] = "127.0.0.1"
        # compose's redis service is the local Redis here (its address only; the database stays).
        redis_url = urlsplit(app_env["OSTIARY_REDIS_URL"])
        assert redis_url.hostname == "redis"
        app_env["OSTIARY_REDIS_URL"] = urlunsplit((redis_url.scheme, "127.0.0.1:6379", redis_url.path, "", ""))
        self.env |= app_env
        self.log = self.root / "container.log"
        self.process: subprocess.Popen | None = None

    def as_user(self, argv: list[str]) -> list[str]:
        """``argv`` without any capability (the container's user), when we can."""
        if not self.unprivileged:
            return argv
        return ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--", *argv]

    def run(self, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.compose_exec(self.argv, timeout=timeout)

    def compose_exec(self, argv: list[str], *, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """What `docker compose exec` runs: as the container's user, in its environment, without
        the entrypoint."""
        return subprocess.run(
            self.as_user(argv), env=self.env, cwd=self.dir, input=stdin, capture_output=True, text=True, timeout=timeout
        )

    def start(self, *, as_pid1: bool = False) -> None:
        """Start the command; with ``as_pid1``, as PID 1 of a new PID namespace, as in a container
        (``self.pid`` is then the server's PID, ``self.process`` the `unshare` around it)."""
        argv = self.as_user(self.argv)
        if as_pid1:
            argv = ["unshare", "--pid", "--fork", *argv]
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

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


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
def container(final, compose, pg_database):
    made: list[Container] = []

    def factory(database_url: str | None = None, **kwargs) -> Container:
        c = Container(final, compose, database_url or pg_database, **kwargs)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


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
        # ... without any capability: it read the secrets by their permission bits, as uid 10001.
        if box.unprivileged:
            status = Path(f"/proc/{box.pid}/status").read_text()
            assert re.search(r"^CapEff:\s+0+$", status, re.M), status

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

        # Both healthchecks pass: the image's (/healthz) and compose's (/readyz), run as the
        # container's user, as Docker runs them.
        for probe in (box.healthcheck, box.compose_healthcheck):
            check = box.compose_exec(probe, timeout=30)
            assert check.returncode == 0, (probe, check.stderr)

        # README step 3, `docker compose exec ostiary ostiary users create admin --admin`, with the
        # same environment (the secrets through their _FILE settings), without the entrypoint.
        (create,) = [line for line in readme_block("docker compose up -d --wait").splitlines() if "users create" in line]
        prefix = "docker compose exec ostiary "
        assert create.startswith(prefix)
        argv = [*shlex.split(create.removeprefix(prefix).split("#")[0]), "--password-stdin"]
        created = box.compose_exec(argv, stdin="a long enough admin password\n")
        assert created.returncode == 0, created.stderr
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM users WHERE username = 'admin'")).scalar() == 1

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

        # And the healthchecks notice a server that is gone.
        for probe in (box.healthcheck, box.compose_healthcheck):
            assert box.compose_exec(probe, timeout=30).returncode != 0
    finally:
        box.stop()
        late.close()
        engine.dispose()


@pytest.mark.postgres
def test_without_secret_keys_the_start_command_refuses_and_writes_nothing(container, pg_database):
    box = container()
    del box.env["OSTIARY_SECRET_KEYS_FILE"]
    result = box.run()
    assert result.returncode == 78, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and "OSTIARY_SECRET_KEYS" in lines[0], result.stderr
    engine = create_engine(psycopg_url(pg_database))
    try:
        assert schema.current(engine) is None
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_secret_file_only_its_owner_may_read_is_refused_in_one_line(container, pg_database):
    """Why the README's block leaves the secrets 0444 (in a 0700 directory): compose mounts a file
    with its host owner and mode, and the server runs as uid 10001, not as that owner. A
    file left 0600 by `umask 077` alone is unreadable in the container: the command says so in one
    line, naming the setting, and writes nothing."""
    box = container()
    if not box.unprivileged:
        unavailable("running the command without privileges needs root and setpriv")
    keys = Path(box.env["OSTIARY_SECRET_KEYS_FILE"])
    assert keys.stat().st_uid == OPERATOR_UID and keys.stat().st_mode & 0o777 == 0o444
    keys.chmod(0o600)
    result = box.run()
    assert result.returncode == 78, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "OSTIARY_SECRET_KEYS_FILE" in lines[0] and "Permission denied" in lines[0], result.stderr
    engine = create_engine(psycopg_url(pg_database))
    try:
        assert schema.current(engine) is None
    finally:
        engine.dispose()


def test_the_entrypoint_gives_up_on_an_unreachable_database_after_its_timeout(final, compose):
    closed = free_port()  # nothing listens there
    box = Container(final, compose, f"postgresql://postgres@127.0.0.1:{closed}/ostiary")
    box.env["OSTIARY_DB_WAIT_TIMEOUT"] = "2"
    started = time.monotonic()
    try:
        result = box.run(timeout=30)
    finally:
        box.close()
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - started < 20
    assert "waiting for the database" in result.stderr
    assert "did not accept connections within 2 s" in result.stderr
    assert "Traceback" not in result.stderr
