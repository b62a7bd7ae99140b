"""Clients: registering them (an operator's, a dynamic registration's, a metadata document's),
updating, deleting with everything issued to them, pruning unused ones, and initial access
tokens for registration. Every client row is filled from its metadata in one place
(`apply_metadata`).
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import Client, InitialAccessToken, Resource
from app.models.client import KIND_ADMIN, KIND_DYNAMIC, KIND_METADATA_DOCUMENT
from app.security.secrets import Keyring, new_token
from app.security.text import invisible_character
from app.services import Refused, audit
from app.settings import Settings, host_pattern
from app.stores import cimd_hosts as hosts_store
from app.stores import clients as store
from app.stores import tokens as tokens_store

SECRET_PREFIX = "ostcs_"
INITIAL_TOKEN_PREFIX = "ostiat_"
MAX_NAME = 200


def new_client_id() -> str:
    """144 random bits, URL-safe, never starting with '-' or '_' (a leading '-' reads as an
    option on a command line: `ostiary clients trust -x...`)."""
    while True:
        value = secrets.token_urlsafe(18)
        if value[0].isalnum():
            return value


def new_secret() -> str:
    return new_token(SECRET_PREFIX)


def redirect_hosts(uris: list[str]) -> list[str]:
    """The hosts (or private-use schemes) of redirect URIs, for audit events and pages."""
    return sorted({urlsplit(u).netloc or urlsplit(u).scheme for u in uris})


def apply_metadata(row: Client, meta: dict[str, Any]) -> Client:
    """Fill a client row from validated metadata (RFC 7591 §2): the columns the protocol reads,
    and the whole document for display and RFC 7592 reads."""
    row.name = (meta.get("client_name") or "Unnamed app")[:MAX_NAME]
    row.token_endpoint_auth_method = meta["token_endpoint_auth_method"]
    row.redirect_uris = meta["redirect_uris"]
    row.grant_types = meta["grant_types"]
    row.response_types = meta.get("response_types") or ["code"]
    row.scope = meta.get("scope") if isinstance(meta.get("scope"), str) else None
    row.application_type = meta.get("application_type") if meta.get("application_type") in ("web", "native") else None
    row.client_metadata = meta
    if row.token_endpoint_auth_method == "private_key_jwt":  # a metadata document's keys
        row.jwks = meta.get("jwks") if isinstance(meta.get("jwks"), dict) else None
        row.jwks_uri = meta.get("jwks_uri") if isinstance(meta.get("jwks_uri"), str) else None
    return row


def create_admin_client(
    db: Session,
    keyring: Keyring,
    *,
    name: str,
    redirect_uris: list[str],
    confidential: bool,
    resource_id: int | None = None,
    introspect_any: bool = False,
    actor_id: str | None = None,
    via: str = "cli",
) -> tuple[Client, str | None]:
    """A client registered by an operator. Returns it and, if confidential, its secret (once).
    `resource_id`: the MCP server whose credentials it is (it may introspect that server's
    tokens); `introspect_any`: it may introspect every token
    (docs/decisions.md#introspection-is-for-the-tokens-mcp-server)."""
    secret = new_secret() if confidential else None
    meta = {
        "client_name": name,
        "redirect_uris": redirect_uris,
        "token_endpoint_auth_method": "client_secret_basic" if confidential else "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "application_type": "web" if confidential else "native",
    }
    row = Client(
        id=new_client_id(),
        kind=KIND_ADMIN,
        secret_hash=keyring.hash(secret) if secret else None,
        resource_id=resource_id,
        introspect_any=introspect_any,
    )
    client = store.add(db, apply_metadata(row, meta))
    audit.record(
        db,
        "client.created",
        client_id=client.id,
        actor_id=actor_id,
        via=via,
        kind=KIND_ADMIN,
        confidential=confidential,
        resource_id=resource_id,
        introspect_any=introspect_any,
    )
    return client, secret


def create_machine_client(
    db: Session,
    keyring: Keyring,
    *,
    name: str,
    resource: Resource,
    scopes: list[str],
    jwks: dict[str, Any] | None = None,
    jwks_uri: str | None = None,
    actor_id: str | None = None,
    via: str = "cli",
) -> tuple[Client, str | None]:
    """A machine client (client_credentials) for one MCP server and these of its scopes. With
    keys (`jwks` or `jwks_uri`) it authenticates with private_key_jwt; otherwise it gets a
    secret, returned once."""
    unknown = [s for s in scopes if s not in {sc.name for sc in resource.scopes}]
    if unknown:
        raise Refused(f"{resource.uri} has no scope {', '.join(unknown)}")
    if jwks is not None and jwks_uri is not None:
        raise Refused("give keys inline or by URL, not both")
    if jwks is not None:
        check_jwks(jwks)
    if jwks_uri is not None and not jwks_uri.startswith("https://"):
        raise Refused("the jwks_uri must be an https URL")
    keyed = jwks is not None or jwks_uri is not None
    secret = None if keyed else new_secret()
    meta = {
        "client_name": name,
        "redirect_uris": [],
        "token_endpoint_auth_method": "private_key_jwt" if keyed else "client_secret_basic",
        "grant_types": ["client_credentials"],
        "response_types": [],
        "scope": " ".join(scopes),
        **({"jwks": jwks} if jwks is not None else {}),
        **({"jwks_uri": jwks_uri} if jwks_uri is not None else {}),
    }
    row = Client(
        id=new_client_id(),
        kind=KIND_ADMIN,
        secret_hash=keyring.hash(secret) if secret else None,
        grant_resource_id=resource.id,
        jwks=jwks,
        jwks_uri=jwks_uri,
    )
    client = store.add(db, apply_metadata(row, meta))
    client.response_types = []
    audit.record(
        db,
        "client.created",
        client_id=client.id,
        actor_id=actor_id,
        via=via,
        kind=KIND_ADMIN,
        grant_type="client_credentials",
        resource=resource.uri,
        scope=client.scope,
        auth_method=client.token_endpoint_auth_method,
    )
    return client, secret


def check_jwks(jwks: Any) -> None:
    """A JWK Set of public keys (RFC 7517 §5) for private_key_jwt."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) and k.get("kty") for k in keys):
        raise Refused('the keys must be a JWK Set: {"keys": [...]} with at least one key')
    if any(k.get("kty") == "oct" or "d" in k for k in keys):
        raise Refused("the JWK Set must hold public keys only (no private or symmetric keys)")


def register(
    db: Session,
    keyring: Keyring,
    meta: dict[str, Any],
    *,
    client_id: str,
    issued_at: int,
    secret: str | None,
    registration_token_hash: str | None = None,
) -> Client:
    """A dynamically registered client (RFC 7591 §3.2.1), with the hash of its RFC 7592
    registration access token."""
    row = Client(id=client_id, kind=KIND_DYNAMIC, secret_hash=keyring.hash(secret) if secret else None, created_at=issued_at)
    row.registration_token_hash = registration_token_hash
    client = store.insert(db, apply_metadata(row, meta))
    audit.record(
        db,
        "client.registered",
        client_id=client.id,
        kind=KIND_DYNAMIC,
        client_name=client.name,
        auth_method=client.token_endpoint_auth_method,
        redirect_hosts=redirect_hosts(client.redirect_uris),
    )
    return client


def update_registration(db: Session, row: Client, meta: dict[str, Any]) -> Client:
    """RFC 7592 §2.2: the client replaces its metadata (its authentication method stays)."""
    apply_metadata(row, meta)
    audit.record(db, "client.updated", client_id=row.id, redirect_hosts=redirect_hosts(row.redirect_uris))
    return row


def cache_document(db: Session, client_id: str, meta: dict[str, Any], *, expires_at: int) -> Client:
    """Store a fetched Client ID Metadata Document as the client's row until `expires_at`,
    shared by every replica. Two replicas fetching the same new document at once both land."""
    row = store.get(db, client_id)
    first = row is None
    if row is None:
        try:
            with db.begin_nested():
                row = store.add(db, apply_metadata(Client(id=client_id, kind=KIND_METADATA_DOCUMENT, secret_hash=None), meta))
        except IntegrityError:  # another replica cached it at the same moment: update that row
            row = store.get(db, client_id)
            if row is None:  # ... and it was deleted again since: nothing to update, insert ours
                row = store.add(db, apply_metadata(Client(id=client_id, kind=KIND_METADATA_DOCUMENT, secret_hash=None), meta))
    apply_metadata(row, meta)
    row.metadata_expires_at = expires_at
    audit.record(db, "client.metadata_fetched", client_id=client_id, client_name=row.name, first=first)
    return row


def set_trusted(db: Session, row: Client, trusted: bool, *, actor_id: str | None = None, via: str = "cli") -> None:
    """An admin vouches for a self-registered client (or withdraws it): its authorization
    errors may then redirect before sign-in
    (docs/decisions.md#errors-of-self-registered-clients-stay-on-ostiary-until-sign-in)."""
    row.trusted = trusted
    audit.record(db, "client.trusted" if trusted else "client.untrusted", client_id=row.id, actor_id=actor_id, via=via)


def set_disabled(db: Session, row: Client, disabled: bool, *, actor_id: str | None = None, via: str = "cli") -> bool:
    """Disable a client (refused at /authorize and /token while disabled) or enable it again.
    Nothing is revoked or deleted: its refresh tokens work again once it is enabled
    (docs/decisions.md#a-disabled-client-is-refused-until-enabled). False if it already was."""
    if not store.set_disabled(db, row.id, now() if disabled else None):
        return False
    db.refresh(row)
    event = "client.disabled" if disabled else "client.enabled"
    audit.record(db, event, client_id=row.id, actor_id=actor_id, via=via, kind=row.kind, client_name=row.name)
    return True


def check_name(name: str) -> str:
    """A client name an operator typed: 1 to MAX_NAME characters, nothing invisible."""
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise Refused(f"The name must be 1 to {MAX_NAME} characters.")
    if invisible_character(name):
        raise Refused("The name must not contain control, format or separator characters.")
    return name


def edit(
    db: Session,
    row: Client,
    *,
    name: str,
    redirect_uris: list[str] | None = None,
    actor_id: str | None = None,
    via: str = "admin",
) -> bool:
    """An admin renames a client or, for a client an operator created, replaces its redirect
    URIs (already validated, app/oauth/redirect_uris.py). A metadata-document client is named by
    its document, which would overwrite the name at the next fetch, so it is refused; a
    self-registered client's redirect URIs are its own (RFC 7592). Users' consents name the
    client and its redirect hosts, so a change asks them again
    (docs/decisions.md#consent-is-bound-to-what-the-user-saw). False if nothing changed."""
    name = check_name(name)
    if row.kind == KIND_METADATA_DOCUMENT and name != row.name:
        raise Refused("This app's metadata document names it; the name would come back at the next fetch.")
    uris = list(row.redirect_uris or [])
    if redirect_uris is not None and redirect_uris != uris:
        if row.kind != KIND_ADMIN:
            raise Refused("Only the redirect URIs of a client an admin created can be changed here.")
        if "authorization_code" not in (row.grant_types or []):
            raise Refused("A machine client has no redirect URIs.")
        if not redirect_uris and row.resource_id is None and not row.introspect_any:
            raise Refused("Give at least one redirect URI.")
        uris = list(dict.fromkeys(redirect_uris))
    if (name, uris) == (row.name, list(row.redirect_uris or [])):
        return False
    before = {"name": row.name, "redirect_hosts": redirect_hosts(row.redirect_uris or [])}
    row.name, row.redirect_uris = name, uris
    row.client_metadata = {**(row.client_metadata or {}), "client_name": name, "redirect_uris": uris}
    db.flush()
    audit.record(
        db,
        "client.updated",
        client_id=row.id,
        actor_id=actor_id,
        via=via,
        client_name=row.name,
        redirect_hosts=redirect_hosts(uris),
        before=before,
    )
    return True


def delete_client(db: Session, row: Client, *, reason: str, actor_id: str | None = None, via: str | None = None) -> None:
    """Delete a client and revoke everything issued to it (its access tokens become inactive at
    introspection until they expire; its refresh tokens, codes and grants go with the row)."""
    tokens_store.revoke(db, at=now(), reason="client_deleted", client_id=row.id)
    store.remove(db, row.id)
    audit.record(
        db,
        "client.deleted",
        client_id=row.id,
        actor_id=actor_id,
        kind=row.kind,
        client_name=row.name,
        reason=reason,
        **({"via": via} if via else {}),
    )


def prune(db: Session, settings: Settings) -> list[str]:
    """Registration hygiene: delete dynamically registered clients, and cached metadata-document
    clients, never used within a day of appearing, and those idle for 90 days with no live
    refresh token (settings). A pruned metadata-document client is fetched again if it comes
    back."""
    t = now()
    doomed = [
        row
        for kind in (KIND_DYNAMIC, KIND_METADATA_DOCUMENT)
        for row in store.prunable(
            db,
            kind=kind,
            unused_before=t - settings.prune_unused_clients_after,
            idle_before=t - settings.prune_idle_clients_after,
            now_=t,
        )
    ]
    for row in doomed:
        delete_client(db, row, reason="never_used" if row.last_used_at is None else "idle")
    if doomed:
        audit.record(db, "client.pruned", count=len(doomed))
    return [row.id for row in doomed]


def block(db: Session, client_id: str, *, reason: str = "", actor_id: str | None = None, via: str = "cli") -> bool:
    """Refuse a client id from now on (above all a metadata-document URL, which would otherwise
    be fetched again): the client, if known, is deleted with everything issued to it. False if
    it was blocked already."""
    row = store.get(db, client_id)
    if row is not None:
        delete_client(db, row, reason="blocked", actor_id=actor_id)
    if not store.block(db, client_id, reason[:500], now()):
        return False
    audit.record(db, "client.blocked", client_id=client_id, actor_id=actor_id, via=via, reason=reason[:200] or None)
    return True


def unblock(db: Session, client_id: str, *, actor_id: str | None = None, via: str = "cli") -> bool:
    if not store.unblock(db, client_id):
        return False
    audit.record(db, "client.unblocked", client_id=client_id, actor_id=actor_id, via=via)
    return True


# -- the trust policy for metadata-document client hosts (docs/decisions.md#cimd-client-host-trust-policy)

HOST_RULES = ("allow", "deny")


def add_host_rule(db: Session, pattern: str, rule: str, *, note: str = "", actor_id: str | None = None, via: str = "cli") -> str:
    """An admin's rule for the hosts of metadata-document client_ids: `allow` or `deny` a host
    (`example.com`) or its subdomains (`*.example.com`). Returns the pattern as stored; refuses
    a bad pattern or a host that has a rule already."""
    if rule not in HOST_RULES:
        raise Refused("the rule must be allow or deny")
    try:
        host = host_pattern(pattern)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    note = note.strip()[:500]
    existing = hosts_store.get(db, host)
    if existing is not None or not hosts_store.add(db, host, rule, note, now()):
        current = existing or hosts_store.get(db, host)
        raise Refused(f"{host} has a rule already ({current.rule if current else 'just added'}): remove it first")
    audit.record(db, "client.host_rule_added", actor_id=actor_id, via=via, host=host, rule=rule, note=note[:200] or None)
    return host


def remove_host_rule(db: Session, pattern: str, *, actor_id: str | None = None, via: str = "cli") -> str | None:
    """Remove the console's rule for a host pattern; returns the rule it was, or None if there
    was none."""
    try:
        host = host_pattern(pattern)
    except ValueError:
        return None
    existing = hosts_store.get(db, host)
    rule = existing.rule if existing is not None else None
    if rule is None or not hosts_store.remove(db, host):
        return None
    audit.record(db, "client.host_rule_removed", actor_id=actor_id, via=via, host=host, rule=rule)
    return rule


def create_initial_token(db: Session, keyring: Keyring, *, expires_in: int, uses: int, note: str | None, via: str) -> str:
    """An initial access token for registration (RFC 7591 §3), shown once; only its HMAC is
    stored."""
    token = new_token(INITIAL_TOKEN_PREFIX)
    store.add_initial_token(
        db, InitialAccessToken(token_hash=keyring.hash(token), expires_at=now() + expires_in, uses_left=uses, note=note)
    )
    audit.record(db, "registration.initial_token_created", uses=uses, expires_in=expires_in, via=via)
    return token
