"""User administration: create, disable/enable, admin flag, groups, one-time password links.

The console never leaves the server without an active admin: a change that would disable or
demote the last one is refused. Admin changes are serialised under one row lock so that two
admins demoting each other at once cannot both succeed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import PasswordSetupToken, User
from app.security.passwords import hash_password, password_problem
from app.security.secrets import new_token
from app.services import audit
from app.stores import jobs as locks
from app.stores import password_links
from app.stores import sessions as sessions_store
from app.stores import users as store

PASSWORD_LINK_TTL = 3 * 24 * 3600
GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_GROUPS = 50
ADMINS_LOCK = "admins"

if TYPE_CHECKING:
    from app.runtime import Runtime


class Refused(Exception):
    """An admin action that is not allowed; the message is shown to the admin."""


def parse_groups(text: str) -> list[str]:
    """Group names separated by commas or spaces: letters, digits and . _ : - (64 at most)."""
    names = [g for g in re.split(r"[\s,]+", text or "") if g]
    bad = [g for g in names if not GROUP.match(g)]
    if bad:
        raise Refused(f"Not a valid group name: {bad[0][:64]!r} (letters, digits and . _ : - only).")
    unique = list(dict.fromkeys(names))
    if len(unique) > MAX_GROUPS:
        raise Refused(f"At most {MAX_GROUPS} groups.")
    return unique


def check_username(username: str) -> str:
    username = username.strip()
    # The same rule as `ostiary users create`.
    if not username or len(username) > 150 or any(c.isspace() or ord(c) < 0x20 for c in username):
        raise Refused("A username is 1 to 150 characters without spaces.")
    return username


def create_user(db: Session, *, username: str, password: str | None, is_admin: bool, groups: list[str], actor: User) -> User:
    username = check_username(username)
    if password is not None:
        problem = password_problem(password)
        if problem:
            raise Refused(problem)
    if store.by_username(db, username):
        raise Refused(f"A user named {username!r} already exists.")
    try:
        with db.begin_nested():
            user = store.add(
                db,
                User(
                    username=username,
                    password_hash=hash_password(password) if password is not None else None,
                    is_admin=is_admin,
                    groups=groups,
                ),
            )
    except IntegrityError:
        raise Refused(f"A user named {username!r} already exists.") from None
    audit.record(
        db, "user.created", user_id=user.id, username=user.username, actor_id=actor.id, via="admin", admin=is_admin, groups=groups
    )
    return user


def new_password_link(db: Session, runtime: Runtime, user: User, *, actor: User) -> str:
    """A one-time link (shown once; only its HMAC is stored) for the user to set a password."""
    token = new_token()
    t = now()
    password_links.replace(
        db,
        PasswordSetupToken(
            token_hash=runtime.keyring.hash(token),
            user_id=user.id,
            created_by=actor.id,
            created_at=t,
            expires_at=t + PASSWORD_LINK_TTL,
        ),
    )
    audit.record(db, "user.password_link_created", user_id=user.id, username=user.username, actor_id=actor.id)
    return f"{runtime.settings.issuer}/setup-password/{token}"


def _keeps_an_admin(db: Session, user: User) -> None:
    """Refuse a change that takes `user` out of the active admins if they are the last one."""
    locks.lock(db, ADMINS_LOCK)  # a row lock (job_runs) held until commit
    db.refresh(user)  # read again under the lock
    if user.is_admin and not user.disabled and store.count_active_admins(db) <= 1:
        raise Refused(f"{user.username} is the last active admin. Make another user an admin first.")


def set_disabled(db: Session, user: User, disabled: bool, *, actor: User) -> None:
    if disabled == user.disabled:
        return
    if disabled:
        _keeps_an_admin(db, user)
        store.set_disabled(db, user.id, now())
        ended = sessions_store.remove_for_user(db, user.id)
        audit.record(db, "user.disabled", user_id=user.id, username=user.username, actor_id=actor.id, sessions_ended=ended)
    else:
        store.set_disabled(db, user.id, None)
        audit.record(db, "user.enabled", user_id=user.id, username=user.username, actor_id=actor.id)


def set_admin(db: Session, user: User, is_admin: bool, *, actor: User) -> None:
    if is_admin == user.is_admin:
        return
    if not is_admin:
        _keeps_an_admin(db, user)
    store.set_admin(db, user.id, is_admin)
    audit.record(
        db, "user.admin_granted" if is_admin else "user.admin_removed", user_id=user.id, username=user.username, actor_id=actor.id
    )


def set_groups(db: Session, user: User, groups: list[str], *, actor: User) -> None:
    """Takes effect at the user's next consent or refresh (refresh drops scopes they lost)."""
    before = list(user.groups or [])
    if groups == before:
        return
    store.set_groups(db, user.id, groups)
    audit.record(
        db, "user.groups_changed", user_id=user.id, username=user.username, actor_id=actor.id, groups=groups, before=before
    )
