"""/healthz: the process answers. /readyz: the database answers and a key can sign.
/metrics: Prometheus."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError

from app.http import endpoints
from app.http.deps import RuntimeDep
from app.infra import metrics
from app.models.key import ACTIVE
from app.security.hosts import client_ip
from app.stores import keys as keys_store

router = APIRouter()

# RFC 9110 §15.6.4: a 503 may say when to try again; load balancers and orchestrators read it.
NOT_READY = {"Retry-After": "5", "Cache-Control": "no-store"}


@router.get(endpoints.HEALTHZ.path)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(endpoints.READYZ.path, response_model=None)  # a dict, or a JSONResponse when not ready
def readyz(runtime: RuntimeDep) -> JSONResponse | dict[str, str]:
    try:
        with runtime.sessions() as db:
            active = keys_store.by_state(db, ACTIVE)  # a query: the database answers
    except SQLAlchemyError:  # not ready is an answer, not an error
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503, headers=NOT_READY)
    if not active:
        return JSONResponse({"status": "unavailable", "signing_key": "none active"}, status_code=503, headers=NOT_READY)
    return {"status": "ok", "database": "ok", "signing_key": active[0].kid}


@router.get(endpoints.METRICS.path)
def prometheus_metrics(request: Request, runtime: RuntimeDep) -> Response:
    """Prometheus exposition, to the networks in OSTIARY_METRICS_NETWORKS only."""
    if not runtime.metrics_networks(client_ip(request)):
        return JSONResponse(
            {"error": "forbidden", "error_description": "Metrics are not served to this address."}, status_code=403
        )
    try:
        activated_at = runtime.keys.snapshot().activated_at
    except (SQLAlchemyError, RuntimeError):  # metrics answer even when the keys cannot be read
        activated_at = None
    body, content_type = metrics.render(activated_at)
    return Response(body, media_type=content_type, headers={"Cache-Control": "no-store"})
