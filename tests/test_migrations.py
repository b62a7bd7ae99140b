"""The store: alembic owns the schema (docs/decisions.md#sqlite-migrates-itself-postgresql-on-request);
migrations build it from empty on SQLite and PostgreSQL, and the typed models and the migrations
describe the same schema."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.infra.db import Base, make_engine
from app.stores import schema

# The core tables, by name (every table of the models, and no other, is checked below).
CORE_TABLES = {
    "users",
    "clients",
    "resources",
    "resource_scopes",
    "grants",
    "authorization_requests",
    "authorization_codes",
    "refresh_tokens",
    "signing_keys",
    "browser_sessions",
    "audit_events",
}


@pytest.fixture
def engine(empty_database_url):
    engine = make_engine(empty_database_url)
    yield engine
    engine.dispose()


def test_migrations_from_empty_create_every_table(engine):
    assert schema.current(engine) is None
    assert not schema.is_current(engine)
    schema.upgrade(engine)
    tables = set(inspect(engine).get_table_names())
    assert tables >= CORE_TABLES
    assert set(Base.metadata.tables) | {"alembic_version"} == tables
    assert schema.current(engine) == schema.head()
    assert schema.is_current(engine)


def test_upgrade_twice_is_a_no_op(engine):
    schema.upgrade(engine)
    schema.upgrade(engine)
    assert schema.is_current(engine)


def test_models_and_migrations_agree(engine):
    """alembic autogenerate finds nothing to add, drop or alter after the migrations ran."""
    schema.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
