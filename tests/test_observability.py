"""Audit and observability: every security event as an audit row and one JSON log
line (time, event, user, client, resource, IP, request id; never a token, code, secret or
password); an access log of route templates; Prometheus metrics at /metrics for the
configured networks only; a request id on every response (tests/test_edge.py)."""

from __future__ import annotations

import json
import logging

import pytest

from app.infra.logs import JsonFormatter
from tests.support import PASSWORD, admin_client, create_user, introspect, login, refresh, signed_in_flow, tokens_for

pytestmark = pytest.mark.anyio


def json_lines(caplog, logger: str) -> list[dict]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == logger]


async def test_security_events_are_json_lines_with_context_and_no_secrets(client, runtime, caplog):
    caplog.set_level(logging.INFO, logger="ostiary")
    reg = await signed_in_flow(client, runtime)
    first = await tokens_for(client, reg["client_id"])
    second = (await refresh(client, reg["client_id"], first["refresh_token"])).json()
    await client.post("/revoke", data={"token": second["refresh_token"], "client_id": reg["client_id"]})
    lines = json_lines(caplog, "ostiary.audit")
    events = [line["event"] for line in lines]
    for expected in [
        "login.succeeded",
        "client.registered",
        "consent.granted",
        "code.issued",
        "token.issued",
        "token.refreshed",
        "token.revoked",
    ]:
        assert expected in events, (expected, events)
    issued = next(line for line in lines if line["event"] == "token.issued")
    assert issued["client_id"] == reg["client_id"] and issued["resource"] == "https://mcp.example.com/mcp"
    assert issued["ip"] == "127.0.0.1" and len(issued["request_id"]) >= 16 and issued["time"].endswith("Z")
    assert issued["user_id"]
    text = caplog.text + json.dumps(lines)
    for secret in [
        first["access_token"],
        first["refresh_token"],
        second["refresh_token"],
        PASSWORD,
        reg.get("registration_access_token", "-"),
    ]:
        assert secret not in text


async def test_access_log_names_routes_not_paths(client, runtime, caplog):
    """Paths can carry one-time handles (/consent/{handle}, /setup-password/{token}): the access
    log and the metrics carry the route template."""
    caplog.set_level(logging.INFO, logger="ostiary")
    await client.get("/consent/a-secret-handle-value")
    await client.get("/setup-password/a-one-time-link-value")
    lines = json_lines(caplog, "ostiary.access")
    routes = {line["route"] for line in lines}
    assert "/consent/{handle}" in routes
    assert not any("a-secret-handle-value" in json.dumps(line) or "a-one-time-link-value" in json.dumps(line) for line in lines)
    line = lines[0]
    assert set(line) >= {"time", "method", "route", "status", "duration_ms", "ip", "request_id"}


async def test_failed_sign_ins_are_counted_and_audited(client, runtime, caplog):
    caplog.set_level(logging.INFO, logger="ostiary")
    create_user(runtime, "bob")
    before = (await client.get("/metrics")).text
    assert (await login(client, "bob", "wrong password")).status_code == 401
    failed = [line for line in json_lines(caplog, "ostiary.audit") if line["event"] == "login.failed"]
    assert failed and failed[0]["username"] == "bob" and "wrong password" not in json.dumps(failed)
    after = (await client.get("/metrics")).text
    assert _metric(after, "ostiary_signin_failures_total") == _metric(before, "ostiary_signin_failures_total") + 1


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + labels + " ") or (not labels and line.startswith(name + " ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_for_prometheus(client, runtime):
    reg = await signed_in_flow(client, runtime)
    rs = admin_client(runtime)
    tokens = await tokens_for(client, reg["client_id"])
    await introspect(client, tokens["access_token"], rs)
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    body = response.text
    assert 'ostiary_http_requests_total{method="POST",route="/token",status="200"}' in body
    assert 'ostiary_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/token"}' in body
    assert _metric(body, "ostiary_tokens_issued_total", '{grant_type="authorization_code"}') >= 1
    assert "ostiary_refresh_token_reuse_total" in body and "ostiary_rate_limited_total" in body
    assert 0 <= _metric(body, "ostiary_active_signing_key_age_seconds") < 10 * 365 * 86400
    assert tokens["access_token"] not in body


@pytest.mark.parametrize("settings_overrides", [{"metrics_networks": ["10.0.0.0/8"]}])
async def test_metrics_only_for_the_configured_networks(client, new_client):
    assert (await client.get("/metrics")).status_code == 403  # 127.0.0.1 is not in 10/8
    inside = new_client(client_addr=("10.1.2.3", 40000))
    assert (await inside.get("/metrics")).status_code == 200
