"""/healthz: the process answers. /readyz: the database answers and a key can sign."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.deps import RuntimeDep
from app.models.key import ACTIVE
from app.stores import keys as keys_store

router = APIRouter()


@router.get("/healthz")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz")
def readyz(runtime: RuntimeDep):
    try:
        with runtime.sessions() as db:
            db.execute(text("SELECT 1"))
            active = keys_store.by_state(db, ACTIVE)
    except Exception:  # noqa: BLE001 - not ready is an answer, not an error
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    if not active:
        return JSONResponse({"status": "unavailable", "signing_key": "none active"}, status_code=503)
    return {"status": "ok", "database": "ok", "signing_key": active[0].kid}
