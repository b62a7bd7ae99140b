"""The `ostiary` command. Its forms are a contract: README, tests and operators rely on them.

Every command is a thin caller of app/services/ (the same operations the console runs).
Exit status: 0 success; 2 bad arguments or values, or an operation the service refuses (one
line saying why and where to find the usage, nothing written); 78 (EX_CONFIG) an invalid setting
or a server that cannot start as configured (a keyring that does not decrypt the stored keys, a
port in use); 1 any other failure. Every list command takes --json.
"""

from __future__ import annotations

import argparse
import errno
import getpass
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import uvicorn
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.infra import workers
from app.infra.db import make_engine, make_sessionmaker, transaction
from app.models import Client, User
from app.models.client import KIND_ADMIN
from app.models.key import ACTIVE
from app.oauth.redirect_uris import InvalidRedirectUri, validate_registered
from app.oauth.scopes import is_scope_token
from app.security.secrets import DecryptError, Keyring
from app.services import Refused, keys, mfa
from app.services import clients as client_service
from app.services import identities as identity_service
from app.services import resources as resource_service
from app.services import users as user_service
from app.settings import Settings, SettingsError, ensure_development_keyring, is_loopback_host, load_settings
from app.stores import cimd_hosts as hosts_store
from app.stores import clients as clients_store
from app.stores import identities as identity_store
from app.stores import keys as keys_store
from app.stores import resources as resources_store
from app.stores import schema
from app.stores import users as users_store

EX_USAGE = 2
EX_CONFIG = 78


class UsageError(Exception):
    """A bad value on the command line: say so in one line, point to --help, exit 2."""


class StartupError(Exception):
    """The server cannot start as configured (a port in use): one line, exit 78."""


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _fmt_time(ts: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


# -- setup shared by the commands --------------------------------------------------------------


def _nothing_there(settings: Settings) -> bool:
    """An SQLite database that does not exist yet: a command about existing data finds nothing
    (and must not create the file)."""
    return settings.sqlite_path is not None and not settings.sqlite_path.exists()


def _open(settings: Settings, *, migrate: bool = False) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and session factory on an up-to-date schema
    (docs/decisions.md#sqlite-migrates-itself-postgresql-on-request).

    SQLite (one process, no operator) migrates by itself; PostgreSQL is shared by replicas and
    upgraded on purpose, with `ostiary migrate` or `serve --migrate`.
    """
    engine = make_engine(settings.database_url.get_secret_value())
    if not schema.is_current(engine):
        if migrate or settings.is_sqlite:
            schema.upgrade(engine)
        else:
            raise SystemExit(
                f"ostiary: the database is at revision {schema.current(engine) or 'none'}, this version needs "
                f"{schema.head()}; run `ostiary migrate` (or `ostiary serve --migrate`)"
            )
    return engine, make_sessionmaker(engine)


def _refused(exc: Refused) -> UsageError:
    return UsageError(str(exc).rstrip("."))


# -- commands ----------------------------------------------------------------------------------


_APP = "app.main:create_app_from_env"  # the uvicorn factory every worker runs


def cmd_serve(args: argparse.Namespace) -> int:
    if args.port < 1 or args.port > 65535:
        raise UsageError("--port must be between 1 and 65535")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if "OSTIARY_ISSUER" not in os.environ and "OSTIARY_ISSUER_FILE" not in os.environ:
        host = args.host if is_loopback_host(args.host) else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        os.environ["OSTIARY_ISSUER"] = f"http://{host}:{args.port}"
    settings = load_settings()
    _check_port(args.host, args.port)
    settings = ensure_development_keyring(settings)  # the one place a keyring is made
    engine, factory = _open(settings, migrate=args.migrate)
    keyring = Keyring(settings.keyring())
    keys.ensure_keys(factory, settings, keyring)
    keys.check_keyring(factory, keyring)  # before "serving": a wrong keyring is a setting to fix
    with factory() as db:
        no_admin = not users_store.any_admin(db)
    engine.dispose()
    print(f"Ostiary {_version()} serving {settings.issuer} (listening on {args.host}:{args.port})", file=sys.stderr)
    if no_admin:
        print(
            "No admin yet: create one with\n  ostiary users create admin --admin --password-stdin\n"
            f"then sign in at {settings.issuer}/admin",
            file=sys.stderr,
        )
    options: dict[str, Any] = dict(
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level.lower(),
        # X-Forwarded-* are handled by app/http/edge.py, from OSTIARY_TRUSTED_PROXIES only; the
        # access log is ours (app/http/middleware.py), which logs route templates, not raw paths
        # (paths can carry one-time links).
        proxy_headers=False,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=20,
    )
    if args.workers > 1 and workers.can_share_port():
        # docs/decisions.md#workers-listen-on-their-own-sockets
        return workers.serve(uvicorn.Config(_APP, **options), args.workers)
    uvicorn.run(_APP, **options)
    return 0


def _check_port(host: str, port: int) -> None:
    """Say that the port is taken before saying "serving" (uvicorn would log a traceback-like
    error after it). Bound with SO_REUSEADDR as uvicorn binds, so a port in TIME_WAIT passes."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} on {host} is already in use: stop what listens there, or give another --port"
                ) from None
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def cmd_migrate(args: argparse.Namespace) -> int:
    # Migrating reads and writes no secret: it needs the database URL only.
    engine = make_engine(load_settings(keys=False).database_url.get_secret_value())
    before = schema.current(engine)
    schema.upgrade(engine)
    after = schema.current(engine)
    print(f"database at revision {after}" + (f" (was {before or 'empty'})" if before != after else " (up to date)"))
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise UsageError("the passwords do not match")
        return password
    raise UsageError("give --password-stdin and the password on standard input")


def cmd_users_create(args: argparse.Namespace) -> int:
    try:
        username = user_service.check_username(args.username)
        password = user_service.check_password(_read_password(args))
    except Refused as exc:
        raise _refused(exc) from None
    _, factory = _open(load_settings())
    with factory() as db:
        try:
            user = user_service.create_user(db, username=username, password=password, is_admin=args.admin, via="cli")
        except Refused as exc:
            raise _refused(exc) from None
        db.commit()
    print(f"created {'admin ' if args.admin else ''}user {user.username} ({user.id})")
    return 0


def cmd_users_list(args: argparse.Namespace) -> int:
    _, factory = _open(load_settings())
    with factory() as db:
        users = users_store.all_users(db)
        if args.json:
            _print_json(
                [
                    {
                        "username": u.username,
                        "id": u.id,
                        "admin": u.is_admin,
                        "disabled": u.disabled,
                        "locked": u.locked_at is not None,
                        "totp": u.mfa_enabled,
                        "groups": list(u.groups or []),
                        "created_at": u.created_at,
                        "last_login_at": u.last_login_at,
                    }
                    for u in users
                ]
            )
            return 0
        rows = [
            [
                u.username,
                "yes" if u.is_admin else "",
                "disabled" if u.disabled else "active",
                "yes" if u.totp_enabled_at else "",
                _fmt_time(u.created_at),
                _fmt_time(u.last_login_at),
                u.id,
            ]
            for u in users
        ]
    print(_table(rows, ["USERNAME", "ADMIN", "STATUS", "TOTP", "CREATED", "LAST SIGN-IN", "ID"]))
    return 0


@contextmanager
def _named_user(username: str) -> Iterator[tuple[Session, User]]:
    """A database session and the user named `username`, or a usage error."""
    settings = load_settings()
    if _nothing_there(settings):
        raise UsageError(f"no user named {username!r}")
    _, factory = _open(settings)
    with factory() as db:
        user = users_store.by_username(db, username)
        if user is None:
            raise UsageError(f"no user named {username!r}")
        yield db, user


def cmd_users_disable(args: argparse.Namespace) -> int:
    with _named_user(args.username) as (db, user):
        if user.disabled:
            print(f"user {user.username} is already disabled")
            return 0
        try:
            ended = user_service.set_disabled(db, user, True, via="cli")
        except Refused as exc:
            raise _refused(exc) from None
        db.commit()
    print(f"disabled user {user.username}; ended {ended} browser session(s)")
    return 0


def cmd_users_enable(args: argparse.Namespace) -> int:
    with _named_user(args.username) as (db, user):
        if not user.disabled:
            print(f"user {user.username} is not disabled")
            return 0
        user_service.set_disabled(db, user, False, via="cli")
        db.commit()
    print(f"enabled user {user.username}; their apps ask them to sign in again")
    return 0


def cmd_users_set_password(args: argparse.Namespace) -> int:
    """An operator's password reset (docs/decisions.md#credentials-change-tokens-end)."""
    try:
        password = user_service.check_password(_read_password(args))
    except Refused as exc:
        raise _refused(exc) from None
    with _named_user(args.username) as (db, user):
        ended = user_service.set_password(db, user, password, via="cli")
        db.commit()
    print(f"set the password of {user.username}; ended {ended} browser session(s) and revoked their apps' tokens")
    return 0


def cmd_users_reset_mfa(args: argparse.Namespace) -> int:
    with _named_user(args.username) as (db, user):
        if not mfa.reset(db, user, via="cli"):
            print(f"user {user.username} has no two-step verification: nothing to reset")
            return 0
        db.commit()
    print(f"reset two-step verification of {user.username}; they sign in with their password and may set it up again")
    return 0


def cmd_users_delete(args: argparse.Namespace) -> int:
    with _named_user(args.username) as (db, user):
        try:
            user_service.delete_user(db, user, via="cli")
        except Refused as exc:
            raise _refused(exc) from None
        db.commit()
    print(f"deleted user {user.username} with their sessions, consents and tokens")
    return 0


def cmd_users_unlock(args: argparse.Namespace) -> int:
    """Lift a lock after wrong second-factor codes
    (docs/decisions.md#wrong-totp-codes-lock-the-account-after-twenty-in-a-row)."""
    with _named_user(args.username) as (db, user):
        unlocked = user_service.unlock(db, user, via="cli")
        db.commit()
    print(f"user {user.username}: " + ("unlocked" if unlocked else "was not locked"))
    return 0


def _scope_arg(value: str, defaults: list[str]) -> resource_service.ScopeSpec:
    name, sep, description = value.partition("=")
    name = name.strip()
    if not sep or not is_scope_token(name) or not description.strip():
        raise UsageError(f'--scope takes "name=description" with a valid scope name, got {value!r}')
    return resource_service.ScopeSpec(name, description.strip(), is_default=name in defaults)


def _implies_args(values: list[str], names: list[str]) -> dict[str, tuple[str, ...]]:
    """--implies "name=other,other" (repeatable): what each scope includes
    (docs/decisions.md#scope-hierarchy); the service checks the names it includes."""
    implies: dict[str, tuple[str, ...]] = {}
    for value in values:
        name, sep, others = value.partition("=")
        name = name.strip()
        included = tuple(n for n in others.replace(",", " ").split() if n)
        if not sep or not name or not included:
            raise UsageError(f'--implies takes "name=other[,other...]", got {value!r}')
        if name not in names:
            raise UsageError(f"--implies {name!r} is not one of the --scope names")
        implies[name] = implies.get(name, ()) + included
    return implies


def cmd_resources_add(args: argparse.Namespace) -> int:
    defaults = args.default_scope or []
    scopes = [_scope_arg(s, defaults) for s in args.scope or []]
    for name in defaults:
        if name not in [s.name for s in scopes]:
            raise UsageError(f"--default-scope {name!r} is not one of the --scope names")
    implies = _implies_args(args.implies or [], [s.name for s in scopes])
    scopes = [replace(s, implies=implies.get(s.name, ())) for s in scopes]
    try:
        spec = resource_service.check(args.uri, args.name, args.token_ttl, scopes, as_typed=not args.canonical)
    except resource_service.NotCanonical as exc:
        # docs/decisions.md#the-command-line-does-not-rewrite-a-resource-uri-silently
        raise UsageError(
            f"{exc.typed} would be stored as {exc.canonical} ({', '.join(exc.changes)}), the audience of its tokens: "
            "give --canonical to accept that, or type that URI"
        ) from None
    except Refused as exc:
        raise _refused(exc) from None
    _, factory = _open(load_settings())
    with factory() as db:
        try:
            resource_service.create(db, spec, via="cli")
        except Refused as exc:
            raise _refused(exc) from None
        db.commit()
    print(f"added resource {spec.uri} ({spec.name}) with scopes {' '.join(s.name for s in scopes)}")
    return 0


def cmd_resources_list(args: argparse.Namespace) -> int:
    settings = load_settings()
    _, factory = _open(settings)
    with factory() as db:
        resources = resources_store.all_resources(db)
        if args.json:
            _print_json(
                [
                    {
                        "uri": r.uri,
                        "name": r.name,
                        "token_ttl": r.token_ttl or settings.access_token_ttl,
                        "scopes": [
                            {
                                "name": s.name,
                                "description": s.description,
                                "default": s.is_default,
                                "groups": s.allowed_groups,
                                "implies": list(s.implies or []),
                            }
                            for s in r.scopes
                        ],
                    }
                    for r in resources
                ]
            )
            return 0
        rows = [
            [
                r.uri,
                r.name,
                " ".join(
                    s.name + ("*" if s.is_default else "") + (">" + ",".join(s.implies) if s.implies else "") for s in r.scopes
                ),
                str(r.token_ttl or settings.access_token_ttl),
            ]
            for r in resources
        ]
    print(_table(rows, ["URI", "NAME", "SCOPES (* = default, >X,Y = includes X and Y)", "TOKEN TTL"]))
    return 0


def cmd_resources_remove(args: argparse.Namespace) -> int:
    settings = load_settings()
    if _nothing_there(settings):
        raise UsageError(f"no MCP server {args.uri!r} (see 'ostiary resources list')")
    _, factory = _open(settings)
    with factory() as db:
        resource = resource_service.find(db, args.uri)
        if resource is None:
            raise UsageError(f"no MCP server {args.uri!r} (see 'ostiary resources list')")
        uri = resource.uri
        try:
            revoked = resource_service.remove(db, resource, force=args.force, via="cli")
        except resource_service.InUse as exc:
            raise UsageError(
                f"{exc.consents} consent(s) to {uri} exist: give --force to revoke them, with every token issued for it"
            ) from None
        db.commit()
    print(f"removed MCP server {uri}" + (f"; revoked {revoked} consent(s) and their tokens" if revoked else ""))
    print("Running servers stop accepting it within a few seconds.", file=sys.stderr)
    return 0


def cmd_clients_add(args: argparse.Namespace) -> int:
    try:
        name = client_service.check_name(args.name)
    except Refused as exc:
        raise UsageError(f"--name: {str(exc).rstrip('.')}") from None
    if args.client_credentials:
        return _add_machine_client(args, name)
    if args.resource or args.scope or args.jwks_uri or args.jwks_file:
        raise UsageError("--resource, --scope, --jwks-uri and --jwks-file are for --client-credentials")
    if not args.redirect_uri and not (args.resource_server or args.introspect_any):
        raise UsageError("--redirect-uri is required (except for an MCP server's credentials)")
    if (args.resource_server or args.introspect_any) and not args.confidential:
        raise UsageError("--resource-server and --introspect-any need --confidential (introspection authenticates)")
    settings = load_settings()
    try:
        uris = [validate_registered(u, settings.native_app_schemes) for u in args.redirect_uri]
    except InvalidRedirectUri as exc:
        raise UsageError(f"--redirect-uri: {exc}") from None
    keyring = Keyring(settings.keyring())
    _, factory = _open(settings)
    with factory() as db:
        resource = resource_service.find(db, args.resource_server) if args.resource_server else None
        if args.resource_server and resource is None:
            raise UsageError(f"--resource-server: no MCP server {args.resource_server!r} (see 'ostiary resources list')")
        client, secret = client_service.create_admin_client(
            db,
            keyring,
            name=name,
            redirect_uris=uris,
            confidential=args.confidential,
            resource_id=resource.id if resource else None,
            introspect_any=args.introspect_any,
            via="cli",
        )
        db.commit()
    print(f"client_id: {client.id}")
    if secret:
        print(f"client_secret: {secret}")
        print("The secret is shown once; only its hash is stored.", file=sys.stderr)
    return 0


def _add_machine_client(args: argparse.Namespace, name: str) -> int:
    """`clients add --client-credentials`: a machine client of one MCP server."""
    if not args.resource or not args.scope:
        raise UsageError("--client-credentials needs --resource URI and at least one --scope")
    if args.redirect_uri or args.confidential or args.resource_server or args.introspect_any:
        raise UsageError("--client-credentials takes no --redirect-uri, --confidential, --resource-server or --introspect-any")
    if args.jwks_uri and args.jwks_file:
        raise UsageError("give --jwks-uri or --jwks-file, not both")
    jwks = None
    if args.jwks_file:
        try:
            jwks = json.loads(Path(args.jwks_file).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"--jwks-file: {exc}") from None
    settings = load_settings()
    keyring = Keyring(settings.keyring())
    _, factory = _open(settings)
    with factory() as db:
        resource = resource_service.find(db, args.resource)
        if resource is None:
            raise UsageError(f"--resource: no MCP server {args.resource!r} (see 'ostiary resources list')")
        try:
            client, secret = client_service.create_machine_client(
                db, keyring, name=name, resource=resource, scopes=args.scope, jwks=jwks, jwks_uri=args.jwks_uri, via="cli"
            )
        except Refused as exc:
            raise _refused(exc) from None
        db.commit()
    print(f"client_id: {client.id}")
    if secret:
        print(f"client_secret: {secret}")
        print("The secret is shown once; only its hash is stored.", file=sys.stderr)
    return 0


def cmd_clients_list(args: argparse.Namespace) -> int:
    _, factory = _open(load_settings())
    with factory() as db:
        clients = clients_store.all_clients(db)
    if args.json:
        _print_json(
            [
                {
                    "client_id": c.id,
                    "name": c.name,
                    "kind": c.kind,
                    "public": c.is_public,
                    "auth_method": c.token_endpoint_auth_method,
                    "grant_types": list(c.grant_types or []),
                    "redirect_uris": list(c.redirect_uris or []),
                    "trusted": c.trusted,
                    "disabled": c.disabled,
                    "created_at": c.created_at,
                    "last_used_at": c.last_used_at,
                }
                for c in clients
            ]
        )
        return 0
    rows = [
        [
            c.id,
            c.name,
            c.kind,
            "public" if c.is_public else "confidential",
            ", ".join(sorted({urlsplit(u).netloc or urlsplit(u).scheme + ":" for u in c.redirect_uris})),
            _fmt_time(c.created_at),
            _fmt_time(c.last_used_at),
            "disabled" if c.disabled else "active",
        ]
        for c in clients
    ]
    print(_table(rows, ["CLIENT_ID", "NAME", "KIND", "TYPE", "REDIRECT HOSTS", "CREATED", "LAST USED", "STATUS"]))
    return 0


def cmd_clients_prune(args: argparse.Namespace) -> int:
    settings = load_settings()
    _, factory = _open(settings)
    with factory() as db:
        pruned = client_service.prune(db, settings)
        db.commit()
    print(f"pruned {len(pruned)} client(s)" + ("".join(f"\n  {c}" for c in pruned)))
    return 0


def cmd_clients_trust(args: argparse.Namespace) -> int:
    _, factory = _open(load_settings())
    with factory() as db:
        client = clients_store.get(db, args.client_id)
        if client is None:
            raise UsageError(f"no client {args.client_id!r}")
        client_service.set_trusted(db, client, args.action == "trust", via="cli")
        db.commit()
    print(f"{args.client_id}: {'trusted' if args.action == 'trust' else 'not trusted'}")
    return 0


@contextmanager
def _client(client_id: str) -> Iterator[tuple[Session, Client]]:
    """A database session and the client `client_id`, or a usage error."""
    settings = load_settings()
    if _nothing_there(settings):
        raise UsageError(f"no client {client_id!r}")
    _, factory = _open(settings)
    with factory() as db:
        client = clients_store.get(db, client_id)
        if client is None:
            raise UsageError(f"no client {client_id!r} (see 'ostiary clients list')")
        yield db, client


def cmd_clients_remove(args: argparse.Namespace) -> int:
    with _client(args.client_id) as (db, client):
        client_service.delete_client(db, client, reason="operator", via="cli")
        db.commit()
    print(f"removed client {client.id} ({client.name}); everything issued to it is revoked")
    if client.kind != KIND_ADMIN:
        print("It can register or be fetched again; 'ostiary clients block' keeps it out.", file=sys.stderr)
    return 0


def cmd_clients_disable(args: argparse.Namespace) -> int:
    """docs/decisions.md#a-disabled-client-is-refused-until-enabled"""
    disable = args.action == "disable"
    with _client(args.client_id) as (db, client):
        changed = client_service.set_disabled(db, client, disable, via="cli")
        db.commit()
    print(f"{client.id}: {'disabled' if disable else 'enabled'}" + ("" if changed else " (already)"))
    return 0


def cmd_clients_block(args: argparse.Namespace) -> int:
    _, factory = _open(load_settings())
    with factory() as db:
        if args.action == "block":
            changed = client_service.block(db, args.client_id, reason=args.reason or "", via="cli")
        else:
            changed = client_service.unblock(db, args.client_id, via="cli")
        db.commit()
    state = "blocked" if args.action == "block" else "unblocked"
    print(f"{args.client_id}: {state}" + ("" if changed else " (already)"))
    return 0


def cmd_clients_blocked(args: argparse.Namespace) -> int:
    _, factory = _open(load_settings())
    with factory() as db:
        blocked = [(b.id, b.reason or "", b.created_at) for b in clients_store.blocked(db)]
    if args.json:
        _print_json([{"client_id": cid, "reason": reason, "since": at} for cid, reason, at in blocked])
        return 0
    print(_table([[cid, reason, _fmt_time(at)] for cid, reason, at in blocked], ["CLIENT_ID", "REASON", "SINCE"]))
    return 0


def cmd_clients_hosts_list(args: argparse.Namespace) -> int:
    """The trust policy for metadata-document client hosts: the settings' rules and the console's
    (docs/decisions.md#cimd-client-host-trust-policy)."""
    settings = load_settings()
    rules: list[dict[str, Any]] = [
        {"host": h, "rule": "allow", "source": "OSTIARY_CIMD_ALLOWED_CLIENT_HOSTS", "note": None, "since": None}
        for h in settings.cimd_allowed_client_hosts
    ]
    rules += [
        {"host": h, "rule": "deny", "source": "OSTIARY_CIMD_DENIED_CLIENT_HOSTS", "note": None, "since": None}
        for h in settings.cimd_denied_client_hosts
    ]
    _, factory = _open(settings)
    with factory() as db:
        rules += [
            {"host": r.host, "rule": r.rule, "source": "console", "note": r.note or None, "since": r.created_at}
            for r in hosts_store.all_rules(db)
        ]
    allow_list = any(r["rule"] == "allow" for r in rules)
    if args.json:
        _print_json(rules)
        return 0
    rows = [
        [
            r["host"],
            r["rule"],
            r["source"] + (": " + (r["note"] or "-") if r["source"] == "console" else ""),
            _fmt_time(r["since"]),
        ]
        for r in rules
    ]
    print(_table(rows, ["HOST", "RULE", "SOURCE", "SINCE"]))
    print("only hosts an allow rule matches are accepted" if allow_list else "every host is accepted but denied ones")
    return 0


def cmd_clients_hosts_add(args: argparse.Namespace) -> int:
    settings = load_settings()
    _, factory = _open(settings)
    with factory() as db:
        first_allow = args.rule == "allow" and not settings.cimd_allowed_client_hosts
        first_allow = first_allow and not any(r.rule == "allow" for r in hosts_store.all_rules(db))
        try:
            host = client_service.add_host_rule(db, args.host, args.rule, note=args.note or "", via="cli")
        except Refused as exc:
            raise _refused(exc) from None
        db.commit()
    print(f"{host}: {args.rule}")
    if first_allow:
        print("This is the first allow rule: apps on hosts no allow rule matches are refused now.", file=sys.stderr)
    print("Running servers apply it within a few seconds.", file=sys.stderr)
    return 0


def cmd_clients_hosts_remove(args: argparse.Namespace) -> int:
    _, factory = _open(load_settings())
    with factory() as db:
        rule = client_service.remove_host_rule(db, args.host, via="cli")
        if rule is None:
            raise UsageError(f"no console rule for {args.host!r} (rules from settings change with the settings)")
        db.commit()
    print(f"{args.host}: {rule} rule removed")
    return 0


def cmd_idps_add(args: argparse.Namespace) -> int:
    secret = None
    if args.client_secret_file:
        try:
            secret = Path(args.client_secret_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--client-secret-file: {exc}") from None
    settings = load_settings()
    keyring = Keyring(settings.keyring())
    _, factory = _open(settings)
    with factory() as db:
        try:
            provider = identity_service.add_provider(
                db,
                keyring,
                name=args.name,
                issuer=args.issuer,
                client_id=args.client_id,
                client_secret=secret,
                scopes=args.scope or None,
                groups_claim=args.groups_claim,
                allowed_domains=args.allowed_domain,
                id_jag=args.id_jag,
                via="cli",
            )
        except Refused as exc:
            raise _refused(exc) from None
        db.commit()
    print(f"added identity provider {provider.name} ({provider.issuer})")
    print(f"redirect_uri: {settings.issuer}/login/{provider.name}/callback")
    return 0


def cmd_idps_list(args: argparse.Namespace) -> int:
    settings = load_settings()
    _, factory = _open(settings)
    with factory() as db:
        providers = [
            {
                "name": p.name,
                "issuer": p.issuer,
                "redirect_uri": f"{settings.issuer}/login/{p.name}/callback",
                "sign_in": p.client_id is not None,
                "id_jag": p.id_jag,
                "enabled": p.enabled,
            }
            for p in identity_store.all_providers(db)
        ]
    if args.json:
        print(json.dumps(providers, indent=2))
        return 0
    rows = [
        [str(p["name"]), str(p["issuer"]), "yes" if p["sign_in"] else "no", "yes" if p["id_jag"] else "no"] for p in providers
    ]
    print(_table(rows, ["NAME", "ISSUER", "SIGN-IN", "ID-JAG"]))
    return 0


def cmd_idps_remove(args: argparse.Namespace) -> int:
    _, factory = _open(load_settings())
    with factory() as db:
        if not identity_service.remove_provider(db, args.name, via="cli"):
            raise UsageError(f"no identity provider named {args.name!r}")
        db.commit()
    print(f"removed identity provider {args.name}")
    return 0


def cmd_clients_initial_token(args: argparse.Namespace) -> int:
    if args.expires_in < 60 or args.expires_in > 365 * 24 * 3600:
        raise UsageError("--expires-in must be between 60 seconds and one year")
    if args.uses < 1 or args.uses > 100000:
        raise UsageError("--uses must be between 1 and 100000")
    settings = load_settings()
    keyring = Keyring(settings.keyring())
    _, factory = _open(settings)
    with factory() as db:
        token = client_service.create_initial_token(
            db, keyring, expires_in=args.expires_in, uses=args.uses, note=args.note, via="cli"
        )
        db.commit()
    print(token)
    print(
        f"An initial access token for {args.uses} registration(s) within {args.expires_in} s "
        "(RFC 7591 §3: send it as 'Authorization: Bearer ...' to the registration endpoint). Shown once.",
        file=sys.stderr,
    )
    if settings.registration != "token":
        print("Note: OSTIARY_REGISTRATION is not 'token', so registration does not ask for it.", file=sys.stderr)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    settings = load_settings()
    _, factory = _open(settings)
    with factory() as db:
        found = keys_store.all_keys(db)
        active = keys_store.by_state(db, ACTIVE)
        if args.json:
            _print_json(
                [
                    {
                        "kid": k.kid,
                        "alg": k.alg,
                        "state": k.state,
                        "created_at": k.created_at,
                        "activated_at": k.activated_at,
                        "retired_at": k.retired_at,
                    }
                    for k in found
                ]
            )
            return 0
        rows = [
            [k.kid, k.alg, k.state, _fmt_time(k.created_at), _fmt_time(k.activated_at), _fmt_time(k.retired_at)] for k in found
        ]
    print(_table(rows, ["KID", "ALG", "STATE", "CREATED", "ACTIVATED", "RETIRED"]))
    if active and active[0].activated_at:
        print(f"next scheduled rotation: {_fmt_time(active[0].activated_at + settings.key_rotation_period)}")
    if not rows:
        print("no keys yet: they are created when the server first starts (or by `ostiary keys rotate`)")
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    settings = load_settings()
    keyring = Keyring(settings.keyring())
    _, factory = _open(settings)
    keys.ensure_keys(factory, settings, keyring)
    try:
        with transaction(factory) as db:
            kid = keys.rotate(db, settings, keyring, force=args.force).kid
    except keys.RotationRefused as exc:
        print(f"ostiary: not rotated: {exc}", file=sys.stderr)
        return 1
    print(f"rotated: {kid} now signs; a new next key is published")
    return 0


def _version() -> str:
    try:
        return version("ostiary")
    except PackageNotFoundError:
        return "dev"


# -- argument parsing --------------------------------------------------------------------------


class BadArguments(Exception):
    """argparse refused the command line (raised instead of printing the whole usage block)."""

    def __init__(self, parser: argparse.ArgumentParser, message: str):
        super().__init__(message)
        self.parser, self.message = parser, message


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help says its default, when it has one worth saying."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "%(default)" not in text and action.option_strings and default not in (None, False, [], argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `error()` raises, and main() prints the message and where
    to find the usage, not the whole usage block."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise BadArguments(self, message)


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON array instead of a table (times in epoch seconds)")


def build_parser() -> Parser:
    parser = Parser(prog="ostiary", description="Ostiary, an OAuth 2.1 authorization server for MCP.")
    parser.add_argument("--version", action="version", version=f"ostiary {_version()}", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the server")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=8000, help="the port to listen on")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="worker processes")
    p.add_argument("--migrate", action="store_true", help="apply pending migrations first (PostgreSQL; SQLite always does)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="apply database migrations")
    p.set_defaults(func=cmd_migrate)

    users = sub.add_parser("users", help="manage users").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = users.add_parser("create", help="create a user")
    p.add_argument("username", metavar="USERNAME", help="compared case-insensitively")
    p.add_argument("--admin", action="store_true", help="may use the admin console")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input (else asked at the terminal)"
    )
    p.set_defaults(func=cmd_users_create)
    p = users.add_parser("list", help="list users")
    _json_flag(p)
    p.set_defaults(func=cmd_users_list)
    p = users.add_parser("disable", help="disable a user, end their sessions and revoke their tokens for good")
    p.add_argument("username", metavar="USERNAME", help="the user")
    p.set_defaults(func=cmd_users_disable)
    p = users.add_parser("enable", help="enable a disabled user (their apps ask them to sign in again)")
    p.add_argument("username", metavar="USERNAME", help="the user")
    p.set_defaults(func=cmd_users_enable)
    p = users.add_parser("set-password", help="set a user's password; ends their sessions and revokes their tokens")
    p.add_argument("username", metavar="USERNAME", help="the user")
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input (else asked at the terminal)"
    )
    p.set_defaults(func=cmd_users_set_password)
    p = users.add_parser("reset-mfa", help="turn off a user's two-step verification (a lost device)")
    p.add_argument("username", metavar="USERNAME", help="the user")
    p.set_defaults(func=cmd_users_reset_mfa)
    p = users.add_parser("delete", help="delete a user with their sessions, consents and tokens (never the last admin)")
    p.add_argument("username", metavar="USERNAME", help="the user")
    p.set_defaults(func=cmd_users_delete)
    p = users.add_parser("unlock", help="lift the lock after too many wrong two-step verification codes")
    p.add_argument("username", metavar="USERNAME", help="the user")
    p.set_defaults(func=cmd_users_unlock)

    resources = sub.add_parser("resources", help="manage MCP servers (resources)").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = resources.add_parser("add", help="register an MCP server")
    p.add_argument("uri", metavar="URI", help="its canonical URI, the audience (aud) of its tokens (RFC 8707)")
    p.add_argument("--name", required=True, help="shown on the consent page")
    p.add_argument("--scope", action="append", metavar="NAME=DESCRIPTION", help="a scope and its description; repeatable")
    p.add_argument("--default-scope", action="append", metavar="NAME", help="granted when a client asks for none; repeatable")
    p.add_argument(
        "--implies",
        action="append",
        metavar="NAME=OTHER,...",
        help="the scope includes these other scopes (a consent to it covers them); repeatable",
    )
    p.add_argument(
        "--token-ttl", type=int, metavar="SECONDS", help="access-token lifetime, 30 to 3600 (default: OSTIARY_ACCESS_TOKEN_TTL)"
    )
    p.add_argument(
        "--canonical",
        action="store_true",
        help="store the URI in canonical form (lower-case host, no default port, no trailing slash) "
        "even if that changes what you typed",
    )
    p.set_defaults(func=cmd_resources_add)
    p = resources.add_parser("list", help="list MCP servers")
    _json_flag(p)
    p.set_defaults(func=cmd_resources_list)
    p = resources.add_parser("remove", help="remove an MCP server")
    p.add_argument("uri", metavar="URI", help="its URI (compared in canonical form)")
    p.add_argument("--force", action="store_true", help="also when users consented to it: revoke their consents and tokens")
    p.set_defaults(func=cmd_resources_remove)

    clients = sub.add_parser("clients", help="manage clients").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = clients.add_parser("add", help="register a client")
    p.add_argument("--name", required=True, help="shown on the consent page")
    p.add_argument(
        "--redirect-uri",
        action="append",
        default=[],
        metavar="URI",
        help="where its authorization responses go; repeatable; not needed for an MCP server's credentials",
    )
    p.add_argument("--confidential", action="store_true", help="issue a client secret (else a public client)")
    p.add_argument(
        "--resource-server", metavar="URI", help="the MCP server whose credentials these are: it may introspect its tokens"
    )
    p.add_argument("--introspect-any", action="store_true", help="may introspect every token (RFC 7662 §4)")
    p.add_argument("--client-credentials", action="store_true", help="a machine client (client_credentials grant)")
    p.add_argument("--resource", metavar="URI", help="with --client-credentials: the MCP server it gets tokens for")
    p.add_argument(
        "--scope", action="append", default=[], metavar="SCOPE", help="with --client-credentials: an allowed scope; repeatable"
    )
    p.add_argument("--jwks-uri", metavar="URL", help="private_key_jwt: where its public keys are published")
    p.add_argument("--jwks-file", metavar="PATH", help="private_key_jwt: a JWK Set file of its public keys")
    p.set_defaults(func=cmd_clients_add)
    p = clients.add_parser("list", help="list clients")
    _json_flag(p)
    p.set_defaults(func=cmd_clients_list)
    p = clients.add_parser("remove", help="delete a client and revoke everything issued to it")
    p.add_argument("client_id", metavar="CLIENT_ID", help="the client")
    p.set_defaults(func=cmd_clients_remove)
    for action, text in (
        ("disable", "refuse a client at /authorize and /token until enabled (nothing is revoked)"),
        ("enable", "accept a disabled client again"),
    ):
        p = clients.add_parser(action, help=text)
        p.add_argument("client_id", metavar="CLIENT_ID", help="the client")
        p.set_defaults(func=cmd_clients_disable)
    clients.add_parser("prune", help="delete unused dynamically registered clients now").set_defaults(func=cmd_clients_prune)
    for action, text in (("trust", "let a self-registered client's errors redirect before sign-in"), ("untrust", "undo trust")):
        p = clients.add_parser(action, help=text)
        p.add_argument("client_id", metavar="CLIENT_ID", help="the client")
        p.set_defaults(func=cmd_clients_trust)
    p = clients.add_parser("block", help="refuse a client id or metadata-document URL (deletes the client)")
    p.add_argument("client_id", metavar="CLIENT_ID", help="a client id or a metadata-document URL")
    p.add_argument("--reason", metavar="TEXT", help="why, shown to operators")
    p.set_defaults(func=cmd_clients_block)
    p = clients.add_parser("unblock", help="lift a block")
    p.add_argument("client_id", metavar="CLIENT_ID", help="a blocked client id or URL")
    p.set_defaults(func=cmd_clients_block)
    p = clients.add_parser("blocked", help="list blocked client ids")
    _json_flag(p)
    p.set_defaults(func=cmd_clients_blocked)
    hosts = clients.add_parser("hosts", help="which hosts may publish metadata documents (allow and deny rules)").add_subparsers(
        dest="hosts_action", required=True, metavar="ACTION"
    )
    p = hosts.add_parser("list", help="list the rules from the settings and the console")
    _json_flag(p)
    p.set_defaults(func=cmd_clients_hosts_list)
    for rule, text in (
        ("allow", "accept apps from this host (once any allow rule exists, only those)"),
        ("deny", "refuse apps from this host"),
    ):
        p = hosts.add_parser(rule, help=text)
        p.add_argument("host", metavar="HOST", help="example.com, or *.example.com for its subdomains")
        p.add_argument("--note", metavar="TEXT", help="why, shown to operators")
        p.set_defaults(func=cmd_clients_hosts_add, rule=rule)
    p = hosts.add_parser("remove", help="remove a console rule")
    p.add_argument("host", metavar="HOST", help="the rule's host pattern")
    p.set_defaults(func=cmd_clients_hosts_remove)
    p = clients.add_parser("initial-token", help="create an initial access token for registration (RFC 7591)")
    p.add_argument(
        "--expires-in",
        type=int,
        default=7 * 24 * 3600,
        metavar="SECONDS",
        help="how long it is valid (default: %(default)s, 7 days)",
    )
    p.add_argument("--uses", type=int, default=1, metavar="N", help="how many registrations it allows")
    p.add_argument("--note", metavar="TEXT", help="what it is for (shown to operators)")
    p.set_defaults(func=cmd_clients_initial_token)

    idps = sub.add_parser("idps", help="manage organisations' identity providers").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = idps.add_parser("add", help="add an OpenID Connect provider (sign-in and/or trusted ID-JAG issuer)")
    p.add_argument("name", metavar="NAME", help="a short name, used in its callback URL")
    p.add_argument("--issuer", required=True, metavar="URL", help="its issuer (OpenID Connect Discovery)")
    p.add_argument("--client-id", metavar="ID", help="Ostiary's client id at the provider (sign-in)")
    p.add_argument("--client-secret-file", metavar="PATH", help="a file holding Ostiary's client secret there")
    p.add_argument(
        "--scope",
        action="append",
        default=[],
        metavar="S",
        help="scopes to ask the provider for; repeatable (default: openid profile email)",
    )
    p.add_argument("--groups-claim", metavar="CLAIM", help="the claim whose values become the user's groups")
    p.add_argument(
        "--allowed-domain", action="append", default=[], metavar="DOMAIN", help="email domains it may vouch for; repeatable"
    )
    p.add_argument("--id-jag", action="store_true", help="trust the ID-JAGs it issues (enterprise-managed authorization)")
    p.set_defaults(func=cmd_idps_add)
    p = idps.add_parser("list", help="list identity providers")
    _json_flag(p)
    p.set_defaults(func=cmd_idps_list)
    p = idps.add_parser("remove", help="remove an identity provider (trust ends at once)")
    p.add_argument("name", metavar="NAME", help="the provider")
    p.set_defaults(func=cmd_idps_remove)

    keys = sub.add_parser("keys", help="manage signing keys").add_subparsers(dest="action", required=True, metavar="ACTION")
    p = keys.add_parser("list", help="list signing keys")
    _json_flag(p)
    p.set_defaults(func=cmd_keys_list)
    p = keys.add_parser("rotate", help="promote the next key, retire the active one")
    p.add_argument("--force", action="store_true", help="rotate even if the next key was published too recently")
    p.set_defaults(func=cmd_keys_rotate)
    return parser


def _subparser_for(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser:
    """The most specific parser for argv, so that an error names the command it is about."""
    current = parser
    for word in argv:
        actions = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or word not in actions[0].choices:
            continue
        current = actions[0].choices[word]
    return current


def _usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """One line saying what is wrong, one saying where the usage is (not the whole usage block)."""
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    print(f"Run '{parser.prog} --help' for its usage.", file=sys.stderr)
    return EX_USAGE


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except BadArguments as exc:
        # Unrecognised arguments are reported by the top parser: name the command they follow.
        return _usage_error(_subparser_for(parser, argv) if exc.parser is parser else exc.parser, exc.message)
    try:
        return args.func(args) or 0
    except UsageError as exc:
        return _usage_error(_subparser_for(parser, argv), str(exc))
    except SettingsError as exc:
        print(f"ostiary: invalid setting {exc.name}: {exc.message}", file=sys.stderr)
        return EX_CONFIG
    except DecryptError:
        print(f"ostiary: invalid setting OSTIARY_SECRET_KEYS: {keys.keyring_mismatch()}", file=sys.stderr)
        return EX_CONFIG
    except StartupError as exc:
        print(f"ostiary: {exc}", file=sys.stderr)
        return EX_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
