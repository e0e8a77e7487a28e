"""Runs in flight on one worker host when the model answers after 1 s, against the ideal.

    .venv/bin/python -m benchmarks.inflight                      # 3,000 runs, 2 processes x 256 threads
    .venv/bin/python -m benchmarks.inflight --role-connection-limit 80 --timeline

A slow OpenAI-compatible server (`benchmarks/model_server.py`, asyncio, a process of its own)
answers every chat completion after --delay seconds. N queued runs are inserted and their messages
sent; then `dramatiq actors --processes P --threads T` runs them with LLM_PROVIDER=openai against
that server. Every --poll seconds the script records runs running/finished (Postgres), model calls
in flight (the server's counters), Postgres connections and each worker process's RSS; during the
steady state it takes --dumps `py-spy dump`s of one worker and counts what its threads are doing
(in a model call, waiting for a pooled Postgres connection, in a query, idle).

Steady state: from 10% of the runs finished until only P x T runs are left (the pipeline still
full). Ideal throughput there = P x T / (model calls per run x delay); the goal is >= 512 runs in
flight at >= 90% of it, with <= 300 MB RSS per worker process.

Connections: each worker process sizes its SQLAlchemy pool itself (at a93e678: min(threads + 2,
16) plus as much overflow; before that, AGENT_WORKER_CONCURRENCY + 2 plus as much overflow, whatever
`--threads` said). Each value of --concurrency-env is a scenario ("unset" = the default). The
workers connect as a role limited to --role-connection-limit connections (default 60: what is left
of max_connections=100 once the API's 20 + 20 and the scheduler hold theirs), so a pool that
outgrows Postgres fails here as it would at max_connections. That does not make a connection storm
harmless on a shared server: refused attempts occupy server slots for a moment, and one
(AGENT_WORKER_CONCURRENCY=256 before a93e678) made other clients see "sorry, too many clients
already". Runs whose outcome could not be recorded stay 'running' until their lease expires; the
script reports them as stuck and stops waiting after --stall seconds without progress.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_DATABASE,
    PG_SERVER,
    Child,
    CpuMeter,
    bench_connections,
    bench_environment,
    children,
    consumers_on_bench_redis,
    create_users,
    dramatiq_worker,
    drop_database,
    exclusive_benchmark,
    exited_pg_backends_cpu,
    flush_redis,
    free_port,
    insert_queued_runs,
    log_directory,
    lost_messages,
    machine_note,
    make_bench_engine,
    peak_rss_mb,
    pg_backend_pids,
    pg_connections_in_use,
    pg_sessions_opened,
    pg_setting,
    py_spy_path,
    recreate_database,
    redis_server_pids,
    rss_mb,
    run_status_counts,
    send_run_messages,
    truncate_runs,
    use_bench_environment,
    wait_for_port,
    worker_pids,
)
from benchmarks.inflight_model import (
    BENCH_ROLE,
    FINISHED,
    PRIORITY,
    STALE_RUNNING_S,
    THREAD_STATES,
    WORKER_GROUP,
    Result,
    Sample,
    Scenario,
    baseline_scenario,
    product_scenario,
)
from benchmarks.inflight_probes import (
    latencies,
    log_errors,
    pool_holds,
    pool_holds_probe,
    run_timeline,
    step_latency_ms,
)
from benchmarks.inflight_report import print_summary, report


def _admin(sql: str, database_url: str | None = None) -> None:
    import psycopg

    from app.services.run_events import libpq_conninfo
    from benchmarks.common import ADMIN_DATABASE_URL

    with psycopg.connect(libpq_conninfo(database_url or ADMIN_DATABASE_URL), autocommit=True) as conn:
        conn.execute(sql)


def prepare_role(limit: int) -> str:
    """A login role limited to `limit` connections that may use the benchmark database; its URL."""
    from benchmarks.common import DATABASE_URL

    _admin(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{BENCH_ROLE}') THEN "
        f"CREATE ROLE {BENCH_ROLE} LOGIN; END IF; END $$"
    )
    _admin(f"ALTER ROLE {BENCH_ROLE} NOSUPERUSER LOGIN CONNECTION LIMIT {int(limit)}")
    _admin(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {BENCH_ROLE}", DATABASE_URL)
    _admin(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {BENCH_ROLE}", DATABASE_URL)
    _admin(f'GRANT CONNECT ON DATABASE "{BENCH_DATABASE}" TO {BENCH_ROLE}')
    return f"{PG_SERVER.replace('postgres@', BENCH_ROLE + '@')}/{BENCH_DATABASE}"


def drop_role() -> None:
    _admin(f"DROP ROLE IF EXISTS {BENCH_ROLE}")


# --- one scenario ---------------------------------------------------------------------------------


def _model_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as response:
        return dict(json.loads(response.read()))


def run_scenario(
    args: argparse.Namespace, engine: Any, scenario: Scenario, database_url: str, logs: Path
) -> Result:
    result = Result(scenario.label, baseline=scenario.baseline)
    truncate_runs(engine)
    flush_redis()
    users = create_users(engine, args.users)
    run_ids = insert_queued_runs(engine, users, args.runs, priority=PRIORITY, timeout_ms=args.run_timeout_ms)
    send_run_messages(engine, run_ids, PRIORITY)
    port = free_port()
    tag = scenario.tag
    with children() as started:
        server = Child(
            "model server",
            [
                sys.executable,
                "-m",
                "benchmarks.model_server",
                "--port",
                str(port),
                "--delay",
                str(args.delay),
            ],
            bench_environment(),
            logs / f"model-server-{tag}.log",
        )
        started.append(server.start())
        wait_for_port(port, child=server)
        env = bench_environment(
            DATABASE_URL=database_url,
            LLM_PROVIDER="openai",
            LLM_BASE_URL=f"http://127.0.0.1:{port}/v1",
            LLM_API_KEY="x",
            LOG_LEVEL=args.log_level,
            # the model server streams its answer over the delay when asked (the default)
            LLM_STREAM="false" if args.no_stream else "true",
        )
        env.update(scenario.env)
        module = scenario.module
        if args.pool_holds and not scenario.baseline:
            module = pool_holds_probe(logs, module)
            env["PYTHONPATH"] = os.pathsep.join((str(logs), env.get("PYTHONPATH", "")))
        worker = dramatiq_worker(module, args.processes, args.threads, env, logs / f"worker-{tag}.log")
        started.append(worker.start())
        result.worker_log = worker.log_path
        _poll(args, engine, worker, server, port, result)
        result.peak_rss_mb = [peak_rss_mb(pid) for pid in worker_pids(worker.pid)]
    result.statuses = run_status_counts(engine)
    lost = lost_messages(result.statuses)
    if lost:
        result.notes.append(lost)
    result.latency_s = latencies(engine)
    result.step_latency_ms = step_latency_ms(engine)
    result.timeline_s = run_timeline(engine)
    result.errors = log_errors(result.worker_log)
    result.pool_holds = pool_holds(result.worker_log)
    return result


def _poll(
    args: argparse.Namespace, engine: Any, worker: Child, server: Child, port: int, result: Result
) -> None:
    deadline = time.monotonic() + args.timeout
    failures, first_failure = 0, ""
    total_threads = args.processes * args.threads
    meter = CpuMeter(lambda: _cpu_groups(engine, worker, server), exited_pg_backends_cpu)
    window: tuple[float, int, int] | None = None  # time, finished, sessions opened at its start
    while time.monotonic() < deadline:
        try:
            sample = _sample(engine, worker, port)
        except Exception as exc:  # Postgres refusing connections is one of the things measured here
            failures += 1
            first_failure = first_failure or f"{type(exc).__name__}: {exc}"
            time.sleep(args.poll)
            continue
        result.samples.append(sample)
        steady = 0.1 * args.runs <= sample.finished < args.runs - total_threads
        if steady and window is None:
            meter.start()
            window = (sample.t, sample.finished, pg_sessions_opened())
        elif window is not None and not result.cpu_s:
            if steady:
                meter.sample()
            else:
                result.cpu_s = meter.stop()
                result.cpu_window = (sample.t - window[0], sample.finished - window[1])
                result.sessions_opened = pg_sessions_opened() - window[2]
        if steady and result.dumps < args.dumps and result.failed_dumps < 2 * args.dumps:
            _census(worker, result)
        if sample.finished >= args.runs:
            break
        if not worker.alive():
            result.notes.append(f"the worker exited early:\n{worker.log_tail()}")
            break
        if _stalled(result.samples, args.stall):
            result.notes.append(
                f"stopped waiting: nothing finished and no model call ran for {args.stall:.0f} s; "
                f"{sample.running} runs are stuck 'running' (their lease must expire before anyone "
                f"may claim them again) and {sample.queued} queued"
            )
            break
        time.sleep(args.poll)
    else:
        result.notes.append(f"gave up after {args.timeout:.0f} s")
    if failures:
        result.notes.append(f"{failures} polls failed; the first: {first_failure}")


def _stalled(samples: list[Sample], seconds: float) -> bool:
    """True when for `seconds` no run finished and the model server had nothing in flight."""
    last = samples[-1]
    earlier = [s for s in samples if s.t <= last.t - seconds]
    if not earlier:
        return False
    recent = [s for s in samples if s.t >= earlier[-1].t]
    return all(s.finished == last.finished and s.model_in_flight <= 0 for s in recent)


def _stale_and_parked(engine: Any) -> tuple[int, int]:
    from sqlalchemy import text

    with engine.connect() as conn:
        query = (
            "SELECT count(*) FILTER (WHERE status = 'running'"
            "                          AND started_at < now() - make_interval(secs => :s)),"
            "       count(*) FILTER (WHERE status = 'queued' AND parked_at IS NOT NULL)"
            "  FROM task_runs WHERE status IN ('running', 'queued')"
        )
        stale, parked = conn.execute(text(query), {"s": STALE_RUNNING_S}).one()
        return int(stale), int(parked)


def _sample(engine: Any, worker: Child, port: int) -> Sample:
    counts = run_status_counts(engine)
    try:
        stats = _model_stats(port)
    except OSError:
        stats = {"in_flight": -1, "answered": -1, "served_s": 0.0, "loop_lag_s": 0.0, "loop_ticks": 0}
    stale, parked = _stale_and_parked(engine)
    return Sample(
        t=time.monotonic(),
        running=counts.get("running", 0),
        stale=stale,
        parked=parked,
        finished=sum(counts.get(s, 0) for s in FINISHED),
        queued=counts.get("queued", 0),
        model_in_flight=int(stats["in_flight"]),
        model_answered=int(stats["answered"]),
        model_served_s=float(stats["served_s"]),
        model_lag_s=float(stats["loop_lag_s"]),
        model_lag_ticks=int(stats["loop_ticks"]),
        rss_mb=[rss_mb(pid) for pid in worker_pids(worker.pid)],
        connections=bench_connections(),
        consumers=consumers_on_bench_redis(),
    )


def _cpu_groups(engine: Any, worker: Child, server: Child) -> dict[str, list[int]]:
    return {
        WORKER_GROUP: worker_pids(worker.pid),
        "postgres backends (this db)": pg_backend_pids(engine),
        "model server": [server.pid],
        "redis-server (shared)": redis_server_pids(),
    }


def _census(worker: Child, result: Result) -> None:
    """One `py-spy dump` of the first worker process: what each worker thread is doing."""
    spy = py_spy_path()
    pids = worker_pids(worker.pid)
    if spy is None or not pids:
        return
    # --nonblocking: a blocking dump stops the process while it walks ~270 threads' stacks (a
    # second or more on the busy machine), and six of them cut the throughput being measured.
    # Reading a running process' memory sometimes fails (a stack changed under the reader):
    # such a dump has no threads and is not counted.
    started = time.monotonic()
    dump = subprocess.run(
        [spy, "dump", "--nonblocking", "--pid", str(pids[0])],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    result.dump_s += time.monotonic() - started
    sections = dump.split("\nThread ")[1:]
    if not sections:
        result.failed_dumps += 1
        return
    for section in sections:
        for state, marker in THREAD_STATES:
            if marker in section:
                result.threads[state] += 1
                break
        else:
            result.threads["other"] += 1
    result.dumps += 1


def _drop_everything(args: argparse.Namespace) -> None:
    for attempt in range(10):  # a connection storm may still be dying down
        try:
            drop_database()
            if args.role_connection_limit > 0:
                drop_role()
            return
        except Exception as exc:
            print(f"cleanup attempt {attempt + 1} failed: {exc}; retrying")
            time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3_000)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=256)
    parser.add_argument("--delay", type=float, default=1.0, help="seconds the model takes per call")
    parser.add_argument("--no-stream", action="store_true", help="LLM_STREAM=false: plain JSON answers")
    parser.add_argument(
        "--users", type=int, default=32, help="owners of the runs: 32 enterprise users hold 640 run slots"
    )
    parser.add_argument(
        "--concurrency-env",
        default="unset",
        help='AGENT_WORKER_CONCURRENCY per scenario, comma-separated ("unset" = default)',
    )
    parser.add_argument(
        "--role-connection-limit",
        type=int,
        default=60,
        help="connection limit of the workers' role (0: connect as postgres, no limit)",
    )
    parser.add_argument("--run-timeout-ms", type=int, default=300_000)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=300.0, help="give up on a scenario after this (s)")
    parser.add_argument(
        "--stall", type=float, default=20.0, help="give up after this long without progress (s)"
    )
    parser.add_argument("--log-level", default="INFO", help="the workers' LOG_LEVEL (product default INFO)")
    parser.add_argument("--dumps", type=int, default=6, help="py-spy dumps of a worker in the steady state")
    parser.add_argument("--worker-module", default="actors", help="what `dramatiq` imports (for experiments)")
    parser.add_argument(
        "--pool-holds",
        action="store_true",
        help="log how long each pooled Postgres connection stays checked out (SQLAlchemy pool events)",
    )
    parser.add_argument(
        "--baselines",
        default="threads,asyncio",
        help="same-resource baselines to run after the product (benchmarks/stream_actors.py modes)",
    )
    parser.add_argument(
        "--skip-same-resource", action="store_true", help="run only the product, not the bare baselines"
    )
    parser.add_argument("--timeline", action="store_true", help="print the sampled timeline")
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args(argv)
    if not 0 < args.runs <= 100_000:
        parser.error("--runs must be between 1 and 100,000")
    if not 0 < args.processes * args.threads <= 4_096:
        parser.error("--processes x --threads must be between 1 and 4,096")
    if args.runs < 2 * args.processes * args.threads:
        print(
            f"warning: with fewer than {2 * args.processes * args.threads} runs there is little steady state"
        )
    if py_spy_path() is None:
        print("no py-spy: no thread census (`python -m venv /tmp/prof && /tmp/prof/bin/pip install py-spy`)")
    with exclusive_benchmark("inflight"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    use_bench_environment()
    import actors  # noqa: F401  (binds the broker to REDIS_URL db 12)
    from benchmarks.common import DATABASE_URL

    logs = log_directory("inflight")
    print(f"inflight: {machine_note()}; logs in {logs}")
    print(
        f"postgres: max_connections={pg_setting('max_connections')}, "
        f"client connections in use now (all databases) {pg_connections_in_use()}"
    )
    recreate_database()
    worker_url = prepare_role(args.role_connection_limit) if args.role_connection_limit > 0 else DATABASE_URL
    engine = make_bench_engine()
    summary: list[tuple[str, dict[str, float], Result]] = []
    try:
        scenarios = [product_scenario(args, c.strip()) for c in args.concurrency_env.split(",")]
        if not args.skip_same_resource:
            scenarios += [baseline_scenario(args, m.strip()) for m in args.baselines.split(",") if m.strip()]
        for scenario in scenarios:
            result = run_scenario(args, engine, scenario, worker_url, logs)
            summary.append((result.label, report(args, result), result))
    finally:
        engine.dispose()
        flush_redis()
        if not args.keep_database:
            _drop_everything(args)
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
