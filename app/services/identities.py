"""Organisations' identity providers and the users they vouch for.

A user from a provider is linked by (issuer, sub), never by email alone: an email address can
be reassigned or spoofed by a provider that does not verify it, (issuer, sub) cannot. A user
seen for the first time is provisioned just in time, named after a verified email (if its domain
is allowed) or the provider and subject; upstream groups replace the user's groups when the
provider sends them.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import IdentityProvider, User, UserIdentity
from app.security.secrets import Keyring
from app.services import Refused, audit
from app.services import users as user_service
from app.settings import canonical_issuer_problem
from app.stores import identities as store
from app.stores import users as users_store

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
RESERVED = {"otp"}  # /login/otp is the second-factor page


def secret_context(name: str) -> bytes:
    return b"idp-client-secret:" + name.encode()


def add_provider(
    db: Session,
    keyring: Keyring,
    *,
    name: str,
    issuer: str,
    client_id: str | None = None,
    client_secret: str | None = None,
    scopes: list[str] | None = None,
    groups_claim: str | None = None,
    allowed_domains: list[str] | None = None,
    id_jag: bool = False,
    actor_id: str | None = None,
    via: str = "cli",
) -> IdentityProvider:
    if not NAME.match(name) or name in RESERVED:
        raise Refused("a provider name is 1 to 64 lowercase letters, digits and hyphens (not 'otp')")
    problem = canonical_issuer_problem(issuer)
    if problem:
        raise Refused(f"--issuer: {problem}")
    if bool(client_id) != bool(client_secret):
        raise Refused("give both --client-id and --client-secret-file (for sign-in), or neither")
    if not client_id and not id_jag:
        raise Refused("a provider is for sign-in (--client-id and --client-secret-file), for ID-JAGs (--id-jag), or both")
    provider = IdentityProvider(
        name=name,
        issuer=issuer,
        client_id=client_id,
        client_secret_enc=keyring.encrypt(client_secret.encode(), secret_context(name)) if client_secret else None,
        scopes=scopes or ["openid", "profile", "email"],
        groups_claim=groups_claim,
        allowed_domains=[d.lower() for d in allowed_domains or []],
        id_jag=id_jag,
        enabled=True,
        created_at=now(),
    )
    if not store.add(db, provider):
        raise Refused(f"a provider named {name!r} or with issuer {issuer!r} exists already")
    audit.record(db, "idp.added", actor_id=actor_id, via=via, idp=name, issuer=issuer, sign_in=bool(client_id), id_jag=id_jag)
    return provider


def set_enabled(
    db: Session, provider: IdentityProvider, enabled: bool, *, actor_id: str | None = None, via: str = "console"
) -> None:
    """A disabled provider is neither offered for sign-in nor trusted for ID-JAGs."""
    provider.enabled = enabled
    audit.record(db, "idp.enabled" if enabled else "idp.disabled", actor_id=actor_id, via=via, idp=provider.name)


def remove_provider(db: Session, name: str, *, actor_id: str | None = None, via: str = "cli") -> bool:
    """Trust ends at once: every replica reads the table on each use."""
    if not store.remove(db, name):
        return False
    audit.record(db, "idp.removed", actor_id=actor_id, via=via, idp=name)
    return True


def user_for(db: Session, provider: IdentityProvider, claims: dict[str, Any]) -> User:
    """The user (issuer, sub) is linked to, provisioned on first sight. Raises Refused when the
    subject cannot be a user here (an email domain the provider may not vouch for)."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > 255:
        raise Refused("the assertion has no usable 'sub'")
    t = now()
    user = store.linked_user(db, provider.issuer, subject)
    if user is None:
        user = _provision(db, provider, subject, claims)
    else:
        store.seen(db, provider.issuer, subject, t)
    groups = _groups(provider, claims)
    if groups is not None and groups != list(user.groups or []):
        users_store.set_groups(db, user.id, groups)
        user.groups = groups
    return user


def _groups(provider: IdentityProvider, claims: dict[str, Any]) -> list[str] | None:
    if not provider.groups_claim or provider.groups_claim not in claims:
        return None
    value = claims[provider.groups_claim]
    names = value if isinstance(value, list) else str(value).split()
    try:
        return user_service.parse_groups(" ".join(str(n) for n in names if isinstance(n, str)))
    except Refused:
        return [n for n in names if isinstance(n, str) and user_service.GROUP.match(n)][: user_service.MAX_GROUPS]


def _provision(db: Session, provider: IdentityProvider, subject: str, claims: dict[str, Any]) -> User:
    email = claims.get("email") if claims.get("email_verified", True) is not False else None
    domain = email.rsplit("@", 1)[1].lower() if isinstance(email, str) and "@" in email else None
    if provider.allowed_domains and domain not in provider.allowed_domains:
        raise Refused("the user's email domain is not one this provider may vouch for")
    base = email if isinstance(email, str) and domain else f"{provider.name}-{subject}"
    base = re.sub(r"\s", "", base)[: user_service.MAX_USERNAME - 4]
    for attempt in range(20):
        username = base if attempt == 0 else f"{base}~{attempt}"
        if users_store.by_username(db, username) is None:
            break
    user = user_service.create_user(db, username=username, password=None, via=f"idp:{provider.name}")
    if not store.link(db, UserIdentity(issuer=provider.issuer, subject=subject, user_id=user.id, created_at=now())):
        raise Refused("this identity was linked a moment ago; try again")
    audit.record(db, "idp.user_linked", user_id=user.id, username=user.username, idp=provider.name)
    return user
