"""docker-compose.yml as an operator keeps it: the shape they rely on, and the README blocks that
make and keep its secrets.

No Docker engine runs here: the compose file is read with PyYAML (and compose's interpolation, as
tests/test_container_command.py implements it), the README's shell blocks run in a temporary
directory, and its backup and restore commands run against the local PostgreSQL with only the
`docker compose exec -T db` prefix and the connection taken off.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy import create_engine, text

from app.settings import FILE_VARIANTS, MIN_SECRET_LENGTH, Settings, canonical_issuer_problem
from app.stores import schema
from tests.support import ROOT, postgres_database, psycopg_url, unavailable
from tests.test_container_command import (
    COMPOSE,
    PG_ADMIN_URL,
    SECRETS_BLOCK,
    environment,
    interpolate,
    mounted_secrets,
    production_section,
    readme_block,
    run_shell,
)

CADDYFILE = ROOT / "deploy" / "Caddyfile"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
SECRET_FILES = ("db_password", "secret_keys", "database_url")
# The only variables compose reads from the host's shell or .env: none of them a secret.
HOST_VARIABLES = {"OSTIARY_VERSION", "OSTIARY_ISSUER", "OSTIARY_PORT", "OSTIARY_LOG_LEVEL"}


@pytest.fixture(autouse=True)
def no_settings_of_the_developers(monkeypatch):
    """Settings read here come from the files under test, not from the developer's OSTIARY_*."""
    for name in list(os.environ):
        if name.startswith("OSTIARY_") and not name.startswith("OSTIARY_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def caddy_address(services: dict) -> str:
    return services["caddy"]["networks"]["default"]["ipv4_address"]


# -- the services ------------------------------------------------------------------------------


def test_the_services_are_ostiary_db_redis_and_caddy_under_the_tls_profile(services):
    assert set(services) == {"ostiary", "db", "redis", "caddy"}
    assert services["caddy"]["profiles"] == ["tls"]
    for name in ("ostiary", "db", "redis"):
        assert "profiles" not in services[name], f"{name} must run without a profile"


@pytest.mark.parametrize("name", ["ostiary", "db", "redis", "caddy"])
def test_every_service_restarts_and_has_a_healthcheck(services, name):
    service = services[name]
    assert service["restart"] == "unless-stopped"
    check = service["healthcheck"]
    # Exec form: the image needs no shell, and the check is exactly these words.
    assert check["test"][0] == "CMD" and len(check["test"]) > 1
    assert check["interval"] and check["timeout"] and check["retries"] >= 1


def test_each_healthcheck_uses_a_tool_its_image_has(services):
    # The Ostiary image has python (the runtime), not curl: the check asks /readyz (the database
    # answers and a signing key is active) with urllib.
    app = services["ostiary"]["healthcheck"]
    assert app["test"][1:3] == ["python", "-c"] and "curl" not in app["test"]
    assert "http://127.0.0.1:8000/readyz" in app["test"][3]
    compile(app["test"][3], "healthcheck", "exec")
    assert app["start_period"]  # the first start migrates and generates signing keys
    assert services["db"]["healthcheck"]["test"][1] == "pg_isready"
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    # caddy:2 is Alpine: busybox wget; Caddy's admin API answers on loopback in the container.
    caddy = services["caddy"]["healthcheck"]["test"]
    assert caddy[1] == "wget" and caddy[-1].startswith("http://127.0.0.1:2019/")


def test_ostiary_starts_after_a_healthy_database_and_redis_and_caddy_after_ostiary(services):
    healthy = {"condition": "service_healthy"}
    assert services["ostiary"]["depends_on"] == {"db": healthy, "redis": healthy}
    assert services["caddy"]["depends_on"] == {"ostiary": healthy}


def test_the_image_tag_is_the_version_of_this_checkout(services):
    app = services["ostiary"]
    assert app["build"] in (".", {"context": "."})
    image = interpolate(app["image"], {})
    assert image == f"ostiary:{VERSION}", "docker-compose.yml's default tag must follow pyproject.toml's version"
    assert interpolate(app["image"], {"OSTIARY_VERSION": "0.0.9"}) == "ostiary:0.0.9"  # going back
    # The other images name a release line, never `latest` or nothing.
    for name in ("db", "redis", "caddy"):
        tag = services[name]["image"].partition(":")[2]
        assert tag and tag != "latest" and tag[0].isdigit(), services[name]["image"]


def test_the_database_and_the_certificates_live_in_named_volumes(compose, services):
    for name, path in (("db", "/var/lib/postgresql/data"), ("caddy", "/data")):
        (volume,) = [v for v in services[name]["volumes"] if str(v).split(":")[1] == path]
        source = volume.split(":")[0]
        assert not source.startswith((".", "/")) and source in compose["volumes"], volume


# -- secrets -----------------------------------------------------------------------------------


def test_secrets_come_from_files_under_secrets_and_are_mounted_where_the_file_settings_point(compose, services):
    declared = compose["secrets"]
    assert set(declared) == set(SECRET_FILES)
    for name, source in declared.items():
        assert source == {"file": f"./secrets/{name}"}, "a secret from a file, never from an environment variable"

    tmp = Path("/nonexistent-project")
    app_mounts = mounted_secrets(compose, "ostiary", tmp)
    db_mounts = mounted_secrets(compose, "db", tmp)
    app_env, db_env = environment(services["ostiary"], {}), environment(services["db"], {})
    assert app_mounts == {
        app_env["OSTIARY_DATABASE_URL_FILE"]: tmp / "secrets/database_url",
        app_env["OSTIARY_SECRET_KEYS_FILE"]: tmp / "secrets/secret_keys",
    }
    assert db_mounts == {db_env["POSTGRES_PASSWORD_FILE"]: tmp / "secrets/db_password"}
    # Every _FILE setting the app is given is one the app knows, pointing at a mounted secret.
    for name, value in app_env.items():
        if name.endswith("_FILE"):
            assert name.removeprefix("OSTIARY_").removesuffix("_FILE").lower() in FILE_VARIANTS, name
            assert value in app_mounts, name
    for name in ("redis", "caddy"):
        assert "secrets" not in services[name]


def test_no_environment_value_holds_a_secret(services):
    secret_names = {f"OSTIARY_{name.upper()}" for name in FILE_VARIANTS} | {"POSTGRES_PASSWORD"}
    for service_name, service in services.items():
        env = environment(service, {})
        for name, value in env.items():
            if name in secret_names:
                # Only a URL without credentials may be given plainly (OSTIARY_REDIS_URL).
                assert name == "OSTIARY_REDIS_URL" and urlsplit(value).password is None, (service_name, name)
            assert not re.search(r"PASSWORD|SECRET|KEY", name) or name.endswith("_FILE"), (service_name, name)
            if "://" in value:
                assert urlsplit(value).password is None, (service_name, name)
    # Nothing secret comes in through interpolation either: compose reads only these variables.
    used = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE.read_text()))
    assert used == HOST_VARIABLES, used


# -- ports and the proxy -----------------------------------------------------------------------


def test_ports_are_published_on_loopback_except_caddys(services):
    app_ports = [interpolate(str(p), {}) for p in services["ostiary"]["ports"]]
    assert app_ports == ["127.0.0.1:8000:8000"]
    assert interpolate(str(services["ostiary"]["ports"][0]), {"OSTIARY_PORT": "9000"}) == "127.0.0.1:9000:8000"
    for name in ("db", "redis"):
        assert "ports" not in services[name], f"{name} must not be published"
    # Caddy is the public front: HTTP (ACME challenges, redirect to https), HTTPS and HTTP/3.
    assert services["caddy"]["ports"] == ["80:80", "443:443", "443:443/udp"]


def test_ostiary_trusts_exactly_caddys_fixed_address_in_the_declared_subnet(compose, services):
    (pool,) = compose["networks"]["default"]["ipam"]["config"]
    subnet = ipaddress.ip_network(pool["subnet"])
    dynamic = ipaddress.ip_network(pool["ip_range"])
    assert subnet.prefixlen >= 24, "a small subnet"
    assert dynamic.subnet_of(subnet)

    address = ipaddress.ip_address(caddy_address(services))
    assert address in subnet
    assert address not in dynamic, "no other container may be given Caddy's address first"
    assert address != next(subnet.hosts()), "the first address is the network's gateway"

    for host in ({}, {"OSTIARY_ISSUER": "https://auth.example.com"}):
        trusted = environment(services["ostiary"], host)["OSTIARY_TRUSTED_PROXIES"]
        assert trusted == str(address), "Caddy's address and nothing else, whatever the host sets"
    assert Settings(trusted_proxies=trusted).trusted_proxies == [str(address)]


def test_the_caddyfile_serves_the_issuer_and_proxies_to_the_ostiary_service(services):
    caddy = services["caddy"]
    mounts = {v.split(":")[1]: v.split(":") for v in caddy["volumes"]}
    source, _, mode = mounts["/etc/caddy/Caddyfile"]
    assert Path(ROOT, source).resolve() == CADDYFILE and mode == "ro"

    lines = [line.strip() for line in CADDYFILE.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines == ["{$OSTIARY_ISSUER} {", "reverse_proxy ostiary:8000", "}"]
    # The container port the proxy reaches is the one Ostiary serves on.
    assert any(str(p).endswith(":8000") for p in services["ostiary"]["ports"])
    # The site address is the issuer, from the same variable Ostiary's issuer comes from.
    host = {"OSTIARY_ISSUER": "https://auth.example.com"}
    assert environment(caddy, host)["OSTIARY_ISSUER"] == environment(services["ostiary"], host)["OSTIARY_ISSUER"]
    # Unset, Caddy gets an empty address (and refuses to start) rather than a plain-http default.
    assert environment(caddy, {})["OSTIARY_ISSUER"] == ""


def test_the_readme_tls_env_file_gives_an_https_issuer_and_the_tls_profile(services):
    block = readme_block("cat > .env <<'END'")
    body = block.split("\n", 1)[1].split("\nEND\n", 1)[0]
    dotenv = dict(line.split("=", 1) for line in body.splitlines())
    assert set(dotenv) == {"OSTIARY_ISSUER", "COMPOSE_PROFILES"}
    assert "tls" in dotenv["COMPOSE_PROFILES"].split(",")
    issuer = environment(services["ostiary"], dotenv)["OSTIARY_ISSUER"]
    assert issuer.startswith("https://") and canonical_issuer_problem(issuer) is None
    assert urlsplit(issuer).path == "", "a Caddy site address with a path would match that path only"
    assert environment(services["caddy"], dotenv)["OSTIARY_ISSUER"] == issuer
    # Without .env: a loopback issuer, served on loopback only.
    default = environment(services["ostiary"], {})["OSTIARY_ISSUER"]
    assert default == "http://localhost:8000" and canonical_issuer_problem(default) is None


# -- the README's secret blocks ----------------------------------------------------------------


def snapshot(secrets: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mode, p.stat().st_mtime_ns) for p in secrets.iterdir()}


def test_the_readme_secrets_block_makes_the_files_once_and_keeps_them(tmp_path, compose, services):
    block = readme_block(SECRETS_BLOCK)
    first = run_shell(block, tmp_path)
    assert first.returncode == 0, first.stderr
    secrets = tmp_path / "secrets"
    assert sorted(p.name for p in secrets.iterdir()) == sorted(SECRET_FILES)
    # A 0700 directory of files compose mounts as they are: readable by the container's user
    # (uid 10001, not the files' owner), unreadable by the other users of the host.
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for path in secrets.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o444, path.name

    before = snapshot(secrets)
    second = run_shell(block, tmp_path)
    assert second.returncode == 0, second.stderr
    assert snapshot(secrets) == before, "a second run must not change a secret"

    # What is in them is what the settings and the postgres image take.
    password = (secrets / "db_password").read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", password)
    settings = Settings(
        issuer="https://auth.example.com",
        secret_keys_file=secrets / "secret_keys",
        database_url_file=secrets / "database_url",
    )
    (key,) = settings.keyring()
    assert len(key) >= MIN_SECRET_LENGTH
    url = urlsplit(settings.database_url.get_secret_value())
    db_env = environment(services["db"], {})
    assert (url.scheme, url.hostname, url.port) == ("postgresql", "db", 5432)
    assert (url.username, url.password, url.path) == (db_env["POSTGRES_USER"], password, "/" + db_env["POSTGRES_DB"])


def test_the_secrets_block_keeps_a_file_that_is_there_and_fills_in_only_the_missing(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "secret_keys").write_text("k" * 40 + "\n")
    (secrets / "db_password").write_text("an-existing-password\n")
    result = run_shell(readme_block(SECRETS_BLOCK), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (secrets / "secret_keys").read_text() == "k" * 40 + "\n"
    assert (secrets / "database_url").read_text() == "postgresql://ostiary:an-existing-password@db:5432/ostiary\n"
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700


def test_a_failed_secrets_run_leaves_nothing_half_made_that_a_second_run_keeps(tmp_path):
    broken = tmp_path / "bin"
    broken.mkdir()
    (broken / "openssl").write_text("#!/bin/sh\nexit 1\n")
    (broken / "openssl").chmod(0o755)
    block = readme_block(SECRETS_BLOCK)
    failed = run_shell(block, tmp_path, env={**os.environ, "PATH": f"{broken}:{os.environ['PATH']}"})
    assert failed.returncode != 0
    secrets = tmp_path / "secrets"
    assert not (secrets / "database_url").exists(), "no URL made from a missing password"
    assert all(p.stat().st_size == 0 for p in secrets.iterdir())

    again = run_shell(block, tmp_path)
    assert again.returncode == 0, again.stderr
    password = (secrets / "db_password").read_text().strip()
    assert len(password) == 64 and f":{password}@" in (secrets / "database_url").read_text()


def test_the_earlier_compose_files_secrets_go_into_the_files_and_are_never_overwritten(tmp_path):
    migrate = readme_block("# earlier compose file: its secrets into the files, before step 1")
    env = {**os.environ, "OSTIARY_DB_PASSWORD": "old-db-password", "OSTIARY_SECRET_KEYS": "o" * 48}
    result = run_shell(migrate, tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    done = run_shell(readme_block(SECRETS_BLOCK), tmp_path)
    assert done.returncode == 0, done.stderr
    secrets = tmp_path / "secrets"
    assert (secrets / "secret_keys").read_text() == "o" * 48 + "\n"
    assert (secrets / "database_url").read_text() == "postgresql://ostiary:old-db-password@db:5432/ostiary\n"

    # Run again with other values (or none): it refuses and changes nothing.
    before = snapshot(secrets)
    for other in ({**env, "OSTIARY_SECRET_KEYS": "n" * 48}, {k: v for k, v in env.items() if k != "OSTIARY_DB_PASSWORD"}):
        assert run_shell(migrate, tmp_path, env=other).returncode != 0
    assert snapshot(secrets) == before
    # Without the variables, it writes no empty file.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert run_shell(migrate, fresh, env={k: v for k, v in os.environ.items() if not k.startswith("OSTIARY_")}).returncode != 0
    assert not any((fresh / "secrets").iterdir())


def test_the_readme_rotation_puts_a_new_secret_key_first_and_keeps_the_old(tmp_path, services):
    assert run_shell(readme_block(SECRETS_BLOCK), tmp_path).returncode == 0
    keys = tmp_path / "secrets" / "secret_keys"
    old = keys.read_text().strip()

    block = readme_block("# rotate the secret keys: a new one first, the old ones after it")
    shell, docker = [], []
    for line in block.splitlines()[1:]:
        (docker if line.startswith("docker ") else shell).append(line)
    # The container is recreated so that it mounts the new file (a new inode).
    assert docker == ["docker compose up -d --no-deps --force-recreate --wait ostiary"]
    result = run_shell("\n".join(shell), tmp_path)
    assert result.returncode == 0, result.stderr

    assert stat.S_IMODE(keys.stat().st_mode) == 0o444
    ring = Settings(issuer="https://auth.example.com", secret_keys_file=keys).keyring()
    assert len(ring) == 2 and ring[1] == old.encode() and len(ring[0]) >= MIN_SECRET_LENGTH
    assert sorted(p.name for p in keys.parent.iterdir()) == sorted(SECRET_FILES)


# -- backup and restore ------------------------------------------------------------------------


def readme_command(block_first_line: str, program: str) -> tuple[list[str], str, str]:
    """The README's `docker compose exec -T db <program> ...` line of a block: the program's
    argv, the redirection (`>` or `<`) and its file."""
    (line,) = [line for line in readme_block(block_first_line).splitlines() if f" {program} " in line]
    prefix = "docker compose exec -T db "
    assert line.startswith(prefix), "-T: no terminal, which would corrupt the binary dump"
    command, redirect, target = re.fullmatch(r"(.*?) ([<>]) (.+)", line.removeprefix(prefix)).groups()
    return shlex.split(command), redirect, target


def on_local(argv: list[str], server_url: str, database: str) -> list[str]:
    """The README's command against the local server: `-U ostiary` becomes the server's
    connection, the database `ostiary` the throwaway one."""
    server = urlsplit(server_url)
    out = [argv[0], "-h", server.hostname or "127.0.0.1", "-p", str(server.port or 5432)]
    words = iter(argv[1:])
    for word in words:
        if word == "-U":
            assert next(words) == "ostiary"
            out += ["-U", server.username or "postgres"]
        else:
            out.append(database if word == "ostiary" else word)
    return out


@pytest.mark.postgres
def test_the_readme_backup_and_restore_bring_the_database_back_whole(tmp_path):
    for tool in ("pg_dump", "pg_restore"):
        if not shutil.which(tool):
            unavailable(f"{tool} is not installed")
    dump_argv, dump_redirect, _ = readme_command("# back up", "pg_dump")
    restore_argv, restore_redirect, _ = readme_command("# restore", "pg_restore")
    assert dump_redirect == ">" and "-Fc" in dump_argv and dump_argv[-1] == "ostiary"
    assert restore_redirect == "<" and {"--clean", "--if-exists", "--create"} <= set(restore_argv)
    restore_block = readme_block("# restore").splitlines()
    assert restore_block[1] == "docker compose stop ostiary" and restore_block[-1] == "docker compose up -d --wait"
    assert "-Fc ostiary > ostiary-$(date +%F).dump" in production_section()

    with postgres_database(PG_ADMIN_URL, "ostiary_backup") as url:
        database = urlsplit(url).path.lstrip("/")
        engine = create_engine(psycopg_url(url))
        try:
            schema.upgrade(engine)
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE backup_probe (value text)"))
                conn.execute(text("INSERT INTO backup_probe VALUES ('before')"))
        finally:
            engine.dispose()

        dump = tmp_path / "ostiary.dump"
        with dump.open("wb") as out:
            subprocess.run(on_local(dump_argv, PG_ADMIN_URL, database), stdout=out, check=True, timeout=120)

        # After the backup: data changes, and a newer migration adds a table.
        engine = create_engine(psycopg_url(url))
        try:
            with engine.begin() as conn:
                conn.execute(text("UPDATE backup_probe SET value = 'after'"))
                conn.execute(text("CREATE TABLE added_later (id int)"))
        finally:
            engine.dispose()

        with dump.open("rb") as source:
            restored = subprocess.run(
                on_local(restore_argv, PG_ADMIN_URL, database), stdin=source, capture_output=True, text=True, timeout=120
            )
        assert restored.returncode == 0, restored.stderr

        engine = create_engine(psycopg_url(url))
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SELECT value FROM backup_probe")).scalars().all() == ["before"]
                tables = set(conn.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")).scalars())
            assert "added_later" not in tables, "the restore replaces the whole database"
            assert schema.current(engine) == schema.head()
        finally:
            engine.dispose()
