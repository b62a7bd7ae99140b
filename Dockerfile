# syntax=docker/dockerfile:1
# Ostiary in a container. `docker compose up` (see docker-compose.yml) runs it with PostgreSQL 16.
#
# The start command waits for the database, applies pending migrations and serves on port 8000.
# The issuer and the secret keys come from the environment (OSTIARY_ISSUER, OSTIARY_SECRET_KEYS
# or OSTIARY_SECRET_KEYS_FILE); tests/test_container_command.py runs this file's exact entrypoint,
# command and healthcheck against a local PostgreSQL.

# -- build: install the package and its dependencies into a virtual environment ---------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/ostiary
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY templates ./templates
COPY migrations ./migrations
RUN /opt/ostiary/bin/pip install .

# -- runtime ----------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/ostiary/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY --from=build /opt/ostiary /opt/ostiary

# Waits (bounded) for the database named by OSTIARY_DATABASE_URL (or _FILE) to accept
# connections, then runs the command. Every `docker compose run ostiary ostiary ...` goes
# through it too. OSTIARY_DB_WAIT_TIMEOUT: seconds to wait (default 60; 0: do not wait).
COPY --chmod=755 <<'EOF' /usr/local/bin/ostiary-entrypoint
#!/usr/bin/env python3
import os
import sys
import time


def database_url():
    from app.settings import Settings

    try:
        return Settings().database_url.get_secret_value()
    except Exception:  # an invalid setting: the command itself names it in one line
        return None


def wait_for_database(url, timeout):
    from sqlalchemy import create_engine, make_url, text
    from sqlalchemy.pool import NullPool

    url = make_url(url).set(drivername="postgresql+psycopg")
    engine = create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    deadline = time.monotonic() + timeout
    attempt = 0
    try:
        while True:
            attempt += 1
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return True
            except Exception as exc:
                reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
                if time.monotonic() >= deadline:
                    print(f"ostiary-entrypoint: the database did not accept connections within {timeout:g} s: {reason}", file=sys.stderr)
                    return False
                print(f"ostiary-entrypoint: waiting for the database (attempt {attempt}): {reason}", file=sys.stderr)
                time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
    finally:
        engine.dispose()


def main(argv):
    if not argv:
        print("usage: ostiary-entrypoint COMMAND [ARG ...]", file=sys.stderr)
        return 2
    try:
        timeout = float(os.environ.get("OSTIARY_DB_WAIT_TIMEOUT", "60"))
    except ValueError:
        print("ostiary-entrypoint: OSTIARY_DB_WAIT_TIMEOUT must be a number of seconds", file=sys.stderr)
        return 78
    url = database_url()
    if timeout > 0 and url and url.startswith("postgresql") and not wait_for_database(url, timeout):
        return 1
    os.execvp(argv[0], argv)


sys.exit(main(sys.argv[1:]))
EOF

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/ostiary --create-home ostiary
# The working directory is the ostiary user's own: the SQLite default (./ostiary.db), for a
# quick `docker run` without PostgreSQL, lands here.
WORKDIR /var/lib/ostiary
USER ostiary

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["ostiary-entrypoint"]
CMD ["ostiary", "serve", "--host", "0.0.0.0", "--port", "8000", "--migrate"]
