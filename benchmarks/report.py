"""Measuring processes (CPU, memory, the machine's other load) and reporting the results."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parent.parent


# -- processes -----------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # the command name may contain spaces and ")"


def process_tree(root: int) -> list[int]:
    """`root` and every live descendant (uvicorn's worker processes with --workers > 1)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int | None) -> float | None:
    """User + system CPU of the process tree: utime + stime of each, plus cutime + cstime (the
    time of children already reaped, which have left the tree)."""
    if root is None or _stat_fields(root) is None:
        return None
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / CLOCK_TICKS


def tree_rss_mb(root: int | None) -> float | None:
    if root is None:
        return None
    total_kb = 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return round(total_kb / 1024, 1)


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy so far (all CPUs; /proc/stat, idle and iowait excluded)."""
    values = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / CLOCK_TICKS


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Snapshot:
    wall: float
    server: float | None
    driver: float
    machine: float


def snapshot(server_pid: int | None) -> Snapshot:
    return Snapshot(time.perf_counter(), tree_cpu_seconds(server_pid), self_cpu_seconds(), machine_busy_seconds())


def cpu_figures(before: Snapshot, after: Snapshot, ops: int) -> dict[str, float | None]:
    """Server CPU per operation and in % of one core; the driver's and the rest of the machine's
    (busy minus server minus driver) in % of one core: a high `other` means a disturbed run."""
    wall = max(after.wall - before.wall, 1e-9)
    server = after.server - before.server if after.server is not None and before.server is not None else None
    driver = after.driver - before.driver
    other = (after.machine - before.machine) - (server or 0.0) - driver
    return {
        "server_cpu_ms_per_op": round(server * 1000 / ops, 3) if server is not None and ops else None,
        "server_cpu_pct": round(server / wall * 100, 1) if server is not None else None,
        "driver_cpu_pct": round(driver / wall * 100, 1),
        "other_cpu_pct": round(max(other, 0.0) / wall * 100, 1),
    }


# -- the machine ---------------------------------------------------------------------------------


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git(*args: str, repo: Path = REPO) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=True)  # noqa: S603, S607 - fixed arguments
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def checkout_info(directory: Path) -> dict[str, Any]:
    """The code a server runs: its directory, short commit (`git rev-parse --short HEAD`) and
    whether tracked files have changes not committed."""
    dirty = _git("status", "--porcelain", "--untracked-files=no", repo=directory)
    return {
        "dir": str(directory),
        "commit": _git("rev-parse", "--short", "HEAD", repo=directory),
        "dirty": bool(dirty) if dirty is not None else None,
    }


def describe_checkout(info: dict[str, Any]) -> str:
    """`3b0943c (/tmp/before)`, with `+ uncommitted changes` when there are."""
    changes = ", + uncommitted changes" if info["dirty"] else ""
    return f"{info['commit'] or 'no git commit'} ({info['dir']}{changes})"


def machine_info() -> dict[str, Any]:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "cpus_available": sorted(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(dirty) if dirty is not None else None,
        "packages": {
            name: _package_version(name) for name in ("ostiary", "aiohttp", "uvloop", "sqlalchemy", "uvicorn", "authlib")
        },
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# -- tables --------------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(line.rstrip() for line in lines)


RUN_COLUMNS = [
    ("ok", "ok", 0),
    ("err", "errors", 0),
    ("req/s", "rps", 1),
    ("p50 ms", "p50_ms", 2),
    ("p95 ms", "p95_ms", 2),
    ("p99 ms", "p99_ms", 2),
    ("max ms", "max_ms", 1),
    ("srv ms/op", "server_cpu_ms_per_op", 3),
    ("srv cpu%", "server_cpu_pct", 0),
    ("srv MB", "server_rss_mb", 0),
    ("drv cpu%", "driver_cpu_pct", 0),
    ("other%", "other_cpu_pct", 0),
]


MEDIAN_KEYS = ["rps", "p50_ms", "p95_ms", "p99_ms", "max_ms", "server_cpu_ms_per_op", "server_cpu_pct", "server_rss_mb"]


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (scenario, target): the median of each figure over the rounds, errors summed."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["scenario"], row["target"]), []).append(row)
    out = []
    for (scenario, target), group in groups.items():
        med: dict[str, Any] = {"scenario": scenario, "target": target, "rounds": len(group)}
        med["ok"] = sum(r["ok"] for r in group)
        med["errors"] = sum(r["errors"] for r in group)
        for key in MEDIAN_KEYS:
            values = [r[key] for r in group if r.get(key) is not None]
            med[key] = round(statistics.median(values), 3) if values else None
        for key in ("driver_cpu_pct", "other_cpu_pct"):
            values = [r[key] for r in group if r.get(key) is not None]
            med[key] = round(max(values), 1) if values else None  # the worst round: was any disturbed?
        out.append(med)
    return out


def medians_table(meds: list[dict[str, Any]]) -> str:
    header = ["scenario", "target", "rounds", *(c[0] for c in RUN_COLUMNS)]
    body = [[m["scenario"], m["target"], str(m["rounds"]), *(fmt(m.get(key), d) for _, key, d in RUN_COLUMNS)] for m in meds]
    return render(header, body)


RATIO_KEYS = [("req/s", "rps"), ("srv ms/op", "server_cpu_ms_per_op"), ("p99 ms", "p99_ms")]


def ratios(meds: list[dict[str, Any]], a: str, b: str) -> list[dict[str, Any]]:
    """A/B of the medians, per scenario run on both."""
    by_key = {(m["scenario"], m["target"]): m for m in meds}
    out = []
    for scenario in dict.fromkeys(m["scenario"] for m in meds):
        ma, mb = by_key.get((scenario, a)), by_key.get((scenario, b))
        if ma is None or mb is None:
            continue
        row: dict[str, Any] = {"scenario": scenario, "a": a, "b": b}
        for _, key in RATIO_KEYS:
            va, vb = ma.get(key), mb.get(key)
            row[key] = round(va / vb, 3) if va is not None and vb else None
        out.append(row)
    return out


def ratios_table(rows: list[dict[str, Any]]) -> str:
    header = ["scenario", "", "", *(f"{label} A/B" for label, _ in RATIO_KEYS)]
    body = [[r["scenario"], "", "", *(fmt(r.get(key), 2) for _, key in RATIO_KEYS)] for r in rows]
    return render(header, body)


def breakdown_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The HTTP requests inside multi-request operations, median latency each."""
    lines = []
    for r in rows:
        parts = r.get("requests") or {}
        if len(parts) > 1:
            inner = ", ".join(f"{label} {fmt(v['p50_ms'], 2)} ms" for label, v in parts.items())
            lines.append(f"  {r['scenario']} {r['target']} r{r.get('round', '')}: p50 per request: {inner}")
    return lines


def error_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        if r["errors"]:
            kinds = ", ".join(f"{k} x{n}" for k, n in r["error_kinds"].items())
            lines.append(f"  {r['scenario']} {r['target']} r{r.get('round', '')}: {kinds}")
            lines.extend(f"      {m}" for m in r.get("error_messages", []))
    return lines
