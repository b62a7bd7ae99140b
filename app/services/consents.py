"""Consents: what a user allowed a client to do at one MCP server (a `grants` row: user x client
x resource, with its scopes). Incremental: each approval adds scopes to it
(docs/decisions.md#consent-is-incremental-and-shows-only-what-is-new).

Revoking one (the admin console, or the user's own account page) deletes the row, revokes every refresh-token family issued under it at once, and
records the jti of every live access token issued under it, so that introspection reports them
inactive until they expire (RFC 7009 §2, RFC 7662 §2.2). A code not yet redeemed under the grant
can no longer be redeemed. The next authorization asks the user for consent again.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import Client, Consent, User
from app.oauth.catalogue import ResourceInfo
from app.services import audit
from app.services.clients import redirect_hosts
from app.stores import codes as codes_store
from app.stores import consents as store
from app.stores import resources as resources_store
from app.stores import tokens as tokens_store
from app.stores import users as users_store


def seen(client: Client) -> tuple[str, list[str]]:
    """What the consent page showed of a client: its name and its redirect hosts."""
    return client.name, redirect_hosts(client.redirect_uris or [])


def still_applies(grant: Consent, client: Client) -> bool:
    """A consent covers the client it was given to: if the client has since changed its name
    or its redirect hosts (RFC 7592 update, a new metadata document), the user is asked again
    (docs/decisions.md#consent-is-bound-to-what-the-user-saw). Consents recorded before this
    was kept (no name) are taken as given."""
    if grant.client_name is None:
        return True
    return (grant.client_name, grant.redirect_hosts or []) == seen(client)


def current(db: Session, user_id: str, client: Client, resource_id: int) -> tuple[int | None, set[str]]:
    """(the consent's id, the scopes it covers), or (None, empty) before the first consent; the
    scopes are empty if the client changed since."""
    row = store.get_detached(db, user_id, client.id, resource_id)
    if row is None:
        return None, set()
    return row.id, set(row.scope.split()) if still_applies(row, client) else set()


def give(db: Session, user: User, client: Client, resource: ResourceInfo, scopes: list[str]) -> Consent:
    """The user allowed these scopes: merge them into their consent (compare-and-set, so two
    approvals at once both count), or replace what it held if the client changed since, and
    record it."""
    earlier = store.get(db, user.id, client.id, resource.id)
    changed = earlier is not None and not still_applies(earlier, client)
    name, hosts = seen(client)
    row = store.merge(db, user.id, client.id, resource.id, set(scopes), client_name=name, redirect_hosts=hosts, replace=changed)
    audit.record(
        db,
        "consent.granted",
        user_id=user.id,
        username=user.username,
        client_id=client.id,
        resource=resource.uri,
        scope=" ".join(scopes),
        grant_scope=row.scope,
        client_changed=changed,
    )
    return row


def revoke(db: Session, grant: Consent, *, actor_id: str | None, via: str) -> None:
    """`via`: "admin" (an admin revoked it), "account" (the user disconnected the app) or "cli"
    (an operator removed the MCP server with --force)."""
    # The grant goes first: deleting its row waits for any refresh under it that is inserting a
    # successor right now, so the revocation below (a later statement) sees that successor too.
    store.remove(db, grant.id)
    user_id, client_id, resource_id = grant.user_id, grant.client_id, grant.resource_id
    access = tokens_store.revoke(
        db, at=now(), reason=f"consent_revoked_{via}", user_id=user_id, client_id=client_id, resource_id=resource_id
    )
    codes_store.expire_unredeemed(db, user_id=user_id, client_id=client_id, resource_id=resource_id, at=now())
    user = users_store.get(db, grant.user_id)
    resource = resources_store.get(db, grant.resource_id)
    audit.record(
        db,
        "consent.revoked",
        user_id=grant.user_id,
        username=user.username if user else None,
        actor_id=actor_id,
        client_id=grant.client_id,
        resource=resource.uri if resource else None,
        scope=grant.scope,
        via=via,
        access_tokens_revoked=access,
    )


def revoke_many(db: Session, grant_ids: list[int], *, actor_id: str | None, via: str) -> int:
    """Bulk revocation (every grant of a user, or of a client). Returns how many were revoked."""
    done = 0
    for grant_id in grant_ids:
        grant = store.by_id(db, grant_id)
        if grant is not None:
            revoke(db, grant, actor_id=actor_id, via=via)
            done += 1
    return done
