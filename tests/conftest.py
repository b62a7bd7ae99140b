"""Pytest hooks and fixtures: the real app over HTTP (httpx + ASGITransport) on a real database.

SQLite by default. With OSTIARY_TEST_DATABASE_URL=postgresql://user@host:port/dbname the suite
creates a throwaway database on that server, runs against it, and drops it at the end. In CI
(CI=true) an unreachable PostgreSQL fails the run instead of skipping.

The helpers and constants the tests share are in tests/support.py.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from app.infra.db import Base, make_engine
from app.main import create_app
from app.settings import Settings
from app.stores import schema
from tests.support import KEEP_TABLES, PG_URL, chromium_or_skip, empty_database, execute, make_settings, postgres_database


def pytest_report_header(config):
    return f"ostiary database: {'PostgreSQL ' + PG_URL if PG_URL else 'SQLite'}"


def pytest_collection_modifyitems(items):
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.anyio)


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"


# -- the database ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> Iterator[str]:
    if not PG_URL:
        path = tmp_path_factory.mktemp("db") / "ostiary-test.db"
        yield f"sqlite:///{path}"
        return
    with postgres_database(PG_URL, "ostiary_test", exit_in_ci=True) as url:
        yield url


@pytest.fixture(scope="session")
def migrated(database_url) -> str:
    engine = make_engine(database_url)
    try:
        schema.upgrade(engine)
    finally:
        engine.dispose()
    return database_url


@pytest.fixture
def clean_db(migrated) -> str:
    """Every test starts from empty tables (signing keys are kept: generating RSA keys is slow;
    tests about keys use `fresh_keys`)."""
    tables = [t.name for t in reversed(Base.metadata.sorted_tables) if t.name not in KEEP_TABLES]
    # DELETE, children first: on PostgreSQL it is ~8x faster than TRUNCATE for tables this
    # small (TRUNCATE rewrites every table's files), and the suite does it ~1200 times.
    execute(migrated, *(f'DELETE FROM "{table}"' for table in tables))  # noqa: S608 (the schema's table names)
    return migrated


@pytest.fixture
def fresh_keys(clean_db) -> str:
    execute(clean_db, "DELETE FROM signing_keys", "DELETE FROM job_runs")
    return clean_db


@pytest.fixture
def empty_database_url(database_url, tmp_path) -> Iterator[str]:
    """A new, empty database (tests of migrations, the CLI and `ostiary serve`)."""
    with empty_database(tmp_path) as url:
        yield url


# -- the app ---------------------------------------------------------------------------------


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


DEAD_DB = "sqlite:////nonexistent-ostiary-dir/dead.db"


@pytest.fixture
def kill_database(runtime):
    """kill_database(): point the request sessions at a database that cannot be opened (its
    engine is disposed after the test)."""
    dead = []

    def kill() -> None:
        runtime.engine.dispose()
        dead.append(make_engine(DEAD_DB))
        runtime.sessions.configure(bind=dead[-1])  # every holder of the factory sees it

    yield kill
    for engine in dead:
        engine.dispose()


@pytest.fixture
async def client(app, settings) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=settings.issuer, follow_redirects=False) as c:
        yield c


@pytest.fixture
async def new_client(app, settings) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """Another browser/client against the same app (its own cookie jar); every one made is
    closed after the test."""
    made: list[httpx.AsyncClient] = []

    def factory(**kwargs) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=kwargs.pop("client_addr", ("127.0.0.1", 50001)))
        c = httpx.AsyncClient(transport=transport, base_url=settings.issuer, follow_redirects=False, **kwargs)
        made.append(c)
        return c

    try:
        yield factory
    finally:
        for c in made:
            await c.aclose()


# -- end-to-end ------------------------------------------------------------------------------


@pytest.fixture
def chromium() -> str:
    """The Chromium the browser tests drive (missing: skipped, or failed in CI)."""
    return chromium_or_skip()
