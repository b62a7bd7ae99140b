"""The MCP-server (resource) form: parsing and validating it, and the snippet an MCP server's
author pastes into their configuration.

Without JavaScript, scopes are rows of fields (`scope-N-name`, `-description`, `-default`,
`-groups`, `-implies`); the form always offers a few empty rows to add scopes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.datastructures import FormData

from app.http import endpoints
from app.models import Resource
from app.services import Refused
from app.services.resources import MIN_TTL, ResourceSpec, ScopeSpec, check
from app.services.users import parse_groups
from app.settings import MAX_ACCESS_TOKEN_TTL, Settings

EMPTY_ROWS = 3
MAX_ROWS = 19  # five fields a row and four more: the form parser takes at most 100 fields


@dataclass
class ScopeRow:
    name: str = ""
    description: str = ""
    is_default: bool = False
    groups: str = ""  # "" means anyone
    implies: str = ""  # other scopes of this server it includes, separated by commas or spaces


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
    rows = [
        ScopeRow(s.name, s.description, s.is_default, ", ".join(s.allowed_groups or []), ", ".join(s.implies or []))
        for s in resource.scopes
    ]
    return ResourceForm(resource.uri, resource.name, str(resource.token_ttl or ""), rows).with_empty_rows()


def from_form(form: FormData) -> ResourceForm:
    def text(key: str, limit: int) -> str:
        return str(form.get(key) or "").strip()[:limit]

    rows = [
        ScopeRow(
            name=text(f"scope-{i}-name", 200),
            description=text(f"scope-{i}-description", 500),
            is_default=form.get(f"scope-{i}-default") == "on",
            groups=text(f"scope-{i}-groups", 2000),
            implies=text(f"scope-{i}-implies", 2000),
        )
        for i in range(MAX_ROWS)
    ]
    return ResourceForm(text("uri", 2048), text("name", 200), text("token_ttl", 10), rows)


def to_spec(f: ResourceForm) -> ResourceSpec:
    """The checked MCP server to save, or Refused naming the first problem."""
    ttl = None
    if f.token_ttl:
        if not f.token_ttl.isdigit():
            raise Refused(
                f"Token lifetime: a number of seconds from {MIN_TTL} to {MAX_ACCESS_TOKEN_TTL}, or empty for the default."
            )
        ttl = int(f.token_ttl)
    scopes = [
        ScopeSpec(
            row.name,
            row.description,
            row.is_default,
            parse_groups(row.groups) or None,
            tuple(n for n in re.split(r"[\s,]+", row.implies) if n),
        )
        for row in f.rows
        if row.name or row.description
    ]
    return check(f.uri, f.name, ttl, scopes)


def well_known_url(resource_uri: str) -> str:
    """RFC 9728 §3.1: the well-known segment goes between the host and the path."""
    parts = urlsplit(resource_uri)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-protected-resource{parts.path}"


def snippet(settings: Settings, resource: Resource) -> dict[str, Any]:
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
        # docs/decisions.md#scope-hierarchy: what each scope includes, for the server to honour.
        "scopes_url": f"{settings.issuer}{endpoints.RESOURCE_SCOPES.path}?resource={quote(resource.uri, safe='')}",
        "audience": resource.uri,
        "token_ttl": resource.token_ttl or settings.access_token_ttl,
    }
