"""The README stays true: CI runs exactly its test command, its configuration table names every
setting (and only settings that exist), and its CLI synopsis is what the parser accepts."""

from __future__ import annotations

import re
import shlex

import pytest

from app.cli import build_parser
from app.settings import Settings
from tests.support import ROOT

README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def fenced_after(heading: str) -> str:
    section = README.split(f"## {heading}\n", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def test_ci_runs_exactly_the_readme_test_command():
    command = fenced_after("Test it").strip()
    assert command == 'pip install -q -e ".[test]" && pytest'
    assert f"  {command}\n" in CI


def test_the_run_command_installs_and_serves():
    assert fenced_after("Run it").strip() == "pip install . && ostiary serve"


def _documented_variables() -> set[str]:
    table = README.split("## Configuration\n", 1)[1].split("\n## ", 1)[0]
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("| `")]
    return {name for cell in first_cells for name in re.findall(r"`(OSTIARY_[A-Z_]+)`", cell)}


def test_the_configuration_table_names_every_setting():
    fields = Settings.model_fields
    # `X_FILE` variants of secret settings are described once, above the table.
    settings = {f"OSTIARY_{name.upper()}" for name in fields if not (name.endswith("_file") and name[:-5] in fields)}
    documented = _documented_variables()
    assert documented - settings == set(), "documented but not a setting"
    assert settings - documented == set(), "a setting missing from the README"


CLI_FORMS = re.search(r"```text\n(.*?)```", README.split("## The `ostiary` command\n", 1)[1], re.S).group(1).splitlines()
PLACEHOLDERS = {"USERNAME": "alice", "URI": "https://mcp.example.com/mcp", "NAME": "x", "SECONDS": "60", "N": "2", "TEXT": "t"}


@pytest.mark.parametrize("line", CLI_FORMS)
def test_every_cli_form_in_the_readme_parses(line):
    """The CLI forms are a contract; the README states them as the parser takes them."""
    concrete: list[str] = []
    for word in shlex.split(line.split("#")[0])[1:]:
        word = word.strip("[]")
        if word and word != "...":
            concrete.append("read=Read" if word == "name=description" else PLACEHOLDERS.get(word, word))
    build_parser().parse_args(concrete)


def _mcp_requirement_rows() -> list[list[str]]:
    table = README.split("### MCP authorization, requirement by requirement\n", 1)[1].split("\n#", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| revision ")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def test_the_mcp_requirement_table_names_real_tests():
    """Every test the MCP requirement table cites exists (parametrized ids aside); a row that
    cites none says why."""
    rows = _mcp_requirement_rows()
    assert rows and all(len(row) == 4 for row in rows), "four cells per row, no `|` inside one"
    for revision, spec, requirement, test in rows:
        assert revision in ("2025-11-25", "2026-07-28", "both"), (revision, spec)
        cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]`]*\])?`", test)
        assert cited or re.search(r"untested|not supported|not Ostiary's", test), (spec, requirement)
        for path, name in cited:
            source = ROOT / path
            assert source.is_file(), path
            assert re.search(rf"^\s*(async )?def {name}\(", source.read_text(), re.M), f"{path}::{name}"
