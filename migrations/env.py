"""Alembic environment. The app passes its engine in `config.attributes["connection"]`;
the `alembic` command line falls back to the OSTIARY_DATABASE_URL setting."""

from alembic import context

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.infra.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from app.settings import Settings

    engine = make_engine(Settings().database_url.get_secret_value())
    with engine.connect() as connection:
        _run(connection)
        connection.commit()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `ostiary migrate`")
run_migrations_online()
