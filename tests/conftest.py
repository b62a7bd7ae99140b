"""Test harness: the real app over HTTP (httpx + ASGITransport) on a real database.

SQLite by default. With OSTIARY_TEST_DATABASE_URL=postgresql://user@host:port/dbname the suite
creates a throwaway database on that server, runs against it, and drops it at the end. In CI
(CI=true) an unreachable PostgreSQL fails the run instead of skipping.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from app.infra import schema
from app.infra.db import make_engine
from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_SECRET = "test-secret-key-0123456789abcdef0123456789abcdef"
ISSUER = "http://127.0.0.1:8000"
PG_URL = os.environ.get("OSTIARY_TEST_DATABASE_URL", "")

sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_report_header(config):
    return f"ostiary database: {'PostgreSQL ' + PG_URL if PG_URL else 'SQLite'}"


def pytest_collection_modifyitems(items):
    import inspect

    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.anyio)


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


# -- the database ----------------------------------------------------------------------------


def _admin_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1]


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> Iterator[str]:
    if not PG_URL:
        path = tmp_path_factory.mktemp("db") / "ostiary-test.db"
        yield f"sqlite:///{path}"
        return
    name = f"ostiary_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(_admin_url(PG_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.exit(f"PostgreSQL at {PG_URL} is unreachable in CI: {exc}", returncode=1)
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    base = PG_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def migrated(database_url) -> str:
    engine = make_engine(database_url)
    schema.upgrade(engine)
    engine.dispose()
    return database_url


KEEP_TABLES = {"alembic_version", "signing_keys"}


@pytest.fixture
def clean_db(migrated) -> str:
    """Every test starts from empty tables (signing keys are kept: generating RSA keys is slow;
    tests about keys use `fresh_keys`)."""
    engine = make_engine(migrated)
    from app.infra.db import Base

    tables = [t.name for t in reversed(Base.metadata.sorted_tables) if t.name not in KEEP_TABLES]
    with engine.begin() as conn:
        # DELETE, children first: on PostgreSQL it is ~8x faster than TRUNCATE for tables this
        # small (TRUNCATE rewrites every table's files), and the suite does it ~1200 times.
        for table in tables:
            conn.execute(text(f'DELETE FROM "{table}"'))
    engine.dispose()
    return migrated


@pytest.fixture
def fresh_keys(clean_db) -> str:
    engine = make_engine(clean_db)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM signing_keys"))
        conn.execute(text("DELETE FROM job_runs"))
    engine.dispose()
    return clean_db


@contextmanager
def empty_database(directory: Path) -> Iterator[str]:
    """A new, empty database on the configured server: an SQLite file in `directory`, or a
    throwaway PostgreSQL database dropped afterwards."""
    if not PG_URL:
        yield f"sqlite:///{directory / f'empty-{secrets.token_hex(3)}.db'}"
        return
    name = f"ostiary_empty_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(_admin_url(PG_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def empty_database_url(database_url, tmp_path) -> Iterator[str]:
    """A new, empty database (tests of migrations, the CLI and `ostiary serve`)."""
    with empty_database(tmp_path) as url:
        yield url


# -- the app ---------------------------------------------------------------------------------


def make_settings(database_url: str, **overrides) -> Settings:
    values = dict(issuer=ISSUER, database_url=database_url, secret_keys=TEST_SECRET)
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings_overrides() -> dict:
    """Override in a test module (or with @pytest.mark.parametrize) to change settings."""
    return {}


@pytest.fixture
def settings(clean_db, settings_overrides) -> Settings:
    return make_settings(clean_db, **settings_overrides)


@pytest.fixture
def app(settings):
    application = create_app(settings, run_jobs=False)
    yield application
    application.state.runtime.engine.dispose()


@pytest.fixture
def runtime(app):
    return app.state.runtime


@pytest.fixture
def db(runtime):
    with runtime.sessions() as session:
        yield session


@pytest.fixture
async def client(app, settings) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=settings.issuer, follow_redirects=False) as c:
        yield c


@pytest.fixture
def new_client(app, settings):
    """Another browser/client against the same app (its own cookie jar)."""
    made: list[httpx.AsyncClient] = []

    def factory(**kwargs) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=kwargs.pop("client_addr", ("127.0.0.1", 50001)))
        c = httpx.AsyncClient(transport=transport, base_url=settings.issuer, follow_redirects=False, **kwargs)
        made.append(c)
        return c

    yield factory


# -- helpers used by many tests --------------------------------------------------------------

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def unique(prefix: str = "x") -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"
