"""The resource catalogue (MCP servers and their scopes), read from the database and kept in
memory for a few seconds: /authorize and /token look resources up on every request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from app.models import Resource
from app.settings import Settings
from app.stores import resources as store

REFRESH_INTERVAL = 10.0


@dataclass(frozen=True)
class ScopeInfo:
    name: str
    description: str
    is_default: bool
    allowed_groups: tuple[str, ...] | None  # None: anyone
    # Other scopes of the same resource this one includes, as declared (`mcp:write` implies
    # `mcp:read`); the transitive closure is `ResourceInfo.includes`
    # (docs/decisions.md#scope-hierarchy).
    implies: tuple[str, ...] = ()

    def permits(self, groups: list[str] | None) -> bool:
        return self.allowed_groups is None or bool(set(groups or []) & set(self.allowed_groups))


def closure(implies: Mapping[str, Iterable[str]], names: Iterable[str]) -> set[str]:
    """`names` and every scope they imply, directly or through others. A cycle (two scopes that
    imply each other) is harmless: each scope is visited once."""
    found: set[str] = set()
    pending = list(names)
    while pending:
        name = pending.pop()
        if name not in found:
            found.add(name)
            pending.extend(implies.get(name, ()))
    return found


@dataclass(frozen=True)
class ResourceInfo:
    id: int
    uri: str
    name: str
    token_ttl: int
    scopes: dict[str, ScopeInfo]  # in catalogue order

    def catalogue(self) -> dict[str, bool]:
        return {name: s.is_default for name, s in self.scopes.items()}

    def covered(self, names: Iterable[str]) -> set[str]:
        """The scopes that holding `names` amounts to: them and every scope they imply
        (MCP 2026-07-28 authorization, Step-Up Authorization Flow: scope hierarchies)."""
        return closure({n: s.implies for n, s in self.scopes.items()}, names)

    def includes(self, name: str) -> list[str]:
        """The other scopes `name` implies, directly or not, in catalogue order."""
        covered = self.covered([name])
        return [n for n in self.scopes if n in covered and n != name]


class Catalogue:
    def __init__(self, factory: sessionmaker[Session], settings: Settings):
        self._factory = factory
        self._settings = settings
        self._lock = threading.Lock()
        self._by_uri: dict[str, ResourceInfo] = {}
        self._by_id: dict[int, ResourceInfo] = {}
        self._loaded_at = float("-inf")

    def _fresh(self) -> None:
        if time.monotonic() - self._loaded_at < REFRESH_INTERVAL:
            return
        with self._lock:
            if time.monotonic() - self._loaded_at < REFRESH_INTERVAL:
                return
            with self._factory() as db:
                rows = store.all_resources(db)
                infos = [self._info(r) for r in rows]
            self._by_uri = {i.uri: i for i in infos}
            self._by_id = {i.id: i for i in infos}
            self._loaded_at = time.monotonic()

    def _info(self, row: Resource) -> ResourceInfo:
        ttl = min(row.token_ttl or self._settings.access_token_ttl, 3600)
        names = {s.name for s in row.scopes}
        scopes = {
            s.name: ScopeInfo(
                s.name,
                s.description,
                s.is_default,
                tuple(s.allowed_groups) if s.allowed_groups is not None else None,
                # Only scopes of this resource (app/services/resources.py checks it when saving).
                tuple(n for n in s.implies or [] if n in names and n != s.name),
            )
            for s in row.scopes
        }
        return ResourceInfo(row.id, row.uri, row.name, ttl, scopes)

    def by_uri(self, uri: str) -> ResourceInfo | None:
        self._fresh()
        found = self._by_uri.get(uri)
        if found is None and time.monotonic() - self._loaded_at > 1.0:  # added just now elsewhere?
            self.invalidate()
            self._fresh()
            found = self._by_uri.get(uri)
        return found

    def by_id(self, resource_id: int) -> ResourceInfo | None:
        self._fresh()
        found = self._by_id.get(resource_id)
        if found is None and time.monotonic() - self._loaded_at > 1.0:
            self.invalidate()
            self._fresh()
            found = self._by_id.get(resource_id)
        return found

    def all(self) -> list[ResourceInfo]:
        self._fresh()
        return sorted(self._by_id.values(), key=lambda r: r.uri)

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")
