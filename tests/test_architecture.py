"""The layering of docs/architecture.md, read from the import graph: which package may import
which, that only app/stores/ builds SQL, and that the wiring is typed (no bag of named objects)."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest

from app.runtime import Runtime
from tests.support import ROOT

APP = ROOT / "app"

# layer -> the app packages it may import (its own included). "oauth.<module>" allows one module.
ALLOWED = {
    "infra": {"infra", "settings"},
    "models": {"models", "infra"},
    "stores": {"stores", "models", "infra"},
    "security": {"security", "infra", "settings"},
    "services": {
        "services", "stores", "models", "security", "infra", "settings",
        "oauth.scopes", "oauth.resource_indicators", "oauth.catalogue",
    },
    "oauth": {"oauth", "services", "stores", "models", "security", "infra", "settings", "http"},
    "http": {"http", "services", "stores", "models", "security", "infra", "settings", "runtime"},
    "web": {"web", "oauth", "http", "services", "stores", "models", "security", "infra", "settings", "runtime"},
    "admin": {"admin", "web", "oauth", "http", "services", "stores", "models", "security", "infra", "settings", "runtime"},
}  # fmt: skip
SQL_BUILDERS = {"select", "update", "delete", "insert", "text", "func", "and_", "or_", "not_", "exists", "literal_column", "case"}


def _modules() -> list[Path]:
    return sorted(p for p in APP.rglob("*.py"))


def _layer(path: Path) -> str:
    parts = path.relative_to(APP).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) for every import in the file, at any depth (TYPE_CHECKING blocks too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
    return found


def _targets(module: str, names: list[str]) -> list[str]:
    """The app packages (or "oauth.<module>") an import reaches."""
    if module == "app":
        return names
    if not module.startswith("app."):
        return []
    parts = module.split(".")[1:]
    if parts[0] == "oauth":
        return [f"oauth.{parts[1]}" if len(parts) > 1 else "oauth"]
    return [parts[0]]


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in _modules() if _layer(p) in ALLOWED])
def test_layers_import_only_what_they_may(path):
    layer = _layer(path)
    allowed = ALLOWED[layer]
    wrong = [
        target
        for module, names in _imports(path)
        for target in _targets(module, names)
        if target not in allowed and target.split(".")[0] not in allowed
    ]
    assert not wrong, f"{layer} may not import {sorted(set(wrong))}"


def test_oauth_never_imports_the_browser_or_the_console():
    for path in (APP / "oauth").rglob("*.py"):
        reached = {t.split(".")[0] for module, names in _imports(path) for t in _targets(module, names)}
        assert not reached & {"web", "admin"}, path


@pytest.mark.parametrize("path", [pytest.param(p, id=str(p.relative_to(ROOT))) for p in _modules() if _layer(p) != "stores"])
def test_only_stores_build_sql(path):
    built = [
        name
        for module, names in _imports(path)
        if module == "sqlalchemy" or module.startswith("sqlalchemy.dialects") or module == "sqlalchemy.sql"
        for name in names
        if name in SQL_BUILDERS or module.startswith("sqlalchemy.dialects")
    ]
    assert not built, f"{path.relative_to(ROOT)} builds SQL with {built}"


def test_runtime_is_typed_fields_not_a_bag():
    hints = typing.get_type_hints(Runtime)
    for field in dataclasses.fields(Runtime):
        origin = typing.get_origin(hints[field.name]) or hints[field.name]
        assert origin is not dict, f"Runtime.{field.name} is a dict"
        assert hints[field.name] is not typing.Any, f"Runtime.{field.name} is Any"
