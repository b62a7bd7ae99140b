"""Ostiary's benchmark, in one command (from the repository root):

    pip install -e ".[bench]"
    python -m benchmarks.run                      # every scenario, 16 workers, 3 rounds of 10 s, SQLite
    python -m benchmarks.run --smoke              # a few operations of each, exit status 1 on any error (CI)
    python -m benchmarks.run -s authcode,refresh -c 32 -d 20 -r 5
    python -m benchmarks.run --database-url postgresql://postgres@127.0.0.1:5432/postgres
    python -m benchmarks.run --peer /path/to/bench-peer         # A/B against oidc-provider
    git worktree add /tmp/before <commit> && python -m benchmarks.run --baseline /tmp/before
    python -m benchmarks.run --scale --scale-factor 0.1         # on a database already full of data

What it does:

1. A fresh database: an SQLite file in a temporary directory, or with --database-url a
   throwaway database `ostiary_bench_<random>` created on that PostgreSQL server and dropped at
   the end. Migrated and seeded with the real CLI (`ostiary migrate`, `users create alice`,
   `resources add http://127.0.0.1:9400/mcp`, `clients add --name bench-rs --confidential
   --resource-server ...`); the first-time users of `firstlogin` (bench-u-<n>) are inserted in
   bulk (benchmarks/seed.py), and with --scale millions of rows besides.
2. `ostiary serve --port 8400` pinned to one core (`taskset -c 0`, --server-cpu), logging to
   <output>.server.log; it is stopped at the end, also on an error or Ctrl-C.
3. The driver (benchmarks/driver.py: aiohttp on uvloop) pinned to another core (--driver-cpu)
   runs each scenario with -c workers for 1 s of warm-up and -d seconds, -r rounds; medians.
   Every worker signs in as alice through the real sign-in and consent pages first.
4. With --peer DIR (a bench-peer checkout, installed with its install.sh), the reference
   server (node-oidc-provider, `SIGNING_ALG=RS256 peer.sh start-mcp`, port 4103) runs every
   scenario too, alternating A B A B ..., and the ratios Ostiary/peer are printed.
5. With --baseline DIR (another checkout of this repository, e.g. `git worktree add /tmp/before
   <commit>`), a second Ostiary, `ostiary-baseline`, runs DIR's code: its own fresh database of
   the same kind (`baseline.db` beside the other, or a second throwaway PostgreSQL database),
   migrated and seeded by DIR's CLI (`python -m app.cli` in DIR with PYTHONPATH=DIR, checked to
   import DIR's app), its own introspection client, and `ostiary serve` of DIR on --port + 1,
   with the same pinning, --workers and --server-env, logging to <output>.baseline.log. The
   first-time users and --scale rows go in with benchmarks/seed.py on this checkout's models
   when they fit the baseline's schema as migrated (benchmarks.seed.schema_differences), else
   with seed.py on DIR's models; if that fails too, the baseline skips firstlogin (a note says
   so). Each scenario runs on ostiary, ostiary-baseline, then the peer, round after round; the
   ratios are ostiary/peer and ostiary-baseline/peer (with --peer) and ostiary/ostiary-baseline.
6. The results go to -o (default benchmarks/results/<UTC time>.json) with the machine, the
   settings and the commit of each checkout (`checkouts`, also printed first); the tables are
   printed.

Scenarios (one operation each):
  discovery   GET /.well-known/oauth-authorization-server
  jwks        GET jwks_uri
  authcode    a returning user: GET /authorize -> 302 to redirect_uri with a code, POST /token
  refresh     POST /token grant_type=refresh_token, always with the newest token (rotation)
  introspect  POST /introspect (RFC 7662) with the MCP server's credentials
  firstlogin  a new user's whole sign-in: authorize, sign-in form, consent form, code, token
  register    POST /register (RFC 7591), a new public client each time (always run last)

Columns: req/s = operations per second; latency percentiles per operation; srv ms/op = the
server's CPU time (user + system, the whole process tree) per operation; srv cpu% and drv cpu%
in % of one core; srv MB = the server's resident memory after the run; other% = the rest of
the machine's CPU meanwhile (in % of one core): more than a few % means a disturbed run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from benchmarks import report, servers, targets
from benchmarks.browser import Fail
from benchmarks.driver import MAX_RAMP, Driver, Settings
from benchmarks.protocol import TargetState

RESULTS = Path(__file__).resolve().parent / "results"
SCALE_DEFAULTS = {"refresh-tokens": 1_000_000, "clients": 100_000, "grants": 100_000, "audit": 1_000_000}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description="Ostiary's benchmark.", formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-s", "--scenarios", default=",".join(targets.SCENARIOS), help="comma-separated (default: all)")
    p.add_argument("-c", "--concurrency", type=int, default=16, help="workers (default 16)")
    p.add_argument("-d", "--duration", type=float, default=10.0, help="seconds per run, after the warm-up (default 10)")
    p.add_argument("-r", "--rounds", type=int, default=3, help="rounds; figures are medians over them (default 3)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up before each run (default 1)")
    p.add_argument("-o", "--output", type=Path, help="JSON results (default benchmarks/results/<UTC time>.json)")
    p.add_argument("--port", type=int, default=8400, help="Ostiary's port (default 8400)")
    p.add_argument("--workers", type=int, default=1, help="ostiary serve --workers (default 1)")
    p.add_argument("--server-cpu", default="0", help="taskset -c for the servers (default 0; '' for no pinning)")
    p.add_argument("--driver-cpu", default="1", help="the driver's core (default 1; '' for no pinning)")
    p.add_argument(
        "--database-url", help="a PostgreSQL server, e.g. postgresql://postgres@127.0.0.1:5432/postgres (default: SQLite)"
    )
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE", help="extra setting for ostiary serve")
    p.add_argument("--peer", type=Path, metavar="DIR", help="a bench-peer checkout: A/B against its oidc-provider")
    p.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="another checkout of this repository (git worktree add DIR <commit>): served on --port + 1 as ostiary-baseline",
    )
    p.add_argument("--first-users", type=int, help="pre-seeded first-time users for firstlogin (default: enough for the runs)")
    p.add_argument(
        "--smoke", action="store_true", help="1 worker, --smoke-ops operations per scenario, 1 round; exit 1 on any error"
    )
    p.add_argument("--smoke-ops", type=int, default=5, help="operations per scenario with --smoke (default 5)")
    p.add_argument("--scale", action="store_true", help="fill the database with large data first (python -m benchmarks.seed)")
    p.add_argument("--scale-factor", type=float, default=1.0, help="multiply the --scale counts (default 1)")
    for name, default in SCALE_DEFAULTS.items():
        p.add_argument(f"--scale-{name}", type=int, default=default, metavar="N", help=f"with --scale (default {default:,})")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (the SQLite database) for a look")
    args = p.parse_args(argv)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in targets.SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(targets.SCENARIOS)}")
    # `register` last in each round: it fills the peer's client store (an LRU) and evicts the rest.
    args.scenarios = sorted(dict.fromkeys(scenarios), key=lambda s: s == "register")
    if args.database_url and not args.database_url.startswith("postgresql://"):
        p.error("--database-url takes a postgresql:// URL (SQLite is the default)")
    if args.baseline:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "app" / "cli.py").is_file() or not (args.baseline / "migrations").is_dir():
            p.error(f"--baseline {args.baseline}: not a checkout of this repository (no app/cli.py and migrations/)")
        if args.peer and args.port + 1 == targets.PEER_PORT:
            p.error(f"--baseline serves on --port + 1 = {args.port + 1}, the peer's port")
    if args.smoke:
        args.concurrency, args.rounds, args.warmup = 1, 1, 0.0
    if min(args.concurrency, args.rounds, args.smoke_ops) < 1 or args.duration <= 0:
        p.error("-c, -r, -d and --smoke-ops must be positive")
    if args.first_users is None:
        # At most ~40 sign-ins a second (argon2 allows far fewer a core), over the longest warm-up.
        ops = args.smoke_ops if args.smoke else int((args.duration + max(args.warmup, MAX_RAMP)) * 40)
        args.first_users = max(ops * args.rounds + args.concurrency, 20 if args.smoke else 500)
    return args


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C (inside the event loop: bench() cancels)


def _pin_driver(cpu: str) -> str | None:
    available = os.sched_getaffinity(0)
    if not cpu or len(available) < 2:
        return None
    if int(cpu) not in available:
        raise SystemExit(f"--driver-cpu {cpu} is not one of this machine's CPUs {sorted(available)}")
    os.sched_setaffinity(0, {int(cpu)})
    return cpu


LINE = "{scenario:<11} {target:<16} {round:>2} {ok:>7} {err:>5} {rps:>9} {p50:>8} {p95:>8} {p99:>8} {max:>8} {cpu:>9} {srv:>8} {mb:>6} {drv:>8} {other:>6}"


def _line(row: dict[str, Any] | None) -> str:
    if row is None:
        return LINE.format(
            scenario="scenario",
            target="target",
            round="r",
            ok="ok",
            err="err",
            rps="req/s",
            p50="p50 ms",
            p95="p95 ms",
            p99="p99 ms",
            max="max ms",
            cpu="srv ms/op",
            srv="srv cpu%",
            mb="srv MB",
            drv="drv cpu%",
            other="other%",
        )
    f = report.fmt
    return LINE.format(
        scenario=row["scenario"],
        target=row["target"],
        round=row.get("round", ""),
        ok=row["ok"],
        err=row["errors"],
        rps=f(row["rps"]),
        p50=f(row["p50_ms"], 2),
        p95=f(row["p95_ms"], 2),
        p99=f(row["p99_ms"], 2),
        max=f(row["max_ms"], 1),
        cpu=f(row["server_cpu_ms_per_op"], 3),
        srv=f(row["server_cpu_pct"], 0),
        mb=f(row["server_rss_mb"], 0),
        drv=f(row["driver_cpu_pct"], 0),
        other=f(row["other_cpu_pct"], 0),
    )


def _failed_row(target: targets.Target, scenario: str, exc: Exception) -> dict[str, Any]:
    kind, detail = (exc.kind, exc.detail) if isinstance(exc, Fail) else (type(exc).__name__, str(exc))
    return {
        "target": target.name,
        "scenario": scenario,
        "ok": 0,
        "errors": 1,
        "error_kinds": {f"set-up: {kind}": 1},
        "error_messages": [f"set-up: {kind}: {detail}"],
        **dict.fromkeys(["wall_s", "rps", "p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms"]),
        **dict.fromkeys(["server_cpu_ms_per_op", "server_cpu_pct", "driver_cpu_pct", "other_cpu_pct", "server_rss_mb"]),
        "requests": {},
    }


@dataclass
class Baseline:
    db: servers.Database
    introspector: tuple[str, str]
    first_users: int
    skip: tuple[str, ...]
    notes: list[str]


def _prepare_baseline(code: Path, db: servers.Database, port: int, first_users: int, scale_args: list[str]) -> Baseline:
    """The baseline's database, as the main one: migrated and seeded by the CLI of `code`; the
    first-time users and --scale rows with this checkout's models if they fit the schema that
    `code` migrated, else with benchmarks/seed.py on the models of `code`."""
    issuer = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    introspector = servers.seed_with_cli(db, issuer, code=code)
    notes: list[str] = []
    skip: tuple[str, ...] = ()
    seed_code = servers.REPO
    if first_users or scale_args:
        from benchmarks import seed  # imports the app's models: only where they are needed

        tables = [seed.USERS] if first_users and not scale_args else list(seed.SCALE_TABLES)
        blocking, harmless = seed.schema_differences(db.url, tables)
        if blocking:
            seed_code = code
            notes.append(f"seeded with benchmarks/seed.py on its own models: this checkout's do not fit ({'; '.join(blocking)})")
        elif harmless:
            notes.append(f"seeded with this checkout's models, which leave NULL or the default in {', '.join(harmless)}")
    if first_users:
        try:
            servers.seed_first_users(db, issuer, prefix=targets.FIRST_USER_PREFIX, count=first_users, code=seed_code)
        except RuntimeError as exc:
            if seed_code == servers.REPO:
                raise
            first_users, skip = 0, ("firstlogin",)
            notes.append(f"firstlogin: skipped: its first-time users could not be seeded ({exc})")
    print(f"baseline database ready in {time.perf_counter() - t0:.1f} s ({first_users} first-time users)", file=sys.stderr)
    if scale_args:
        servers.seed_scale(db, issuer, scale_args, code=seed_code)
    return Baseline(db, introspector, first_users, skip, notes)


async def bench(args: argparse.Namespace, under_test: list[targets.Target]) -> tuple[list[dict[str, Any]], list[TargetState]]:
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)  # as Ctrl-C does
    driver = Driver(Settings(args.concurrency, args.duration, args.warmup, args.smoke_ops if args.smoke else None))
    states = []
    for target in under_test:
        try:
            states.append(await driver.setup(target))
        except (Fail, ValueError, KeyError) as exc:
            detail = f"{exc.kind}: {exc.detail}" if isinstance(exc, Fail) else repr(exc)
            raise SystemExit(f"{target.name}: the set-up (discovery, registration, sign-in) failed: {detail}") from None
    rows: list[dict[str, Any]] = []
    print(_line(None), flush=True)
    for round_no in range(1, args.rounds + 1):
        for scenario in args.scenarios:
            for state in states:  # A B A B ...: every target under the same conditions, in turn
                if scenario in state.target.skip:
                    continue
                try:
                    row = await driver.run(state, scenario)
                except (Fail, ValueError, KeyError) as exc:  # the set-up of this run failed
                    row = _failed_row(state.target, scenario, exc)
                row["round"] = round_no
                rows.append(row)
                print(_line(row), flush=True)
    return rows, states


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    output: Path = args.output or RESULTS / f"{started}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    server_log = output.with_suffix(".server.log")
    baseline_log = output.with_suffix(".baseline.log")
    peer_log = output.with_suffix(".peer.log")
    signal.signal(signal.SIGTERM, _on_sigterm)
    machine = report.machine_info()
    server_cpu = args.server_cpu or None
    checkouts = {"ostiary": report.checkout_info(servers.REPO)}
    if args.baseline:
        checkouts["ostiary-baseline"] = report.checkout_info(args.baseline)

    with ExitStack() as stack:
        workdir = servers.scratch_dir()
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        else:
            print(f"keeping {workdir}", file=sys.stderr)
        db = stack.enter_context(servers.fresh_database(args.database_url, workdir))
        issuer = f"http://127.0.0.1:{args.port}"
        t0 = time.perf_counter()
        introspector = servers.seed_with_cli(db, issuer)
        first_users = args.first_users if "firstlogin" in args.scenarios else 0
        if first_users:
            servers.seed_first_users(db, issuer, prefix=targets.FIRST_USER_PREFIX, count=first_users)
        print(f"database ready in {time.perf_counter() - t0:.1f} s ({first_users} first-time users)", file=sys.stderr)
        scale_counts = None
        scale_args: list[str] = []
        if args.scale:
            scale_counts = {
                name: round(getattr(args, f"scale_{name.replace('-', '_')}") * args.scale_factor) for name in SCALE_DEFAULTS
            }
            scale_counts["users"] = max(1, round(50_000 * args.scale_factor))
            scale_args = [a for name, n in scale_counts.items() for a in (f"--{name}", str(n))]
            servers.seed_scale(db, issuer, scale_args)
        baseline = None
        if args.baseline:
            baseline_db = stack.enter_context(servers.fresh_database(args.database_url, workdir, "baseline"))
            baseline = _prepare_baseline(args.baseline, baseline_db, args.port + 1, first_users, scale_args)

        extra_env = dict(item.split("=", 1) for item in args.server_env if "=" in item)
        server = servers.OstiaryServer(
            db, port=args.port, workers=args.workers, cpus=server_cpu, log=server_log, extra_env=extra_env
        )
        stack.callback(server.stop)
        server.start()
        ostiary = targets.ostiary(args.port, first_users=first_users, introspector=introspector)
        ostiary.pid = server.pid
        under_test = [ostiary]
        if baseline is not None:
            baseline_server = servers.OstiaryServer(
                baseline.db,
                port=args.port + 1,
                workers=args.workers,
                cpus=server_cpu,
                log=baseline_log,
                extra_env=extra_env,
                code=args.baseline,
            )
            stack.callback(baseline_server.stop)
            baseline_server.start()
            target = targets.ostiary(
                args.port + 1, first_users=baseline.first_users, introspector=baseline.introspector, name="ostiary-baseline"
            )
            target.pid = baseline_server.pid
            target.notes = [
                f"the code of {report.describe_checkout(checkouts['ostiary-baseline'])}",
                *target.notes,
                *baseline.notes,
            ]
            target.skip = baseline.skip
            under_test.append(target)
        if args.peer:
            peer = servers.Peer(args.peer.resolve(), cpus=server_cpu, log_copy=peer_log)
            stack.callback(peer.stop)
            peer.start()
            under_test.append(targets.peer())
        driver_cpu = _pin_driver(args.driver_cpu)
        print(
            f"servers on CPU {server_cpu or '-'}, driver on CPU {driver_cpu or '-'}; "
            f"{'smoke: ' + str(args.smoke_ops) + ' operations per scenario' if args.smoke else f'{args.rounds} x ({args.warmup:g} s warm-up + {args.duration:g} s)'}"
            f", {args.concurrency} workers",
            file=sys.stderr,
        )
        for target in under_test:
            for note in target.notes:
                print(f"note ({target.name}): {note}", file=sys.stderr)
        for name, info in checkouts.items():
            print(f"{name:<16} {report.describe_checkout(info)}", flush=True)
        import uvloop  # the bench extra

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            rows, states = runner.run(bench(args, under_test))

    meds = report.medians(rows)
    pairs = [("ostiary", "oidc-provider")] if args.peer else []
    if args.peer and args.baseline:
        pairs.append(("ostiary-baseline", "oidc-provider"))
    if args.baseline:
        pairs.append(("ostiary", "ostiary-baseline"))
    ratio_sets = [(a, b, report.ratios(meds, a, b)) for a, b in pairs]
    ratios = [row for _, _, rows_ab in ratio_sets for row in rows_ab]
    print()
    if args.smoke:
        print("smoke: a few operations each; the figures above check that everything works, they measure nothing")
    elif args.rounds > 1 or args.peer or args.baseline:
        print("medians over the rounds (errors summed; drv cpu% and other% the worst round):")
        print(report.medians_table(meds))
    if not args.smoke:
        for a, b, rows_ab in ratio_sets:
            if rows_ab:
                print(f"\n{a} / {b} (A/B of the medians; > 1 means {a} is higher):")
                print(report.ratios_table(rows_ab))
    for title, lines in (("requests inside operations", report.breakdown_lines(rows)), ("errors", report.error_lines(rows))):
        if lines:
            print(f"\n{title}:")
            print("\n".join(lines))

    result = {
        "benchmark": "ostiary",
        "machine": machine,
        "settings": {
            "scenarios": args.scenarios,
            "concurrency": args.concurrency,
            "duration_s": None if args.smoke else args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "smoke_ops": args.smoke_ops if args.smoke else None,
            "database": "postgresql" if args.database_url else "sqlite",
            "port": args.port,
            "server_workers": args.workers,
            "server_cpu": server_cpu,
            "driver_cpu": driver_cpu,
            "server_env": sorted(extra_env),
            "first_users": first_users,
            "scale": scale_counts,
            "peer": str(args.peer) if args.peer else None,
            "baseline": str(args.baseline) if args.baseline else None,
        },
        "checkouts": checkouts,
        "targets": [
            {
                "name": s.target.name,
                "issuer": s.target.issuer,
                "discovery_url": s.discovery_url,
                "resource": s.target.resource,
                "scope": s.target.scope,
                "signin_params": s.target.signin_params,
                "first_users": s.target.first_user_count if s.target.firstlogin == "new-users" else None,
                "skipped": list(s.target.skip),
                "notes": s.target.notes,
            }
            for s in states
        ],
        "runs": rows,
        "medians": meds,
        "ratios": ratios,
        "logs": {
            "server": str(server_log),
            "baseline": str(baseline_log) if args.baseline else None,
            "peer": str(peer_log) if args.peer else None,
        },
    }
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nresults: {output}")
    if args.smoke:
        bad = [r for r in rows if r["errors"] or not r["ok"]]
        if bad:
            print(f"smoke: FAILED ({len(bad)} run(s) with errors)", file=sys.stderr)
            return 1
        print("smoke: ok", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted (the servers were stopped and the database removed)", file=sys.stderr)
        sys.exit(130)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # a set-up step failed; all stopped
        print(f"benchmark: {exc}", file=sys.stderr)
        sys.exit(1)
