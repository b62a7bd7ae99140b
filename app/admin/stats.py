"""The numbers on the overview: counts, scope usage per MCP server, and the daily chart.

The tiles and the chart say the same thing: "issued" and "failures" have one definition each
(ISSUED, FAILURES), days are UTC days, and today's tiles are the chart's last bar."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.infra.db import now
from app.models import Resource
from app.oauth.scopes import PROTOCOL_SCOPES
from app.stores import audit as audit_store
from app.stores import clients as clients_store
from app.stores import consents as consents_store
from app.stores import resources as resources_store
from app.stores import users as users_store

DAY = 86400
ISSUED = ("token.issued", "token.refreshed")
# A failure is one of these, wherever the console counts failures.
FAILURE_KINDS = {
    "signin": ("login.failed", "login.mfa_failed"),  # a wrong password or second factor
    "reuse": ("token.reuse_detected",),  # a used refresh token presented again
    "replay": ("code.replayed",),  # an authorization code redeemed twice
}
SIGNIN_FAILURES = FAILURE_KINDS["signin"]
FAILURES = tuple(event for events in FAILURE_KINDS.values() for event in events)
CHART_DAYS = 14


def counts(db: Session, today: int) -> dict[str, Any]:
    """The tiles. `today`: the epoch day number the chart ends on."""
    since = today * DAY
    return {
        **users_store.counts(db),
        "clients": clients_store.counts_by_kind(db),
        "grants": consents_store.count(db),
        "failures_by_kind": {kind: audit_store.count_since(db, events, since) for kind, events in FAILURE_KINDS.items()},
    }


@dataclass
class ScopeUse:
    name: str
    declared: bool
    grants: int
    clients: int
    users: int


def scope_usage(resources: list[Resource], rows: list[tuple[int, str, str, str]]) -> dict[int, list[ScopeUse]]:
    """For each resource, each scope: how many grants, distinct clients and distinct users hold
    it — declared scopes in catalogue order (unused ones too), then protocol scopes in use."""
    held: dict[tuple[int, str], list[tuple[str, str]]] = {}
    for resource_id, scope, user_id, client_id in rows:
        for name in scope.split():
            held.setdefault((resource_id, name), []).append((user_id, client_id))
    usage: dict[int, list[ScopeUse]] = {}
    for resource in resources:
        names = [s.name for s in resource.scopes] + [p for p in PROTOCOL_SCOPES if (resource.id, p) in held]
        usage[resource.id] = [
            ScopeUse(
                name=name,
                declared=name not in PROTOCOL_SCOPES,
                grants=len(pairs),
                clients=len({c for _, c in pairs}),
                users=len({u for u, _ in pairs}),
            )
            for name in names
            for pairs in [held.get((resource.id, name), [])]
        ]
    return usage


@dataclass
class Bar:
    x: float
    y: float
    height: float
    value: int


@dataclass
class ChartDay:
    label: str
    issued: Bar
    failed: Bar
    labelled: bool  # shown on the axis: every other day, counting back from today (always shown)


@dataclass
class Chart:
    bar: int
    width: int
    height: int
    baseline: int
    peak: int
    days: list[ChartDay]
    total_issued: int
    total_failed: int


def daily_chart(issued: dict[int, int], failed: dict[int, int], today: int, days: int = CHART_DAYS) -> Chart:
    """Bar geometry for an inline SVG: per day (epoch day numbers, oldest first), tokens issued
    and failures side by side, scaled to the busiest day."""
    slot, bar, top, plot = 40, 14, 12, 120
    numbers = list(range(today - days + 1, today + 1))
    peak = max([issued.get(d, 0) for d in numbers] + [failed.get(d, 0) for d in numbers] + [1])

    def make(x: float, value: int) -> Bar:
        h = round(plot * value / peak, 1)
        return Bar(x=x, y=top + plot - h, height=h, value=value)

    chart_days = [
        ChartDay(
            label=time.strftime("%m-%d", time.gmtime(d * DAY)),
            issued=make(i * slot + 5, issued.get(d, 0)),
            failed=make(i * slot + 5 + bar + 2, failed.get(d, 0)),
            labelled=(today - d) % 2 == 0,
        )
        for i, d in enumerate(numbers)
    ]
    return Chart(
        bar=bar,
        width=days * slot,
        height=top + plot + 22,
        baseline=top + plot,
        peak=peak,
        days=chart_days,
        total_issued=sum(issued.get(d, 0) for d in numbers),
        total_failed=sum(failed.get(d, 0) for d in numbers),
    )


def chart(db: Session, today: int) -> Chart:
    since = (today - CHART_DAYS + 1) * DAY
    return daily_chart(audit_store.daily_counts(db, ISSUED, since), audit_store.daily_counts(db, FAILURES, since), today)


def overview(db: Session) -> dict[str, Any]:
    today = now() // DAY
    resources = resources_store.all_resources(db)
    daily = chart(db, today)
    tiles = counts(db, today)
    # Today's tiles are the chart's last bars: one query, one definition.
    tiles["issued_today"] = daily.days[-1].issued.value
    tiles["failures_today"] = daily.days[-1].failed.value
    return {
        "counts": tiles,
        "resources": resources,
        "usage": scope_usage(resources, consents_store.scope_rows(db)),
        "chart": daily,
    }
