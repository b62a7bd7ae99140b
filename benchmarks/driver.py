"""The load driver: aiohttp on uvloop, `concurrency` workers, one target and one scenario at a
time; a warm-up, then a timed window whose operations, latencies and CPU are recorded."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from benchmarks import report
from benchmarks.browser import Fail, Http, Jar, Stats
from benchmarks.protocol import Protocol, TargetState, Worker
from benchmarks.targets import Target

REQUEST_TIMEOUT = 10.0
MAX_RAMP = 20.0  # seconds: the longest warm-up that staggered starts may need


@dataclass(frozen=True)
class Settings:
    concurrency: int
    duration: float
    warmup: float
    smoke_ops: int | None  # --smoke: this many operations per worker instead of a duration


def _pct(values: list[float], p: float) -> float | None:
    """The p-th percentile, linear between closest ranks; in milliseconds."""
    if not values:
        return None
    k = (len(values) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return round((values[lo] + (values[hi] - values[lo]) * (k - lo)) * 1000, 3)


class Driver:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _session(self) -> aiohttp.ClientSession:
        # A new pool per run: no keep-alive connection the server closed while idle is reused.
        connector = aiohttp.TCPConnector(limit=self.settings.concurrency + 8)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar())

    async def setup(self, target: Target) -> TargetState:
        """Discovery, the driver's clients (RFC 7591), every worker signed in once."""
        state = TargetState(target, introspector=target.introspector)
        state.workers = [Worker(i) for i in range(self.settings.concurrency)]
        async with self._session() as session:
            proto = Protocol(state, Http(session, Stats()))
            await proto.discover()
            await self._clients(proto)
            await asyncio.gather(*(self._sign_in(proto, w) for w in state.workers))
        return state

    async def _clients(self, proto: Protocol) -> None:
        state = proto.s
        state.client_id = (await proto.register())["client_id"]
        if state.target.introspector is None:
            client = await proto.register(confidential=True)
            state.introspector = (client["client_id"], client["client_secret"])
        state.stale = False

    async def _sign_in(self, proto: Protocol, worker: Worker) -> None:
        """The worker's sign-in dance with its own cookies; the code gives it fresh tokens."""
        t = proto.t
        code, verifier = await proto.sign_in(worker.jar, t.username, t.password, t.signin_params)
        tokens = await proto.exchange(code, verifier)
        worker.access_token, worker.refresh_token = tokens["access_token"], tokens.get("refresh_token")

    async def _prepare(self, proto: Protocol, scenario: str) -> None:
        """Outside the timing: clients set up again after an eviction, and every worker signed
        in with fresh tokens (an access token introspected must not have expired meanwhile)."""
        state = proto.s
        if scenario in ("discovery", "jwks", "register"):
            return
        if state.stale or state.target.client_store_limit is not None:
            # A store of ~1000 entries forgets idle clients (the introspector above all) within
            # one run of another scenario: new clients, and the workers' consent for them.
            await self._clients(proto)
            if state.stale:
                for worker in state.workers:
                    worker.jar = Jar()
        if scenario != "firstlogin":
            await asyncio.gather(*(self._sign_in(proto, w) for w in state.workers))
        needed = {"refresh": "refresh_token", "introspect": state.target.introspect_kind}.get(scenario)
        if needed and any(getattr(w, needed) is None for w in state.workers):
            raise Fail(f"{scenario}: the sign-in brought no {needed} (offline_access not granted?)")

    def _operation(self, scenario: str, proto: Protocol) -> Callable[[Worker], Awaitable[None]]:
        state, t = proto.s, proto.t

        async def discovery(_: Worker) -> None:
            r = await proto.http.request("GET", URL(state.discovery_url))
            if r.status != 200 or not r.json().get("issuer"):
                raise Fail(f"discovery: HTTP {r.status}")

        async def jwks(_: Worker) -> None:
            r = await proto.http.request("GET", state.endpoint("jwks_uri"))
            if r.status != 200 or not r.json().get("keys"):
                raise Fail(f"jwks: HTTP {r.status}")

        async def register(_: Worker) -> None:
            await proto.register()

        async def authcode(w: Worker) -> None:
            code, verifier = await proto.authorize_returning(w.jar)
            await proto.exchange(code, verifier)

        async def refresh(w: Worker) -> None:
            if w.refresh_token is None:
                raise Fail("refresh: no refresh token")
            try:
                tokens = await proto.refresh(w.refresh_token)
            except Fail:
                w.refresh_token = None  # the chain is broken: set up again outside the timing
                raise
            w.access_token = tokens["access_token"]
            w.refresh_token = tokens.get("refresh_token", w.refresh_token)  # rotation: always the newest

        async def introspect(w: Worker) -> None:
            token = w.refresh_token if t.introspect_kind == "refresh_token" else w.access_token
            if token is None:
                raise Fail("introspect: no token")
            await proto.introspect(token)

        async def firstlogin(_: Worker) -> None:
            if t.firstlogin == "new-users":
                n = state.next_first_user
                if n >= t.first_user_count:
                    raise Fail("firstlogin: no pre-seeded first-time user left", f"{t.first_user_count} used")
                state.next_first_user += 1
                username = f"{t.first_user_prefix}{n}"
            else:
                username = t.username
            code, verifier = await proto.sign_in(Jar(), username, t.password, t.signin_params)
            await proto.exchange(code, verifier)

        operations: dict[str, Callable[[Worker], Awaitable[None]]] = {
            "discovery": discovery,
            "jwks": jwks,
            "register": register,
            "authcode": authcode,
            "refresh": refresh,
            "introspect": introspect,
            "firstlogin": firstlogin,
        }
        return operations[scenario]

    async def run(self, state: TargetState, scenario: str) -> dict[str, Any]:
        stats = Stats()
        pid = state.target.server_pid()
        async with self._session() as session:
            proto = Protocol(state, Http(session, stats))
            await self._prepare(proto, scenario)
            operation = self._operation(scenario, proto)
            stop = asyncio.Event()
            smoke = self.settings.smoke_ops

            async def worker(w: Worker, delay: float) -> None:
                await asyncio.sleep(delay)
                done = 0
                while not stop.is_set() and (smoke is None or done < smoke):
                    if scenario == "refresh" and w.refresh_token is None:
                        try:
                            await self._sign_in(proto, w)  # re-establish the chain, not timed
                        except Fail as exc:
                            stats.error(f"re-establish: {exc.kind}", exc.detail)
                            await asyncio.sleep(0.05)
                            continue
                    started = time.perf_counter()
                    try:
                        await operation(w)
                    except Fail as exc:
                        stats.error(exc.kind, exc.detail)
                        await asyncio.sleep(0.01)  # no tight loop of failures
                    except (ValueError, KeyError) as exc:  # a body that is not what the protocol says
                        stats.error("bad response", repr(exc))
                    else:
                        stats.ok(time.perf_counter() - started)
                    done += 1

            stagger, warmup = 0.0, self.settings.warmup
            if smoke is None:
                stagger = await self._lead_time(operation, state.workers[0])
                warmup = max(warmup, stagger * len(state.workers))
            tasks = [asyncio.create_task(worker(w, w.index * stagger)) for w in state.workers]
            try:
                if smoke is None:
                    await asyncio.sleep(warmup)
                before = report.snapshot(pid)
                stats.active = True
                if smoke is None:
                    await asyncio.sleep(self.settings.duration)
                else:
                    await asyncio.gather(*tasks)
                stats.active = False
                after = report.snapshot(pid)
                stop.set()
                await asyncio.gather(*tasks)  # the operations under way end (untimed)
            finally:  # interrupted: no worker may outlive the session
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        if scenario == "register" and state.target.client_store_limit is not None:
            state.stale = True
        return self._row(state, scenario, stats, before, after)

    async def _lead_time(self, operation: Callable[[Worker], Awaitable[None]], worker: Worker) -> float:
        """One operation alone, untimed: its latency staggers the workers' starts and stretches
        the warm-up to `concurrency` times it. Workers started together on slow operations
        (argon2 at sign-in takes a core for a quarter of a second) would otherwise finish in
        waves, and a short run could see none of them end."""
        started = time.perf_counter()
        with contextlib.suppress(Fail, ValueError, KeyError):  # counted, if it recurs, in the run
            await operation(worker)
        return min(time.perf_counter() - started, MAX_RAMP / self.settings.concurrency)

    def _row(
        self, state: TargetState, scenario: str, stats: Stats, before: report.Snapshot, after: report.Snapshot
    ) -> dict[str, Any]:
        lat = sorted(stats.latencies)
        wall = after.wall - before.wall
        ok = len(lat)
        return {
            "target": state.target.name,
            "scenario": scenario,
            "ok": ok,
            "errors": sum(stats.errors.values()),
            "error_kinds": dict(stats.errors.most_common()),
            "error_messages": stats.messages,
            "wall_s": round(wall, 3),
            "rps": round(ok / wall, 1) if wall > 0 else None,
            "p50_ms": _pct(lat, 50),
            "p95_ms": _pct(lat, 95),
            "p99_ms": _pct(lat, 99),
            "max_ms": round(lat[-1] * 1000, 3) if lat else None,
            "mean_ms": round(statistics.fmean(lat) * 1000, 3) if lat else None,
            **report.cpu_figures(before, after, ok),
            "server_rss_mb": report.tree_rss_mb(state.target.server_pid()),
            "requests": {
                label: {"count": len(values), "p50_ms": _pct(sorted(values), 50)}
                for label, values in stats.requests.items()
                if values
            },
        }
