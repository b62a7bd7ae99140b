"""Revoking a consent (a grant), from the admin console or the user's own account page.

Revoking deletes the grant, revokes every refresh-token family issued under it at once, and
records the jti of every live access token issued under it, so that introspection reports them
inactive until they expire (RFC 7009 §2, RFC 7662 §2.2). A code not yet redeemed under the grant
can no longer be redeemed. The next authorization asks the user for consent again.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import Grant
from app.services import audit
from app.stores import codes as codes_store
from app.stores import grants as store
from app.stores import resources as resources_store
from app.stores import tokens as tokens_store
from app.stores import users as users_store


def revoke(db: Session, grant: Grant, *, actor_id: str, via: str) -> None:
    """`via`: "admin" (an admin revoked it) or "account" (the user disconnected the app)."""
    # The grant goes first: deleting its row waits for any refresh under it that is inserting a
    # successor right now, so the revocation below (a later statement) sees that successor too.
    store.remove(db, grant.id)
    triple = dict(user_id=grant.user_id, client_id=grant.client_id, resource_id=grant.resource_id)
    access = tokens_store.revoke(db, at=now(), reason=f"consent_revoked_{via}", **triple)
    codes_store.expire_unredeemed(db, **triple, at=now())
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


def revoke_many(db: Session, grant_ids: list[int], *, actor_id: str, via: str) -> int:
    """Bulk revocation (every grant of a user, or of a client). Returns how many were revoked."""
    done = 0
    for grant_id in grant_ids:
        grant = store.by_id(db, grant_id)
        if grant is not None:
            revoke(db, grant, actor_id=actor_id, via=via)
            done += 1
    return done
