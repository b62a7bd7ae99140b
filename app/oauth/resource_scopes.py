"""GET /resources/scopes?resource=URI: an MCP server's scopes and what each includes, for the
server itself to honour (MCP 2026-07-28 authorization, Step-Up Authorization Flow: servers MUST
account for scope hierarchies; docs/decisions.md#scope-hierarchy).

Public and cacheable like the metadata document: it says nothing the consent page does not
show. `implies` is already transitive, so a resource server needs one lookup per scope.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.http import endpoints
from app.http.deps import RuntimeDep
from app.oauth.catalogue import ResourceInfo
from app.oauth.errors import NO_STORE, dumps, error_body
from app.oauth.resource_indicators import InvalidResource, canonical_resource

router = APIRouter()

MAX_AGE = 300  # seconds, as the metadata document: a changed hierarchy reaches servers within minutes


def document(resource: ResourceInfo) -> dict[str, Any]:
    return {
        "resource": resource.uri,
        "scopes": {
            name: {"description": scope.description, "implies": resource.includes(name)}
            for name, scope in resource.scopes.items()
        },
    }


@router.get(endpoints.RESOURCE_SCOPES.path, name="resource_scopes")
def resource_scopes(request: Request, runtime: RuntimeDep) -> Response:
    values = request.query_params.getlist("resource")
    if len(values) != 1:
        return _error(400, "invalid_request", "Name the MCP server once, in 'resource'.")
    try:
        uri = canonical_resource(values[0])  # RFC 8707 §2, compared in canonical form
    except InvalidResource as exc:
        return _error(400, "invalid_target", f"resource: {exc}.")
    resource = runtime.catalogue.by_uri(uri)
    if resource is None:
        return _error(404, "invalid_target", "No MCP server is registered under this URI.")
    return Response(
        dumps(document(resource)), media_type="application/json", headers={"Cache-Control": f"public, max-age={MAX_AGE}"}
    )


def _error(status: int, error: str, description: str) -> Response:
    return Response(error_body(error, description), status_code=status, media_type="application/json", headers=NO_STORE)
