"""/admin/keys: the signing keys and "Rotate now".

Rotation promotes the next key (published in the JWKS ahead of time) to active. If the next key
is younger than the JWKS cache lifetime, resource servers may not know it yet: rotation is
refused with the reason, and the admin may rotate anyway.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Response

from app.admin.pages import AdminDep, confirm, confirmed, require_csrf
from app.http.body import FormDep
from app.http.deps import DbDep, RuntimeDep
from app.models.key import ACTIVE, RETIRED
from app.services import keys
from app.stores import keys as store

router = APIRouter()


@router.get("/admin/keys")
def keys_page(browser: AdminDep, db: DbDep, done: str = "") -> Response:
    settings = browser.runtime.settings
    rows = store.all_keys(db)
    active = next((k for k in rows if k.state == ACTIVE), None)
    next_rotation = (active.activated_at or active.created_at) + settings.key_rotation_period if active else None
    lifetime = keys.retired_key_lifetime(settings)
    return browser.render(
        "admin/keys.html",
        section="keys",
        keys=rows,
        next_rotation=next_rotation,
        deleted_at={k.kid: (k.retired_at or 0) + lifetime for k in rows if k.state == RETIRED},
        rotation_period_days=settings.key_rotation_period // 86400,
        jwks_max_age=settings.jwks_max_age,
        done=done[:16] if re.fullmatch(r"[A-Za-z0-9_-]{1,16}", done) else "",
    )


@router.post("/admin/keys/rotate")
def rotate(browser: AdminDep, db: DbDep, runtime: RuntimeDep, form: FormDep) -> Response:
    require_csrf(browser, form)
    question: dict[str, Any] = {  # confirm()'s keyword arguments
        "title": "Rotate the signing keys now?",
        "message": "The next key becomes the active key and signs every new token; the active key is retired and stays "
        "published until the tokens it signed have expired; a new next key is published.",
        "action": "/admin/keys/rotate",
        "fields": {},
        "back": "/admin/keys",
    }
    if not confirmed(form):
        return confirm(browser, **question)
    try:
        active = keys.rotate(db, runtime.settings, runtime.keyring, force=form.get("force") == "on", actor_id=browser.me.id)
    except keys.RotationRefused as exc:
        db.rollback()
        return confirm(
            browser,
            **question,
            status=409,
            error=f"Rotation refused: {exc}.",
            option=("force", "Rotate anyway"),
        )
    db.commit()
    runtime.keys.invalidate()  # this replica signs with the new key at once; others within seconds
    return browser.redirect(f"/admin/keys?done={active.kid[:16]}")
