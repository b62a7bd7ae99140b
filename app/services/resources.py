"""MCP servers (RFC 8707 resources, RFC 9728 protected resources): validating what an operator
typed, creating, updating and removing them. The console and the `ostiary resources` commands
both come here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import Resource
from app.oauth.resource_indicators import InvalidResource, canonical_resource
from app.oauth.scopes import PROTOCOL_SCOPES, is_scope_token
from app.services import Refused, audit, consents
from app.settings import MAX_ACCESS_TOKEN_TTL
from app.stores import clients as clients_store
from app.stores import consents as consents_store
from app.stores import resources as store
from app.stores import tokens as tokens_store

MIN_TTL = 30
MAX_NAME = 200
MAX_DESCRIPTION = 500


@dataclass(frozen=True)
class ScopeSpec:
    name: str
    description: str
    is_default: bool = False
    allowed_groups: list[str] | None = None  # None: anyone may be granted it
    # Other scopes of the same MCP server this one includes (docs/decisions.md#scope-hierarchy).
    implies: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResourceSpec:
    uri: str  # canonical (RFC 8707 §2)
    name: str
    token_ttl: int | None  # None: OSTIARY_ACCESS_TOKEN_TTL
    scopes: list[ScopeSpec] = field(default_factory=list)


class NotCanonical(Refused):
    """The URI as typed is not the form it would be stored in, which is the `aud` of its tokens
    (docs/decisions.md#the-command-line-does-not-rewrite-a-resource-uri-silently)."""

    def __init__(self, typed: str, canonical: str):
        self.typed, self.canonical = typed, canonical
        self.changes = rewrites(typed, canonical)
        super().__init__(
            f"The URI would be stored as {canonical} ({', '.join(self.changes)}); that is the audience of its tokens, "
            "which the MCP server must accept."
        )


def rewrites(typed: str, canonical: str) -> list[str]:
    """What canonicalisation (RFC 8707 §2, app/oauth/resource_indicators.py) changed, in words."""
    before, after = urlsplit(typed), urlsplit(canonical)
    changes = []
    authority = before.netloc.rsplit("@", 1)[-1]
    host = authority[1 : authority.find("]")] if authority.startswith("[") else authority.split(":")[0]
    if before.scheme != after.scheme or host != before.hostname:
        changes.append("scheme and host in lower case")
    if before.port is not None and after.port is None:
        changes.append("the default port dropped")
    if before.path != after.path:
        changes.append("the trailing slash dropped")
    return changes or ["rewritten"]


def check(uri: str, name: str, token_ttl: int | None, scopes: list[ScopeSpec], *, as_typed: bool = False) -> ResourceSpec:
    """What to store, or Refused naming the first problem. `as_typed`: refuse a URI that
    canonicalisation would change (NotCanonical), instead of storing its canonical form."""
    try:
        canonical = canonical_resource(uri)  # RFC 8707 §2: absolute URI, no fragment
    except InvalidResource as exc:
        raise Refused(f"URI: {exc}.") from None
    if as_typed and canonical != uri:
        raise NotCanonical(uri, canonical)
    name = name.strip()
    if not name or len(name) > MAX_NAME:
        raise Refused(f"Give the MCP server a name of 1 to {MAX_NAME} characters (shown on the consent page).")
    if token_ttl is not None and not MIN_TTL <= token_ttl <= MAX_ACCESS_TOKEN_TTL:
        raise Refused(f"Token lifetime: a number of seconds from {MIN_TTL} to {MAX_ACCESS_TOKEN_TTL}, or empty for the default.")
    for scope in scopes:
        # RFC 6749 §3.3 scope-token; no wildcards (docs/decisions.md#unknown-and-wildcard-scopes-are-refused).
        if not is_scope_token(scope.name):
            raise Refused(f"Scope {scope.name[:60]!r}: not a valid scope name (no spaces, quotes, backslashes or *).")
        if scope.name in PROTOCOL_SCOPES:
            raise Refused(f"{scope.name} is a protocol scope; it is always available and cannot be declared.")
        if not scope.description.strip() or len(scope.description) > MAX_DESCRIPTION:
            raise Refused(f"Scope {scope.name}: describe it (the consent page shows the description).")
    names = [s.name for s in scopes]
    if not scopes:
        raise Refused("Declare at least one scope.")
    if len(set(names)) != len(names):
        raise Refused("Each scope name may appear once.")
    return ResourceSpec(canonical, name, token_ttl, [_check_implies(s, scopes) for s in scopes])


def _check_implies(scope: ScopeSpec, scopes: list[ScopeSpec]) -> ScopeSpec:
    """The scope with its implied scopes listed once each, or Refused: a scope may imply only
    other scopes of the same MCP server, and only ones at least as widely available, so that a
    hierarchy never carries a scope past its group limit
    (docs/decisions.md#scope-hierarchy). Cycles are allowed: two scopes that imply each other
    are equivalent."""
    by_name = {s.name: s for s in scopes}
    implies = tuple(dict.fromkeys(scope.implies))
    for name in implies:
        if name == scope.name:
            raise Refused(f"Scope {scope.name}: a scope cannot include itself.")
        implied = by_name.get(name)
        if implied is None:
            raise Refused(f"Scope {scope.name} includes {name[:60]!r}, which is not a scope of this MCP server.")
        if implied.allowed_groups is not None and not (
            scope.allowed_groups is not None and set(scope.allowed_groups) <= set(implied.allowed_groups)
        ):
            raise Refused(
                f"Scope {scope.name} includes {name}, which only some groups may be granted: "
                f"limit {scope.name} to those groups too (or to some of them)."
            )
    return replace(scope, implies=implies)


def find(db: Session, uri: str) -> Resource | None:
    """The MCP server registered under `uri`, compared in canonical form (RFC 8707 §2)."""
    try:
        return store.by_uri(db, canonical_resource(uri))
    except InvalidResource:
        return None


def create(db: Session, spec: ResourceSpec, *, actor_id: str | None = None, via: str) -> Resource:
    return _save(db, None, spec, actor_id=actor_id, via=via)


def update(db: Session, resource: Resource, spec: ResourceSpec, *, actor_id: str, via: str = "admin") -> Resource:
    return _save(db, resource, spec, actor_id=actor_id, via=via)


def _save(db: Session, resource: Resource | None, spec: ResourceSpec, *, actor_id: str | None, via: str) -> Resource:
    """Create (`resource` None) or update an MCP server and its scopes; its URI stays unique."""
    clash = store.by_uri(db, spec.uri)
    if clash is not None and (resource is None or clash.id != resource.id):
        raise Refused(f"Another MCP server already has the URI {spec.uri}.")
    previous_uri = resource.uri if resource is not None else None
    scopes = [
        {
            "name": s.name,
            "description": s.description.strip(),
            "is_default": s.is_default,
            "allowed_groups": s.allowed_groups,
            "implies": list(s.implies) or None,
        }
        for s in spec.scopes
    ]
    saved = store.save(db, resource or Resource(), uri=spec.uri, name=spec.name, token_ttl=spec.token_ttl, scopes=scopes)
    details: dict[str, Any] = {}
    if implies := {s.name: list(s.implies) for s in spec.scopes if s.implies}:
        details["implies"] = implies
    if previous_uri not in (None, saved.uri):
        details["previous_uri"] = previous_uri
    audit.record(
        db,
        "resource.created" if resource is None else "resource.updated",
        actor_id=actor_id,
        resource=saved.uri,
        via=via,
        name=saved.name,
        scopes=[s.name for s in spec.scopes],
        token_ttl=saved.token_ttl,
        **details,
    )
    return saved


@dataclass(frozen=True)
class Usage:
    """What removing an MCP server would end: consents (and the tokens issued under them) and
    the clients bound to it (its introspection credentials, machine clients for it)."""

    consents: int
    clients: int


def usage(db: Session, resource: Resource) -> Usage:
    return Usage(len(consents_store.ids_for(db, resource_id=resource.id)), clients_store.count_for_resource(db, resource.id))


class InUse(Refused):
    """Users have consented to the MCP server: removing it needs `force`."""

    def __init__(self, resource_uri: str, consents: int):
        self.consents = consents
        super().__init__(
            f"{consents} consent{'s' if consents != 1 else ''} to {resource_uri} exist; removing it revokes them "
            "with every token issued for it."
        )


def remove(db: Session, resource: Resource, *, force: bool = False, actor_id: str | None = None, via: str) -> int:
    """Remove an MCP server. While users have consented to it, refused unless `force`: then
    every consent is revoked first, with its refresh and access tokens, by the one revocation
    (app/services/consents.py, app/stores/tokens.py), and anything else issued for the server is
    revoked too. Clients bound to it stay, unbound (an introspection credential then sees only its
    own tokens; a machine client can no longer get tokens). Returns the consents revoked."""
    grant_ids = consents_store.ids_for(db, resource_id=resource.id)
    if grant_ids and not force:
        raise InUse(resource.uri, len(grant_ids))
    revoked = consents.revoke_many(db, grant_ids, actor_id=actor_id, via=via)
    # Tokens no consent holds any more (a consent deleted under a rotation) end too.
    access = tokens_store.revoke(db, at=now(), reason="resource_removed", resource_id=resource.id)
    uri, name, scopes = resource.uri, resource.name, [s.name for s in resource.scopes]
    store.remove(db, resource)
    audit.record(
        db,
        "resource.removed",
        actor_id=actor_id,
        resource=uri,
        via=via,
        name=name,
        scopes=scopes,
        consents_revoked=revoked,
        access_tokens_revoked=access,
    )
    return revoked
