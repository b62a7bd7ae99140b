"""The MCP-server (resource) form: parsing and validating it, and the snippet an MCP server's
author pastes into their configuration.

Without JavaScript, scopes are rows of fields (`scope-N-name`, `-description`, `-default`,
`-groups`); the form always offers a few empty rows to add scopes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from app.admin.actions import Refused, parse_groups
from app.models import Resource
from app.oauth.resource_indicators import InvalidResource, canonical_resource
from app.oauth.scopes import PROTOCOL_SCOPES, is_scope_token
from app.settings import MAX_ACCESS_TOKEN_TTL, Settings

MIN_TTL = 30
EMPTY_ROWS = 3
MAX_ROWS = 20  # the form parser takes at most 100 fields


@dataclass
class ScopeRow:
    name: str = ""
    description: str = ""
    is_default: bool = False
    groups: str = ""  # "" means anyone


@dataclass
class ResourceForm:
    uri: str = ""
    name: str = ""
    token_ttl: str = ""
    rows: list[ScopeRow] = field(default_factory=list)

    def with_empty_rows(self) -> ResourceForm:
        filled = [r for r in self.rows if r.name or r.description]
        self.rows = filled + [ScopeRow() for _ in range(max(0, min(EMPTY_ROWS, MAX_ROWS - len(filled))))]
        return self


def from_resource(resource: Resource | None) -> ResourceForm:
    if resource is None:
        return ResourceForm().with_empty_rows()
    rows = [ScopeRow(s.name, s.description, s.is_default, ", ".join(s.allowed_groups or [])) for s in resource.scopes]
    return ResourceForm(resource.uri, resource.name, str(resource.token_ttl or ""), rows).with_empty_rows()


def from_form(form) -> ResourceForm:
    def text(key: str, limit: int) -> str:
        return str(form.get(key) or "").strip()[:limit]

    rows = [
        ScopeRow(
            name=text(f"scope-{i}-name", 200),
            description=text(f"scope-{i}-description", 500),
            is_default=form.get(f"scope-{i}-default") == "on",
            groups=text(f"scope-{i}-groups", 2000),
        )
        for i in range(MAX_ROWS)
    ]
    return ResourceForm(text("uri", 2048), text("name", 200), text("token_ttl", 10), rows)


def validate(f: ResourceForm) -> dict:
    """The values to save, or Refused naming the first problem."""
    try:
        uri = canonical_resource(f.uri)  # RFC 8707 §2: absolute URI, no fragment
    except InvalidResource as exc:
        raise Refused(f"URI: {exc}.") from None
    if not f.name:
        raise Refused("Give the MCP server a name (shown on the consent page).")
    ttl = None
    if f.token_ttl:
        if not f.token_ttl.isdigit() or not MIN_TTL <= int(f.token_ttl) <= MAX_ACCESS_TOKEN_TTL:
            raise Refused(
                f"Token lifetime: a number of seconds from {MIN_TTL} to {MAX_ACCESS_TOKEN_TTL}, or empty for the default."
            )
        ttl = int(f.token_ttl)
    scopes = []
    for row in f.rows:
        if not row.name and not row.description:
            continue
        # RFC 6749 §3.3 scope-token; no wildcards (DESIGN).
        if not is_scope_token(row.name):
            raise Refused(f"Scope {row.name[:60]!r}: not a valid scope name (no spaces, quotes, backslashes or *).")
        if row.name in PROTOCOL_SCOPES:
            raise Refused(f"{row.name} is a protocol scope; it is always available and cannot be declared.")
        if not row.description:
            raise Refused(f"Scope {row.name}: describe it (the consent page shows the description).")
        groups = parse_groups(row.groups)
        scopes.append(
            {"name": row.name, "description": row.description, "is_default": row.is_default, "allowed_groups": groups or None}
        )
    names = [s["name"] for s in scopes]
    if not scopes:
        raise Refused("Declare at least one scope.")
    if len(set(names)) != len(names):
        raise Refused("Each scope name may appear once.")
    return {"uri": uri, "name": f.name, "token_ttl": ttl, "scopes": scopes}


def well_known_url(resource_uri: str) -> str:
    """RFC 9728 §3.1: the well-known segment goes between the host and the path."""
    parts = urlsplit(resource_uri)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{parts.path}"


def snippet(settings: Settings, resource: Resource) -> dict:
    """What an MCP server's author configures: its RFC 9728 metadata, and how to verify tokens."""
    document = {
        "resource": resource.uri,
        "authorization_servers": [settings.issuer],
        "scopes_supported": [s.name for s in resource.scopes],
        "bearer_methods_supported": ["header"],
        "resource_name": resource.name,
    }
    return {
        "metadata_url": well_known_url(resource.uri),
        "metadata_json": json.dumps(document, indent=2),
        "issuer": settings.issuer,
        "jwks_uri": settings.issuer + "/jwks",
        "audience": resource.uri,
        "token_ttl": resource.token_ttl or settings.access_token_ttl,
    }
