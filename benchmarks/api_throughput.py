"""`POST /api/agent/execute` (async) on one API process, next to a bare Litestar + one INSERT.

    .venv/bin/python -m benchmarks.api_throughput                        # 32 connections, 15 s
    .venv/bin/python -m benchmarks.api_throughput --duration 30 --servers default,uvloop

Each target is served by `python -m uvicorn <app> --port P --no-access-log --workers 1`: the
product (`api.app:app`, with `"async": true`, so it answers 202 with the queued run) and the
baseline (`benchmarks.bare_api:app`, one SQLAlchemy INSERT per request). The load generator is a
separate process holding --connections keep-alive connections for --warmup seconds (discarded),
then --duration seconds: `wrk` when installed (apt-get install wrk), else an httpx client. It
reports requests/s, p50/p99 latency and errors; this script adds the CPU each request cost in the
API process and in the database's Postgres backends.

`--servers uvloop` adds `--loop uvloop --http httptools`, when both import in the API's
interpreter; they are not project dependencies, so this script looks for them in --extra-site too
(e.g. a throwaway venv's site-packages: `python -m venv /tmp/uvl && /tmp/uvl/bin/pip install
uvloop httptools`), which is prepended to the server's PYTHONPATH only.

No worker runs: the product's runs stay queued; the database and Redis db 12 are emptied at the
end. Requests go to 127.0.0.1 only and stop after --duration seconds or --max-requests.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Child,
    CpuMeter,
    bench_environment,
    children,
    create_users,
    drop_database,
    exclusive_benchmark,
    exited_pg_backends_cpu,
    finish_py_spy,
    flush_redis,
    free_port,
    log_directory,
    machine_note,
    make_bench_engine,
    pg_backend_pids,
    pg_sessions_opened,
    recreate_database,
    redis_server_pids,
    start_py_spy,
    use_bench_environment,
    wait_for_port,
)
from benchmarks.http_load import Load, loadgen_child, run_httpx, run_wrk

GOAL_RPS = 700.0
GOAL_P99_MS = 100.0
EXECUTE_BODY = {
    "goal": "Summarise the three most recent changes to the benchmark suite",
    "agentType": "research_agent",
    "async": True,
}
BARE_BODY = {"goal": EXECUTE_BODY["goal"], "agentType": "research_agent"}
PROFILE_FOCUS = (
    "execute (api/routes/agent.py",
    "_create (api/routes/agent.py",
    "create_task (app/services/tasks.py",
    "send_dispatches (actors/sending.py",
    "mark_sent (",
    "current_user_id (",
    "parse_execute_request (",
    "read_json (",
    "run_sync (anyio",
    "_do_ping",
    "Session.flush (",
    "Session.commit (",
    "Connection.wait (psycopg",
    "_pipeline_enqueue (",
    "Pipeline.execute (redis",
    "handle (litestar",
    "__call__ (litestar",
    "run_asgi (uvicorn",
    "data_received (uvicorn",
    "_run_once (asyncio",
    "emit (logging",
)


@dataclass
class Target:
    name: str
    app: str
    path: str
    body: dict[str, Any]
    server: str
    load: Load = field(default_factory=Load)
    rows: int = 0
    sessions_opened: int = 0
    cpu_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profile: str = ""


# --- one target -----------------------------------------------------------------------------------


def _server_argv(target: Target, port: int) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        target.app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        "--workers",
        "1",
    ]
    if target.server == "uvloop":
        argv += ["--loop", "uvloop", "--http", "httptools"]
    return argv


def _server_env(args: argparse.Namespace, server: str) -> dict[str, str]:
    env = bench_environment(LOG_LEVEL=args.log_level)
    if server == "uvloop" and args.extra_site:
        env["PYTHONPATH"] = f"{args.extra_site}:{env['PYTHONPATH']}"
    return env


def _has_uvloop(args: argparse.Namespace) -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import uvloop, httptools"],
        env=_server_env(args, "uvloop"),
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def _count_rows(engine: Any, table: str) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def measure(args: argparse.Namespace, engine: Any, target: Target, key: str, logs: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}{target.path}"
    generate = run_wrk if args.loadgen == "wrk" else run_httpx
    table = "bench_items" if target.app.startswith("benchmarks.bare_api") else "tasks"
    tag = f"{target.app.split(':')[0].replace('.', '-')}-{target.server}"
    with children() as started:
        server = Child(
            f"uvicorn {target.app}",
            _server_argv(target, port),
            _server_env(args, target.server),
            logs / f"server-{tag}.log",
        )
        started.append(server.start())
        wait_for_port(port, timeout_s=60, child=server)
        warm = generate(url, key, target.body, args.connections, args.warmup, args.max_requests)
        if warm.error_detail and not warm.requests:
            target.notes.append(f"warm-up failed: {warm.error_detail}")
            return
        meter = CpuMeter(
            lambda: {
                "API process": [server.pid],
                "postgres backends (this db)": pg_backend_pids(engine),
                "redis-server (shared)": redis_server_pids(),
            },
            exited_pg_backends_cpu,
        )
        before = _count_rows(engine, table)
        sessions = pg_sessions_opened()
        meter.start()
        spy = None
        profile_path = logs / f"py-spy-{tag}.txt"
        if args.profile:
            spy = start_py_spy([server.pid], profile_path, min(args.profile_seconds, int(args.duration)))
        target.load = generate(url, key, target.body, args.connections, args.duration, args.max_requests)
        cpu = meter.stop()
        target.rows = _count_rows(engine, table) - before
        time.sleep(1.0)  # pg_stat_database is updated about once a second
        target.sessions_opened = pg_sessions_opened() - sessions
        if spy is not None:
            target.profile = finish_py_spy(spy, profile_path, args.profile_seconds, PROFILE_FOCUS)
        if not server.alive():
            target.notes.append(f"the server died:\n{server.log_tail()}")
    done = max(1, target.load.requests)
    target.cpu_ms = {name: 1000 * seconds / done for name, seconds in cpu.items()}
    if target.load.error_detail:
        target.notes.append(target.load.error_detail)


def report(target: Target, baseline: Target | None) -> None:
    load = target.load
    rps = load.requests / load.seconds if load.seconds else 0.0
    print(f"\n== {target.name} ({target.server} server, {load.tool}): POST {target.path}")
    print(
        f"   {rps:,.0f} req/s over {load.seconds:.1f} s ({load.requests:,} requests, {load.errors} errors); "
        f"latency p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms; {target.rows:,} rows written"
    )
    if baseline is not None and baseline.load.seconds:
        base_rps = baseline.load.requests / baseline.load.seconds
        print(
            f"   = {100 * rps / base_rps:.0f}% of the bare app ({base_rps:,.0f} req/s); "
            f"goal >= {GOAL_RPS:.0f} req/s with p99 <= {GOAL_P99_MS:.0f} ms: "
            f"{'met' if rps >= GOAL_RPS and load.p99_ms <= GOAL_P99_MS else 'NOT met'}"
        )
    if target.cpu_ms:
        total = sum(target.cpu_ms.values())
        parts = ", ".join(f"{name} {ms:.2f} ms" for name, ms in target.cpu_ms.items())
        print(
            f"   CPU per request: {parts}; total {total:.2f} ms (2 cores: at most {2000 / total:,.0f} req/s)"
            if total
            else "   CPU per request: not measured"
        )
    if target.sessions_opened:
        print(
            f"   Postgres connections opened while measuring: {target.sessions_opened:,} "
            f"({100 * target.sessions_opened / max(1, load.requests):.1f} per 100 requests: "
            "the pool's overflow connections are closed on return and opened again)"
        )
    for note in target.notes:
        print(f"   NOTE: {note}")
    if target.profile:
        print("   py-spy profile of the API process (on-CPU samples):")
        print("     " + target.profile.replace("\n", "\n     "))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--loadgen-child"]:
        return loadgen_child(argv[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=15.0, help="seconds measured per target")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop a load phase after this many")
    parser.add_argument("--loadgen", choices=("auto", "wrk", "httpx"), default="auto")
    parser.add_argument(
        "--servers",
        default="default,uvloop",
        help='"default" and/or "uvloop" (--loop uvloop --http httptools, when importable)',
    )
    parser.add_argument(
        "--extra-site",
        default="/tmp/uvl/lib/python3.11/site-packages",
        help="a site-packages holding uvloop and httptools for the uvloop server",
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--api-app", default="api.app:app", help="the app uvicorn serves (for experiments)")
    parser.add_argument("--log-level", default="INFO", help="the API's LOG_LEVEL (product default INFO)")
    parser.add_argument("--profile", action="store_true", help="py-spy record the API process")
    parser.add_argument("--profile-seconds", type=int, default=10)
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args(argv)
    if not (0 < args.duration <= 600 and 0 <= args.warmup <= 120 and 0 < args.connections <= 1024):
        parser.error("--duration must be in (0, 600], --warmup in [0, 120], --connections in (0, 1024]")
    if args.loadgen == "auto":
        args.loadgen = "wrk" if shutil.which("wrk") else "httpx"
    if not Path(args.extra_site).is_dir():
        args.extra_site = ""

    with exclusive_benchmark("api_throughput"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    use_bench_environment()
    logs = log_directory("api")
    print(
        f"api_throughput: {args.connections} connections, {args.warmup:g} s warm-up + {args.duration:g} s, "
        f"load by {args.loadgen}; {machine_note()}; logs in {logs}"
    )
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if "uvloop" in servers and not _has_uvloop(args):
        print(
            "   uvloop/httptools are not importable (not in the project venv, none in --extra-site): "
            "skipping the uvloop server"
        )
        servers.remove("uvloop")
    recreate_database()
    engine = make_bench_engine()
    results: list[tuple[Target, Target | None]] = []
    try:
        from sqlalchemy import text

        from benchmarks.bare_api import CREATE_TABLE

        with engine.begin() as conn:
            conn.execute(text(CREATE_TABLE))
        key = create_users(engine, 1)[0].api_key
        for server in servers:
            baseline = None
            if not args.skip_baseline:
                baseline = Target(
                    "bare Litestar + one INSERT", "benchmarks.bare_api:app", "/bench/items", BARE_BODY, server
                )
                measure(args, engine, baseline, key, logs)
                report(baseline, None)
            target = Target(
                "agentsched execute (async)", args.api_app, "/api/agent/execute", EXECUTE_BODY, server
            )
            measure(args, engine, target, key, logs)
            report(target, baseline)
            results.append((target, baseline))
    finally:
        engine.dispose()
        flush_redis()
        if not args.keep_database:
            drop_database()
    print("\nsummary:")
    for target, baseline in results:
        for t in (baseline, target):
            if t is not None and t.load.seconds:
                print(
                    f"  {t.load.requests / t.load.seconds:7,.0f} req/s  p50 {t.load.p50_ms:6.1f} ms  "
                    f"p99 {t.load.p99_ms:6.1f} ms  errors {t.load.errors}  {t.name} [{t.server}]"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
