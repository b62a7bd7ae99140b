"""Scopes (RFC 6749 §3.3): syntax, and resolving a request against a resource's catalogue."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.oauth.catalogue import ResourceInfo

# scope-token = 1*( %x21 / %x23-5B / %x5D-7E ); "*" is refused too, no wildcards
# (docs/decisions.md#unknown-and-wildcard-scopes-are-refused).
_SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x29\x2b-\x5b\x5d-\x7e]{1,200}$")

OPENID = "openid"
OFFLINE_ACCESS = "offline_access"
# Protocol scopes every resource accepts on top of its catalogue.
PROTOCOL_SCOPES = (OPENID, OFFLINE_ACCESS)


class InvalidScope(ValueError):
    pass


def is_scope_token(value: str) -> bool:
    return bool(_SCOPE_TOKEN.match(value))


def parse(scope: str | None) -> list[str]:
    """Space-delimited, order-insensitive, duplicates dropped (RFC 6749 §3.3)."""
    if not scope:
        return []
    tokens = scope.split(" ")
    result: list[str] = []
    for token in tokens:
        if token == "":
            continue
        if not is_scope_token(token):
            raise InvalidScope(f"invalid scope token {token[:40]!r}")
        if token not in result:
            result.append(token)
    return result


def join(scopes: Iterable[str]) -> str:
    return " ".join(sorted(set(scopes)))


def resolve(requested: str | None, catalogue: dict[str, bool]) -> list[str]:
    """The scopes an authorization request asks for, against a resource's catalogue
    {name: is_default}. Empty or missing means the resource's default scopes (MCP clients that
    send `scope=`; docs/decisions.md#an-empty-scope-means-the-resources-default-scopes). A name the resource does not declare is invalid_scope."""
    names = parse(requested)
    unknown = [n for n in names if n not in catalogue and n not in PROTOCOL_SCOPES]
    if unknown:
        raise InvalidScope(f"unknown scope: {' '.join(unknown)[:200]}")
    resource_scopes = [n for n in names if n not in PROTOCOL_SCOPES]
    if not resource_scopes:
        names = names + [n for n, default in catalogue.items() if default and n not in names]
    return names


def permitted(scopes: list[str], resource: ResourceInfo, groups: list[str] | None) -> list[str]:
    """Access policy: the scopes this user may hold, in request order. Protocol scopes always; a
    resource scope while the MCP server still declares it and, if the scope is limited to
    groups, the user is in one of them (docs/decisions.md#access-policy-by-groups-is-applied-at-every-refresh)."""
    return [s for s in scopes if s in PROTOCOL_SCOPES or (s in resource.scopes and resource.scopes[s].permits(groups))]


def refuses_all(requested: list[str], allowed: list[str]) -> bool:
    """True when the request asks for resource scopes and the policy allows none of them."""
    return any(s not in PROTOCOL_SCOPES for s in requested) and not any(s not in PROTOCOL_SCOPES for s in allowed)
