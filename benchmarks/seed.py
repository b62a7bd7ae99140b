"""Fill a migrated Ostiary database in bulk, with rows shaped as the app writes them.

    python -m benchmarks.seed --database-url URL [--users N] [--clients N] [--grants N]
        [--refresh-tokens N] [--audit N] [--scale-factor F]

Defaults: 50 000 users, 100 000 clients, 100 000 grants, 1 000 000 refresh tokens and
1 000 000 audit events, each multiplied by --scale-factor. Run `ostiary migrate` first. Rows go
in with SQLAlchemy Core executemany, about 10 000 a transaction, on the app's own tables.

Bearer values are stored as the app stores them (HMAC-SHA256 under the keyring's first secret,
app/security/secrets.py): the keyring is OSTIARY_SECRET_KEYS, else the development keyring
beside an SQLite file, else a random one (the hashes then look the same but match nothing).
About 10 % of the refresh tokens are expired and about 9 % of the audit events are past the
default retention, so the cleanup job has work; clients are recently used, so that pruning
does not delete them (and their grants and tokens) behind the benchmark's back.

`insert_users` is also what the benchmark uses to create the first-time users of its
`firstlogin` scenario. `schema_differences` tells whether these models fit a database that
another checkout migrated (python -m benchmarks.run --baseline DIR).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Connection, Engine, Integer, Table, func, inspect, select, text

from app.infra.db import make_engine
from app.models import AuditEvent, Client, Consent, RefreshToken, Resource, ResourceScope, User
from app.models.client import KIND_ADMIN, KIND_DYNAMIC, KIND_METADATA_DOCUMENT
from app.oauth.registration import REGISTRATION_TOKEN_PREFIX, client_metadata
from app.oauth.tokens import REFRESH_PREFIX, seal_response
from app.security.passwords import hash_password
from app.security.secrets import Keyring, new_token
from app.services.clients import SECRET_PREFIX, new_client_id, redirect_hosts
from app.stores.users import normalize_username

BATCH = 10_000
DAY = 86_400
REFRESH_TTL = 30 * DAY  # OSTIARY_REFRESH_TOKEN_TTL's default
ACCESS_TTL = 600  # OSTIARY_ACCESS_TOKEN_TTL's default
AUDIT_SPAN = 400 * DAY  # the default retention is 365 days: the oldest ~9 % are the cleanup job's

DEFAULTS = {"users": 50_000, "clients": 100_000, "grants": 100_000, "refresh_tokens": 1_000_000, "audit": 1_000_000}


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)  # declarative types __table__ as any FromClause


USERS, CLIENTS, GRANTS, REFRESH, AUDIT = (_table(m) for m in (User, Client, Consent, RefreshToken, AuditEvent))
RESOURCES, RESOURCE_SCOPES = _table(Resource), _table(ResourceScope)
SCALE_TABLES = (USERS, CLIENTS, GRANTS, REFRESH, AUDIT, RESOURCES, RESOURCE_SCOPES)  # what seed() writes


# -- plumbing ------------------------------------------------------------------------------------


def keyring_for(url: str) -> tuple[Keyring, str]:
    """The server's keyring if this process can know it, else a random one; and where it came from."""
    keys = os.environ.get("OSTIARY_SECRET_KEYS", "")
    source = "OSTIARY_SECRET_KEYS"
    if not keys and url.startswith("sqlite:///"):
        key_file = url.removeprefix("sqlite:///").split("?", 1)[0] + ".secret-keys"
        if os.path.exists(key_file):
            with open(key_file) as fh:
                keys, source = fh.read(), key_file
    secrets_list = [k.strip().encode() for k in keys.replace("\n", ",").split(",") if k.strip()]
    if not secrets_list:
        return Keyring([secrets.token_bytes(32)]), "a random keyring (the server's is unknown here)"
    return Keyring(secrets_list), source


def check_complete(conn: Connection, table: Table, row: dict[str, Any]) -> None:
    """Every NOT NULL column of the real table (as migrated) that has no server default gets a
    value: a schema change the seed does not know about fails here, not halfway through."""
    generated = {c.name for c in table.primary_key.columns if isinstance(c.type, Integer) and len(table.primary_key.columns) == 1}
    missing = [
        col["name"]
        for col in inspect(conn).get_columns(table.name)
        if not col["nullable"] and col.get("default") is None and col["name"] not in generated and col["name"] not in row
    ]
    if missing:
        raise SystemExit(f"seed: {table.name}: no value for NOT NULL column(s) {', '.join(missing)}")


def schema_differences(url: str, tables: Iterable[Table]) -> tuple[list[str], list[str]]:
    """How these models and a migrated database (perhaps another version's) disagree: (what an
    INSERT of rows shaped for these models would fail on: a table or a model column the database
    lacks, a NOT NULL column without a default the models lack; what it would only leave NULL or
    to its default: the database's other columns the models lack). Both empty: the seed fits."""
    engine = make_engine(url)
    blocking: list[str] = []
    harmless: list[str] = []
    try:
        with engine.connect() as conn:
            found = inspect(conn)
            for table in tables:
                if not found.has_table(table.name):
                    blocking.append(f"{table.name}: no such table")
                    continue
                in_db = {col["name"]: col for col in found.get_columns(table.name)}
                blocking.extend(f"{table.name}.{c.name}: not in the database" for c in table.c if c.name not in in_db)
                for name, col in in_db.items():
                    if name not in table.c:
                        required = not col["nullable"] and col.get("default") is None
                        (blocking if required else harmless).append(f"{table.name}.{name}: not in these models")
    finally:
        engine.dispose()
    return blocking, harmless


def insert_batches(engine: Engine, table: Table, rows: Iterable[dict[str, Any]], total: int, *, quiet: bool = False) -> int:
    """INSERT rows in transactions of BATCH rows; print rows/s as it goes."""
    started = time.perf_counter()
    done = 0
    live = sys.stderr.isatty()
    for batch in _chunks(rows, BATCH):
        with engine.begin() as conn:
            if done == 0:
                check_complete(conn, table, batch[0])
            conn.execute(table.insert(), batch)
        done += len(batch)
        rate = done / max(time.perf_counter() - started, 1e-9)
        if not quiet and (live or done % (20 * BATCH) == 0) and done < total:
            end = "" if live else "\n"
            print(f"\r  {table.name}: {done:,}/{total:,} rows, {rate:,.0f} rows/s", end=end, file=sys.stderr, flush=True)
    if not quiet and done:
        elapsed = time.perf_counter() - started
        line = f"  {table.name}: {done:,} rows in {elapsed:.1f} s, {done / max(elapsed, 1e-9):,.0f} rows/s"
        print(("\r" if live else "") + line + (" " * 20 if live else ""), file=sys.stderr)
    return done


def _chunks(rows: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _next_id(engine: Engine, table: Table) -> int:
    with engine.connect() as conn:
        return int(conn.scalar(select(func.coalesce(func.max(table.c.id), 0))) or 0) + 1


def _fix_sequence(engine: Engine, table: Table) -> None:
    """Rows inserted with explicit ids leave PostgreSQL's sequence behind: move it past them, or
    the app's next INSERT collides with a seeded id."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        conn.execute(
            text("SELECT setval(pg_get_serial_sequence(:t, 'id'), (SELECT max(id) FROM " + table.name + "))"),  # noqa: S608 - a model's table name
            {"t": table.name},
        )


# -- first-time users (the firstlogin scenario) --------------------------------------------------


def user_row(username: str, password_hash: str, t: int, rng: random.Random | None = None) -> dict[str, Any]:
    """A user as app/services/users.py create_user writes one (no TOTP, no groups)."""
    created = t - (rng.randrange(0, 700 * DAY) if rng else 0)
    return {
        "id": str(uuid.uuid4()),
        "username": normalize_username(username),
        "password_hash": password_hash,
        "is_admin": False,
        "disabled_at": None,
        "created_at": created,
        "updated_at": created,
        "last_login_at": (created + rng.randrange(0, max(1, t - created))) if rng and rng.random() < 0.8 else None,
        "totp_secret_enc": None,
        "totp_enabled_at": None,
        "totp_last_step": None,
        "mfa_failures": 0,
        "mfa_retry_at": None,
        "locked_at": None,
        "groups": [],
    }


def insert_users(url: str, *, prefix: str, count: int, password: str, quiet: bool = True) -> int:
    """`count` users named prefix0, prefix1, ... with one password, hashed once (argon2 is
    slow on purpose) and the hash shared by every row."""
    engine = make_engine(url)
    try:
        password_hash = hash_password(password)
        t = int(time.time())
        rows = (user_row(f"{prefix}{n}", password_hash, t) for n in range(count))
        return insert_batches(engine, USERS, rows, count, quiet=quiet)
    finally:
        engine.dispose()


# -- a large, realistic database -----------------------------------------------------------------


@dataclass
class Counts:
    users: int
    clients: int
    grants: int
    refresh_tokens: int
    audit: int


@dataclass
class SeededClient:
    id: str
    name: str
    hosts: list[str]


def _resources(engine: Engine) -> list[tuple[int, str]]:
    """The MCP servers to attach grants to: those in the database, else one made here."""
    with engine.connect() as conn:
        found = [(int(r.id), str(r.uri)) for r in conn.execute(select(RESOURCES.c.id, RESOURCES.c.uri))]
    if found:
        return found
    t = int(time.time())
    with engine.begin() as conn:
        inserted = conn.execute(
            RESOURCES.insert().values(
                uri="http://127.0.0.1:9499/mcp", name="Seeded MCP server", token_ttl=None, created_at=t, updated_at=t
            )
        ).inserted_primary_key
        assert inserted is not None
        resource_id = int(inserted[0])
        conn.execute(
            RESOURCE_SCOPES.insert(),
            [
                {"resource_id": resource_id, "name": "mcp:read", "description": "Read", "is_default": True, "position": 0},
                {"resource_id": resource_id, "name": "mcp:write", "description": "Write", "is_default": False, "position": 1},
            ],
        )
    return [(int(resource_id), "http://127.0.0.1:9499/mcp")]


def _users(engine: Engine, n: int, tag: str, rng: random.Random, t: int) -> list[tuple[str, str]]:
    password_hash = hash_password(secrets.token_urlsafe(16))  # nobody signs in as these
    ids: list[tuple[str, str]] = []

    def rows() -> Iterator[dict[str, Any]]:
        for i in range(n):
            row = user_row(f"seed-{tag}-{i}", password_hash, t, rng)
            ids.append((row["id"], row["username"]))
            yield row

    insert_batches(engine, USERS, rows(), n)
    return ids


def _clients(engine: Engine, n: int, tag: str, rng: random.Random, t: int, keyring: Keyring) -> list[SeededClient]:
    """Mostly dynamically registered public clients (RFC 7591) with loopback redirects, as MCP
    clients register; some metadata-document clients and some an operator created."""
    seeded: list[SeededClient] = []
    common = {"grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"]}
    # The app's own validation (RFC 7591 §2 defaults filled in), once per kind of client.
    templates = {
        KIND_DYNAMIC: client_metadata({"redirect_uris": ["http://127.0.0.1:8080/callback"], **common}),
        KIND_METADATA_DOCUMENT: client_metadata({"redirect_uris": ["https://app.example/callback"], **common}),
        KIND_ADMIN: client_metadata(
            {
                "redirect_uris": ["https://internal.example/oauth/callback"],
                "token_endpoint_auth_method": "client_secret_basic",
                "application_type": "web",
                **common,
            }
        ),
    }

    def rows() -> Iterator[dict[str, Any]]:
        for i in range(n):
            roll = rng.random()
            name = f"Seeded app {tag}-{i}"
            if roll < 0.85:  # a native MCP client with a loopback redirect (RFC 8252 §7.3)
                kind, client_id = KIND_DYNAMIC, new_client_id()
                redirect = f"http://127.0.0.1:{rng.randrange(1024, 65535)}/callback"
            elif roll < 0.95:
                kind = KIND_METADATA_DOCUMENT
                client_id = f"https://app-{tag}-{i}.example/oauth/client-metadata.json"  # RFC 2606 name: never fetched
                redirect = f"https://app-{tag}-{i}.example/callback"
            else:
                kind, client_id = KIND_ADMIN, new_client_id()
                redirect = f"https://internal-{i}.example/oauth/callback"
            meta = {**templates[kind], "client_name": name, "redirect_uris": [redirect]}
            created = t - rng.randrange(0, 180 * DAY)
            recently_new = rng.random() < 0.01  # registered in the last hours, not used yet
            if recently_new:
                created = t - rng.randrange(0, 12 * 3600)
            seeded.append(SeededClient(client_id, name, redirect_hosts(meta["redirect_uris"])))
            yield {
                "id": client_id,
                "kind": kind,
                "name": name,
                "token_endpoint_auth_method": meta["token_endpoint_auth_method"],
                "secret_hash": keyring.hash(new_token(SECRET_PREFIX)) if kind == KIND_ADMIN else None,
                "redirect_uris": meta["redirect_uris"],
                "grant_types": meta["grant_types"],
                "response_types": meta.get("response_types") or ["code"],
                "scope": None,
                "application_type": meta.get("application_type") if meta.get("application_type") in ("web", "native") else None,
                "metadata": meta,
                "registration_token_hash": keyring.hash(new_token(REGISTRATION_TOKEN_PREFIX)) if kind == KIND_DYNAMIC else None,
                "metadata_expires_at": t + rng.randrange(300, DAY) if kind == KIND_METADATA_DOCUMENT else None,
                "created_at": created,
                "updated_at": created,
                # Used within the last month: pruning (never used for a day, or idle for 90
                # days) leaves them alone.
                "last_used_at": None if recently_new else t - rng.randrange(0, min(30 * DAY, t - created + 1)),
                "trusted": False,
                "resource_id": None,
                "introspect_any": False,
                "grant_resource_id": None,
                "jwks": None,
                "jwks_uri": None,
                "disabled_at": None,
            }

    insert_batches(engine, CLIENTS, rows(), n)
    return seeded


@dataclass
class SeededGrant:
    id: int
    user_id: str
    client_id: str
    resource_id: int
    scope: str


def _grants(
    engine: Engine,
    n: int,
    rng: random.Random,
    t: int,
    users: list[tuple[str, str]],
    clients: list[SeededClient],
    resources: list[tuple[int, str]],
) -> list[SeededGrant]:
    """Consents: unique (user, client, resource), with what the user saw (app/stores/consents.py)."""
    limit = len(users) * len(clients) * len(resources)
    if n > limit:
        raise SystemExit(f"seed: {n:,} grants need more users or clients (at most {limit:,} distinct triples)")
    first = _next_id(engine, GRANTS)
    seen: set[tuple[int, int, int]] = set()
    seeded: list[SeededGrant] = []

    def rows() -> Iterator[dict[str, Any]]:
        while len(seeded) < n:
            key = (rng.randrange(len(users)), rng.randrange(len(clients)), rng.randrange(len(resources)))
            if key in seen:
                continue
            seen.add(key)
            (user_id, _), client, (resource_id, _) = users[key[0]], clients[key[1]], resources[key[2]]
            scope = "mcp:read mcp:write" if rng.random() < 0.3 else "mcp:read"  # space-separated, sorted
            created = t - rng.randrange(0, 120 * DAY)
            grant = SeededGrant(first + len(seeded), user_id, client.id, resource_id, scope)
            seeded.append(grant)
            yield {
                "id": grant.id,
                "user_id": user_id,
                "client_id": client.id,
                "resource_id": resource_id,
                "scope": scope,
                "created_at": created,
                "updated_at": created,
                "last_used_at": t - rng.randrange(0, min(30 * DAY, t - created + 1)),
                "last_request_id": f"{rng.getrandbits(64):016x}",
                "client_name": client.name,
                "redirect_hosts": client.hosts,
            }

    insert_batches(engine, GRANTS, rows(), n)
    _fix_sequence(engine, GRANTS)
    return seeded


REVOKE_REASONS = ("reuse", "self", "revoked", "user_disabled", "password_changed", "client_deleted")
GRACE = 30  # OSTIARY_REFRESH_GRACE_PERIOD's default


def _refresh_tokens(engine: Engine, n: int, rng: random.Random, t: int, grants: list[SeededGrant], keyring: Keyring) -> None:
    """Rotation families as app/oauth/tokens.py new_refresh_token writes them: each rotation a
    new row whose parent is the used one (used_at = the successor's created_at); the newest of
    a family unused. About 10 % of the families expired, 3 % revoked (every member, as
    app/stores/tokens.py revoke does), 1 % rotated within the grace window, whose used parent
    still holds the sealed successor (RFC 6749 §10.4 rotation with a retry window)."""
    next_id = _next_id(engine, REFRESH)
    sample_body = {"access_token": "-", "token_type": "Bearer", "expires_in": ACCESS_TTL, "refresh_token": "-"}

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal next_id
        made = 0
        while made < n:
            grant = grants[rng.randrange(len(grants))]
            length = min(n - made, 1 + min(int(rng.expovariate(0.5)), 11))
            expired = rng.random() < 0.10
            revoked = not expired and rng.random() < 0.03
            step = rng.randrange(600, 6 * 3600)  # time between two rotations
            if expired:  # the newest member expired between now and 60 days ago
                last_created = t - REFRESH_TTL - rng.randrange(1, 60 * DAY)
            elif rng.random() < 0.01:
                last_created = t - rng.randrange(0, GRACE)
            else:
                last_created = t - rng.randrange(GRACE, REFRESH_TTL - DAY)
            base = last_created - step * (length - 1)
            revoked_at = min(t, last_created + rng.randrange(1, step + 1)) if revoked else None
            reason = rng.choice(REVOKE_REASONS) if revoked else None
            auth_time = base - rng.randrange(0, 3600)
            family = str(uuid.uuid4())
            jkt = secrets.token_urlsafe(32) if rng.random() < 0.05 else None  # a DPoP-bound public client (RFC 9449 §5)
            parent: int | None = None
            for i in range(length):
                created = base + i * step
                used_at = None if i == length - 1 else created + step
                in_grace = used_at is not None and t - used_at < GRACE and revoked_at is None
                yield {
                    "id": next_id,
                    "token_hash": keyring.hash(new_token(REFRESH_PREFIX)),
                    "family_id": family,
                    "parent_id": parent,
                    "client_id": grant.client_id,
                    "user_id": grant.user_id,
                    "grant_id": grant.id,
                    "resource_id": grant.resource_id,
                    "scope": grant.scope,
                    "auth_time": auth_time,
                    "created_at": created,
                    "expires_at": created + REFRESH_TTL,
                    "used_at": used_at,
                    "successor_enc": seal_response(keyring, sample_body, created + step + ACCESS_TTL, next_id)
                    if in_grace
                    else None,
                    "revoked_at": revoked_at,
                    "revoked_reason": reason,
                    "access_jti": uuid.uuid4().hex,
                    "access_expires_at": created + ACCESS_TTL,
                    "jkt": jkt,
                }
                parent = next_id
                next_id += 1
                made += 1

    insert_batches(engine, REFRESH, rows(), n)
    _fix_sequence(engine, REFRESH)


# Relative frequencies of audit events on a busy server, with the details the app records.
EVENTS: list[tuple[str, float]] = [
    ("token.refreshed", 0.46),
    ("token.issued", 0.2),
    ("code.issued", 0.2),
    ("login.succeeded", 0.06),
    ("consent.granted", 0.03),
    ("client.registered", 0.02),
    ("login.failed", 0.015),
    ("token.revoked", 0.01),
    ("token.reuse_detected", 0.002),
    ("consent.revoked", 0.003),
]


def _audit(
    engine: Engine,
    n: int,
    rng: random.Random,
    t: int,
    users: list[tuple[str, str]],
    clients: list[SeededClient],
    resources: list[tuple[int, str]],
) -> None:
    names = [e for e, _ in EVENTS]
    weights = [w for _, w in EVENTS]

    def details(event: str) -> dict[str, Any]:
        if event == "token.issued":
            return {"grant_type": "authorization_code", "jti": uuid.uuid4().hex}
        if event == "token.refreshed":
            return {"jti": uuid.uuid4().hex}
        if event == "code.issued":
            return {"scope": "mcp:read"}
        if event == "consent.granted":
            return {"scope": "mcp:read", "grant_scope": "mcp:read", "client_changed": False}
        if event == "login.failed":
            return {"reason": "bad_credentials"}
        if event == "token.revoked":
            return {"kind": "refresh_token", "family": str(uuid.uuid4()), "access_tokens": 1}
        if event == "token.reuse_detected":
            return {"family": str(uuid.uuid4()), "revoked": 1}
        if event == "client.registered":
            return {"kind": KIND_DYNAMIC, "auth_method": "none", "redirect_hosts": ["127.0.0.1"]}
        return {}

    def rows() -> Iterator[dict[str, Any]]:
        for event in rng.choices(names, weights, k=n):
            user_id, username = users[rng.randrange(len(users))]
            client = clients[rng.randrange(len(clients))]
            with_client = not event.startswith("login.")
            yield {
                "at": t - rng.randrange(0, AUDIT_SPAN),
                "event": event,
                "user_id": None if event == "client.registered" else user_id,
                "username": username if event.startswith(("login.", "consent.")) else None,
                "actor_id": None,
                "client_id": client.id if with_client else None,
                "resource": resources[rng.randrange(len(resources))][1]
                if event.startswith(("token.", "code.", "consent."))
                else None,
                "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                "request_id": f"{rng.getrandbits(64):016x}",
                "details": details(event),
            }

    insert_batches(engine, AUDIT, rows(), n)


def check(counts: Counts) -> None:
    """Refuse counts whose rows would have nothing to refer to, before anything is written."""
    if counts.grants and not (counts.users and counts.clients):
        raise SystemExit("seed: grants need users and clients (--users, --clients)")
    if counts.refresh_tokens and not counts.grants:
        raise SystemExit("seed: refresh tokens need grants (--grants)")
    if counts.audit and not (counts.users and counts.clients):
        raise SystemExit("seed: audit events need users and clients (--users, --clients)")


def seed(url: str, counts: Counts, *, rng_seed: int | None = None) -> None:
    check(counts)
    keyring, source = keyring_for(url)
    rng = random.Random(rng_seed)  # noqa: S311 - seed data, not secrets
    tag = secrets.token_hex(3)
    t = int(time.time())
    engine = make_engine(url)
    print(f"seeding {_redact(url)} (tag {tag}; token hashes under {source})", file=sys.stderr)
    started = time.perf_counter()
    try:
        resources = _resources(engine)
        users = _users(engine, counts.users, tag, rng, t)
        clients = _clients(engine, counts.clients, tag, rng, t, keyring)
        grants = _grants(engine, counts.grants, rng, t, users, clients, resources)
        if counts.refresh_tokens:
            _refresh_tokens(engine, counts.refresh_tokens, rng, t, grants, keyring)
        if counts.audit:
            _audit(engine, counts.audit, rng, t, users, clients, resources)
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE"))  # fresh statistics, as autovacuum would make soon
    finally:
        engine.dispose()
    total = counts.users + counts.clients + counts.grants + counts.refresh_tokens + counts.audit
    elapsed = time.perf_counter() - started
    print(f"seeded {total:,} rows in {elapsed:.1f} s ({total / max(elapsed, 1e-9):,.0f} rows/s)", file=sys.stderr)


def _redact(url: str) -> str:
    """A database URL without its password, for printing."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    return f"{scheme}{sep}{credentials.partition(':')[0]}@{host}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="sqlite:///PATH or postgresql://... (already migrated)")
    for name, default in DEFAULTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, metavar="N", help=f"default {default:,}")
    parser.add_argument(
        "--scale-factor", type=float, default=1.0, metavar="F", help="multiply every count (0.01 for a quick try)"
    )
    parser.add_argument("--random-seed", type=int, default=None, metavar="N", help="repeatable choices (the values stay random)")
    return parser


def counts_from(args: argparse.Namespace) -> Counts:
    scaled: Callable[[int], int] = lambda n: max(0, round(n * args.scale_factor))  # noqa: E731
    return Counts(
        users=scaled(args.users),
        clients=scaled(args.clients),
        grants=scaled(args.grants),
        refresh_tokens=scaled(args.refresh_tokens),
        audit=scaled(args.audit),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    seed(args.database_url, counts_from(args), rng_seed=args.random_seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
