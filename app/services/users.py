"""Users: the username rule, creating, disabling and enabling, deleting, the admin flag, groups,
an operator's password reset, and one-time links to set a password.

The server is never left without an active admin: a change that would disable, demote or delete
the last one is refused, whoever asks (console or CLI). Such changes are serialised under one row
lock, so two admins demoting each other at once cannot both succeed.
"""

from __future__ import annotations

import re

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import BrowserSession, PasswordSetupToken, User
from app.security.passwords import hash_password, password_problem, verify_password
from app.security.secrets import Keyring, new_token
from app.services import Refused, audit
from app.stores import jobs as locks
from app.stores import password_links
from app.stores import sessions as sessions_store
from app.stores import tokens as tokens_store
from app.stores import users as store

PASSWORD_LINK_TTL = 3 * 24 * 3600
MAX_USERNAME = 150
GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_GROUPS = 50
ADMINS_LOCK = "admins"


def check_username(username: str) -> str:
    """The username to store: 1 to 150 characters, no spaces or control characters (it is
    compared case-insensitively after NFKC normalisation, app/stores/users.py)."""
    username = username.strip()
    if not username or len(username) > MAX_USERNAME or any(c.isspace() or ord(c) < 0x20 for c in username):
        raise Refused(f"A username is 1 to {MAX_USERNAME} characters without spaces.")
    return username


def check_password(password: str) -> str:
    problem = password_problem(password)
    if problem:
        raise Refused(problem)
    return password


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


def create_user(
    db: Session,
    *,
    username: str,
    password: str | None,
    is_admin: bool = False,
    groups: list[str] | None = None,
    actor_id: str | None = None,
    via: str,
) -> User:
    """A new user; without a password they set one through a link (new_password_link)."""
    username = check_username(username)
    if password is not None:
        check_password(password)
    exists = f"A user named {username!r} already exists."
    if store.by_username(db, username):
        raise Refused(exists)
    try:
        with db.begin_nested():
            user = store.add(
                db,
                User(
                    username=username,
                    password_hash=hash_password(password) if password is not None else None,
                    is_admin=is_admin,
                    groups=groups or [],
                ),
            )
    except IntegrityError:  # the same name, created a moment ago elsewhere
        raise Refused(exists) from None
    audit.record(
        db,
        "user.created",
        user_id=user.id,
        username=user.username,
        actor_id=actor_id,
        via=via,
        admin=is_admin,
        groups=groups or [],
    )
    return user


def new_password_link(db: Session, keyring: Keyring, issuer: str, user: User, *, actor_id: str) -> str:
    """A one-time link (shown once; only its HMAC is stored) for the user to set a password."""
    token = new_token()
    t = now()
    password_links.replace(
        db,
        PasswordSetupToken(
            token_hash=keyring.hash(token), user_id=user.id, created_by=actor_id, created_at=t, expires_at=t + PASSWORD_LINK_TTL
        ),
    )
    audit.record(db, "user.password_link_created", user_id=user.id, username=user.username, actor_id=actor_id)
    return f"{issuer}/setup-password/{token}"


def _keeps_an_admin(db: Session, user: User) -> None:
    """Refuse a change that takes `user` out of the active admins if they are the last one."""
    locks.lock(db, ADMINS_LOCK)  # a row lock (job_runs) held until commit
    db.refresh(user)  # read again under the lock
    if user.is_admin and not user.disabled and store.count_active_admins(db) <= 1:
        raise Refused(f"{user.username} is the last active admin. Make another user an admin first.")


def set_disabled(db: Session, user: User, disabled: bool, *, actor_id: str | None = None, via: str = "admin") -> int:
    """Disable (end every browser session) or enable a user; returns the sessions ended."""
    if disabled == user.disabled:
        return 0
    if not disabled:
        store.set_disabled(db, user.id, None)
        audit.record(db, "user.enabled", user_id=user.id, username=user.username, actor_id=actor_id, via=via)
        return 0
    _keeps_an_admin(db, user)
    t = now()
    store.set_disabled(db, user.id, t)
    ended = sessions_store.remove_for_user(db, user.id)
    # For good: enabling the account again does not bring its tokens back
    # (docs/decisions.md#credentials-change-tokens-end).
    revoked = tokens_store.revoke(db, at=t, reason="user_disabled", user_id=user.id)
    audit.record(
        db,
        "user.disabled",
        user_id=user.id,
        username=user.username,
        actor_id=actor_id,
        via=via,
        sessions_ended=ended,
        access_tokens_revoked=revoked,
    )
    return ended


def delete_user(db: Session, user: User, *, actor_id: str | None = None, via: str = "admin") -> int:
    """Delete a user and everything that is theirs: browser sessions, consents, codes, refresh
    tokens, password links, linked identities (ON DELETE CASCADE). Their live access tokens are
    recorded as revoked first, so that introspection reports them inactive until they expire.
    Refused for the last active admin. Returns how many access tokens that was."""
    _keeps_an_admin(db, user)
    revoked = tokens_store.revoke(db, at=now(), reason="user_deleted", user_id=user.id)
    store.remove(db, user.id)
    audit.record(
        db,
        "user.deleted",
        user_id=user.id,
        username=user.username,
        actor_id=actor_id,
        via=via,
        admin=user.is_admin,
        access_tokens_revoked=revoked,
    )
    return revoked


def set_password(db: Session, user: User, password: str, *, actor_id: str | None = None, via: str = "cli") -> int:
    """An operator sets a user's password (they forgot it, or it leaked). As with a password
    link, every browser session of the user ends and their refresh tokens are revoked
    (docs/decisions.md#credentials-change-tokens-end), and a second-factor lock is lifted
    (docs/decisions.md#wrong-totp-codes-lock-the-account-after-twenty-in-a-row). Returns the
    sessions ended."""
    check_password(password)
    store.set_password_hash(db, user.id, hash_password(password))
    ended = sessions_store.remove_for_user(db, user.id)
    revoked = tokens_store.revoke(db, at=now(), reason="password_reset", user_id=user.id)
    audit.record(
        db,
        "user.password_set",
        user_id=user.id,
        username=user.username,
        actor_id=actor_id,
        via=via,
        sessions_ended=ended,
        access_tokens_revoked=revoked,
    )
    unlock(db, user, actor_id=actor_id, via=via)
    return ended


def browser_sessions(db: Session, user: User, *, idle_timeout: int) -> list[BrowserSession]:
    """The browsers the user is signed in on (for their account page)."""
    t = now()
    return sessions_store.for_user(db, user.id, seen_after=t - idle_timeout, now_=t)


def sign_out_others(db: Session, user: User, *, keep_session_hash: str) -> int:
    """The user signs out every browser but this one (a lost laptop, a shared computer). Their
    apps' tokens are not touched: disconnecting an app is its own choice on the same page.
    Returns how many sessions ended."""
    ended = sessions_store.remove_others(db, user.id, keep_session_hash)
    audit.record(db, "user.signed_out_elsewhere", user_id=user.id, username=user.username, sessions_ended=ended)
    return ended


def unlock(db: Session, user: User, *, actor_id: str | None = None, via: str = "admin") -> bool:
    """Lift the lock after too many wrong second-factor codes; False if the account was not
    locked (docs/decisions.md#wrong-totp-codes-lock-the-account-after-twenty-in-a-row)."""
    if not store.unlock(db, user.id):
        return False
    audit.record(db, "user.unlocked", user_id=user.id, username=user.username, actor_id=actor_id, via=via)
    return True


def set_admin(db: Session, user: User, is_admin: bool, *, actor_id: str) -> None:
    if is_admin == user.is_admin:
        return
    if not is_admin:
        _keeps_an_admin(db, user)
    store.set_admin(db, user.id, is_admin)
    event = "user.admin_granted" if is_admin else "user.admin_removed"
    audit.record(db, event, user_id=user.id, username=user.username, actor_id=actor_id)


def set_groups(db: Session, user: User, groups: list[str], *, actor_id: str) -> None:
    """Takes effect at the user's next consent or refresh (refresh drops scopes they lost)."""
    before = list(user.groups or [])
    if groups == before:
        return
    store.set_groups(db, user.id, groups)
    audit.record(
        db, "user.groups_changed", user_id=user.id, username=user.username, actor_id=actor_id, groups=groups, before=before
    )


def change_password(
    db: Session, user: User, *, current: str, new: str, repeat: str, keep_session_hash: str, keep_apps: bool = False
) -> int:
    """The user's own password change: the current password first, then the new one twice.
    Every other browser session of the user ends (returns how many), and every connected app's
    refresh token unless the user chose to keep them (docs/decisions.md#credentials-change-tokens-end)."""
    ok, _ = verify_password(user.password_hash, current)
    if not ok:
        audit.record(db, "user.password_change_failed", user_id=user.id, username=user.username)
        raise Refused("Your current password is not correct.")
    check_password(new)
    if new != repeat:
        raise Refused("The new passwords do not match.")
    store.set_password_hash(db, user.id, hash_password(new))
    ended = sessions_store.remove_others(db, user.id, keep_session_hash)
    if not keep_apps:
        tokens_store.revoke(db, at=now(), reason="password_changed", user_id=user.id)
    audit.record(db, "user.password_changed", user_id=user.id, username=user.username, sessions_ended=ended, apps_kept=keep_apps)
    return ended


def set_password_from_link(db: Session, link: PasswordSetupToken, user: User, *, password: str, repeat: str) -> bool:
    """Set a password with a one-time link; False if the link was used meanwhile (it works once,
    even for two submissions at once). Every browser session of the user ends."""
    check_password(password)
    if password != repeat:
        raise Refused("The passwords do not match.")
    if not password_links.take(db, link, now()):
        return False
    store.set_password_hash(db, user.id, hash_password(password))
    sessions_store.remove_for_user(db, user.id)
    # A reset: whoever knew the old password may hold tokens (docs/decisions.md#credentials-change-tokens-end).
    tokens_store.revoke(db, at=now(), reason="password_reset", user_id=user.id)
    audit.record(db, "user.password_set", user_id=user.id, username=user.username, via="link")
    # An admin handed out the link: it lifts a second-factor lock too
    # (docs/decisions.md#wrong-totp-codes-lock-the-account-after-twenty-in-a-row).
    unlock(db, user, actor_id=link.created_by, via="password_link")
    return True
