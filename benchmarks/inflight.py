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
import collections
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
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
    median,
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

GOAL_IN_FLIGHT = 512
GOAL_SHARE_OF_IDEAL = 0.90
GOAL_RSS_MB = 300.0
BENCH_ROLE = "agentsched_bench"
PRIORITY = "medium"
FINISHED = ("completed", "failed", "cancelled", "skipped")
#: A run 'running' for longer than this (several times its ideal latency) is not executing.
STALE_RUNNING_S = 30
#: What a worker thread is doing, by the first matching frame of its stack (py-spy dump).
THREAD_STATES = (
    ("waiting for a pooled Postgres connection", "QueuePool._do_get"),
    ("in a model call", "OpenAIProvider.complete"),
    ("opening a Postgres connection", "create_engine.<locals>.connect"),
    ("in a Postgres round trip", "psycopg/"),
    ("idle: no message to run", "WorkerThread.run"),
    ("Dramatiq consumer", "ConsumerThread.run"),
)


@dataclass
class Sample:
    t: float
    running: int
    #: Of those, runs started more than STALE_RUNNING_S ago: stuck (their attempt failed to record
    #: its outcome), not executing.
    stale: int
    #: Queued runs parked by their user's concurrency limit (waiting for a slot, no message).
    parked: int
    finished: int
    queued: int
    model_in_flight: int
    model_answered: int
    #: The model server's counters: seconds serving answered calls, event loop lag (sum, ticks).
    model_served_s: float
    model_lag_s: float
    model_lag_ticks: int
    rss_mb: list[float]
    connections: int
    consumers: int


@dataclass
class Result:
    label: str
    samples: list[Sample] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    peak_rss_mb: list[float] = field(default_factory=list)
    latency_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    step_latency_ms: float = 0.0
    timeline_s: tuple[float, ...] = ()
    #: From --pool-holds: check-outs a second per process, mean, p50, p99 hold (ms).
    pool_holds: tuple[float, float, float, float] | None = None
    errors: dict[str, int] = field(default_factory=dict)
    worker_log: Path | None = None
    threads: collections.Counter[str] = field(default_factory=collections.Counter)
    dumps: int = 0
    dump_s: float = 0.0
    failed_dumps: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)
    cpu_window: tuple[float, int] = (0.0, 0)
    sessions_opened: int = 0
    notes: list[str] = field(default_factory=list)


# --- the role with a connection limit -------------------------------------------------------------


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
    args: argparse.Namespace, engine: Any, concurrency_env: str, database_url: str, logs: Path
) -> Result:
    result = Result(f"{args.processes}x{args.threads}, AGENT_WORKER_CONCURRENCY={concurrency_env}")
    truncate_runs(engine)
    flush_redis()
    users = create_users(engine, args.users)
    run_ids = insert_queued_runs(engine, users, args.runs, priority=PRIORITY, timeout_ms=args.run_timeout_ms)
    send_run_messages(engine, run_ids, PRIORITY)
    port = free_port()
    tag = f"c{concurrency_env}"
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
        if concurrency_env != "unset":
            env["AGENT_WORKER_CONCURRENCY"] = concurrency_env
        module = args.worker_module
        if args.pool_holds:
            module = _pool_holds_probe(logs, module)
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
    result.latency_s = _latencies(engine)
    result.step_latency_ms = _step_latency_ms(engine)
    result.timeline_s = _run_timeline(engine)
    result.errors = _log_errors(result.worker_log)
    result.pool_holds = _pool_holds(result.worker_log)
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
        "worker processes": worker_pids(worker.pid),
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


def _latencies(engine: Any) -> tuple[float, float, float]:
    from sqlalchemy import text

    with engine.connect() as conn:
        row = conn.execute(
            text(
                """
                SELECT percentile_cont(0.5)
                           WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                       percentile_cont(0.99)
                           WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                       avg(extract(epoch FROM started_at - queued_at))
                  FROM task_runs WHERE status = 'completed'
                """
            )
        ).one()
    p50, p99, wait = (float(v or 0.0) for v in row)
    return p50, p99, wait


_RUN_TIMELINE = """
WITH s AS (
    SELECT s.run_id, s.index, s.started_at, s.finished_at, s.latency_ms,
           lag(s.finished_at) OVER (PARTITION BY s.run_id ORDER BY s.index) AS previous_end,
           r.started_at AS run_started, r.finished_at AS run_finished,
           s.index = max(s.index) OVER (PARTITION BY s.run_id) AS last
      FROM run_steps AS s JOIN task_runs AS r ON r.id = s.run_id
     WHERE s.status = 'completed' AND r.status = 'completed' AND r.attempts = 1
)
SELECT avg(extract(epoch FROM started_at - run_started)) FILTER (WHERE index = 0),
       avg(extract(epoch FROM finished_at - started_at) - latency_ms / 1000.0),
       avg(latency_ms / 1000.0),
       avg(extract(epoch FROM started_at - previous_end)) FILTER (WHERE index > 0),
       avg(extract(epoch FROM run_finished - finished_at)) FILTER (WHERE last)
  FROM s
"""


def _run_timeline(engine: Any) -> tuple[float, ...]:
    """Mean seconds a run spends: claim to its first step, a step outside its model call (its
    start written, the deltas flushed), in the call, from a step's end to the next one's start
    (the end written), from the last step's end to the run's end (the finish written)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        row = conn.execute(text(_RUN_TIMELINE)).one()
    return tuple(float(value or 0.0) for value in row)


def _step_latency_ms(engine: Any) -> float:
    from sqlalchemy import text

    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT avg(latency_ms) FROM run_steps WHERE status = 'completed'")
        ).scalar_one()
    return float(value or 0.0)


# A module `dramatiq` imports instead of the worker module: it imports that module, then logs
# how long each pooled Postgres connection stays checked out, every _HOLDS_EVERY_S seconds.
_POOL_HOLDS_PROBE = """\
import logging, threading, time
from sqlalchemy import event
from sqlalchemy.pool import Pool
from {module} import *  # noqa: F403
from {module} import broker  # noqa: F401

_holds, _lock, _log = [], threading.Lock(), logging.getLogger("pool_holds")


@event.listens_for(Pool, "checkout")
def _out(dbapi_connection, record, proxy):
    record.info["out_at"] = time.monotonic()


@event.listens_for(Pool, "checkin")
def _in(dbapi_connection, record):
    out = record.info.pop("out_at", None)
    if out is not None:
        with _lock:
            _holds.append(time.monotonic() - out)


def _report():
    while True:
        time.sleep({every})
        with _lock:
            holds = sorted(_holds)
            _holds.clear()
        if holds:
            _log.warning("pool holds: %d %.3f %.3f %.3f", len(holds), 1000 * sum(holds) / len(holds),
                         1000 * holds[len(holds) // 2], 1000 * holds[int(len(holds) * 0.99)])


threading.Thread(target=_report, name="pool-holds", daemon=True).start()
"""
_HOLDS_EVERY_S = 5
_HOLDS_LINE = re.compile(r"pool holds: (\d+) ([\d.]+) ([\d.]+) ([\d.]+)")


def _pool_holds_probe(logs: Path, module: str) -> str:
    (logs / "pool_holds_probe.py").write_text(_POOL_HOLDS_PROBE.format(module=module, every=_HOLDS_EVERY_S))
    return "pool_holds_probe"


def _pool_holds(path: Path | None) -> tuple[float, float, float, float] | None:
    """The busiest half of the probe's 5 s reports (the steady state), averaged over processes."""
    if path is None or not path.exists():
        return None
    reports = [
        tuple(float(v) for v in m.groups()) for m in _HOLDS_LINE.finditer(path.read_text(errors="replace"))
    ]
    if not reports:
        return None
    busiest = sorted(reports, key=lambda r: -r[0])[: max(1, len(reports) // 2)]
    count = sum(r[0] for r in busiest)
    return (
        count / len(busiest) / _HOLDS_EVERY_S,
        sum(r[0] * r[1] for r in busiest) / count,
        sum(r[0] * r[2] for r in busiest) / count,
        max(r[3] for r in busiest),
    )


_ERROR_PATTERNS = {
    "too many connections": re.compile(r"too many (connections|clients)", re.I),
    "pool timeout (QueuePool limit reached)": re.compile(r"QueuePool limit", re.I),
    "actor failed, will retry": re.compile(r"Retrying message", re.I),
    "model call errors": re.compile(r"could not reach the model provider|model provider answered HTTP", re.I),
    "tracebacks": re.compile(r"^Traceback", re.M),
}


def _log_errors(path: Path | None) -> dict[str, int]:
    if path is None or not path.exists():
        return {}
    text = path.read_text(errors="replace")
    return {name: len(pattern.findall(text)) for name, pattern in _ERROR_PATTERNS.items()}


# --- reporting ------------------------------------------------------------------------------------


def report(args: argparse.Namespace, result: Result) -> dict[str, float]:
    samples = result.samples
    total_threads = args.processes * args.threads
    print(f"\n== {result.label}: {args.runs:,} runs, model delay {args.delay:g} s")
    figures: dict[str, float] = {}
    if not samples:
        print("   no samples")
        return figures
    print(f"   statuses: {result.statuses}")
    start = next((s for s in samples if s.finished >= 0.1 * args.runs), None)
    end = next((s for s in samples if s.finished >= args.runs - total_threads), samples[-1])
    # Plan, two steps, final answer: what the model server's plan makes a run do. Measured over the
    # whole run when every run finished (the steady window's edges cut runs in half).
    calls_per_run = 4.0
    finished_all, answered_all = samples[-1].finished, samples[-1].model_answered
    if finished_all >= args.runs and answered_all > 0:
        calls_per_run = answered_all / finished_all
    ideal_latency = calls_per_run * args.delay
    ideal = total_threads / ideal_latency
    if start is None or end.t <= start.t:
        print("   no steady state reached (too few runs finished, or too few runs for the threads)")
    else:
        window = [s for s in samples if start.t <= s.t <= end.t]
        rate = (end.finished - start.finished) / (end.t - start.t)
        # A thread runs one run at a time: more 'running' rows than threads are stuck ones.
        running = median([min(s.running - s.stale, total_threads) for s in window])
        model = median([s.model_in_flight for s in window])
        figures = {"rate": rate, "ideal": ideal, "running": running, "model": model}
        print(f"   steady state ({end.t - start.t:.1f} s, {start.finished:,}..{end.finished:,} finished):")
        print(
            f"     throughput {rate:.1f} runs/s = {100 * rate / ideal:.0f}% of ideal {ideal:.1f} runs/s "
            f"({total_threads} threads / ({calls_per_run:.2f} calls x {args.delay:g} s))"
        )
        print(
            f"     runs in flight (status running, less stuck ones): median {running:.0f}, "
            f"max {max(min(s.running - s.stale, total_threads) for s in window)}; "
            f"model calls in flight: median {model:.0f}, "
            f"max {max(s.model_in_flight for s in window)}"
        )
        print(
            f"     runs parked by the per-user limit ({args.users} users): median "
            f"{median([s.parked for s in window]):.0f}, max {max(s.parked for s in window)}"
        )
        stuck = max(max(s.running - total_threads, s.stale) for s in window)
        if stuck > 0:
            print(
                f"     plus up to {stuck} runs stuck 'running' (beyond the threads, or started over "
                f"{STALE_RUNNING_S} s ago)"
            )
        _report_model_time(args, start, end, result.step_latency_ms, rate, total_threads / calls_per_run)
        verdict = running >= GOAL_IN_FLIGHT and rate >= GOAL_SHARE_OF_IDEAL * ideal
        print(
            f"     goal >= {GOAL_IN_FLIGHT} in flight at >= {GOAL_SHARE_OF_IDEAL:.0%} of ideal: "
            f"{'met' if verdict else 'NOT met'}"
        )
    p50, p99, queued_wait = result.latency_s
    print(
        f"   one run, claimed to finished: p50 {p50:.2f} s, p99 {p99:.2f} s (ideal {ideal_latency:.2f} s); "
        f"mean wait in queue {queued_wait:.1f} s"
    )
    if result.timeline_s:
        claim, around, call, between, finish = result.timeline_s
        print(
            f"   a run's time, mean s: claim to first step {claim:.3f}; per step: in the model call "
            f"{call:.3f}, outside it (start written, deltas flushed) {around:.3f}; step end to next "
            f"start {between:.3f}; last step to run end {finish:.3f}"
        )
    if result.pool_holds is not None:
        rate, mean_ms, p50_ms, p99_ms = result.pool_holds
        print(
            f"   pooled Postgres connections (--pool-holds, busiest reports): {rate:.0f} check-outs a "
            f"second per process, each held {mean_ms:.1f} ms on average (p50 {p50_ms:.1f}, "
            f"p99 up to {p99_ms:.0f})"
        )
    _report_threads(result)
    _report_cpu(result)
    columns = max(len(s.rss_mb) for s in samples)
    sampled = [max(s.rss_mb[i] for s in samples if len(s.rss_mb) > i) for i in range(columns)]
    print(
        f"   RSS per worker process: peak (VmHWM) {', '.join(f'{m:.0f}' for m in result.peak_rss_mb)} MiB; "
        f"largest sampled {', '.join(f'{m:.0f}' for m in sampled)} MiB (goal <= {GOAL_RSS_MB:.0f} MiB)"
    )
    print(
        f"   Postgres connections to the benchmark db: max {max(s.connections for s in samples)} "
        f"(max_connections {pg_setting('max_connections')}, worker role limit "
        f"{args.role_connection_limit or 'none'})"
    )
    errors = {k: v for k, v in result.errors.items() if v}
    print(f"   worker log: {result.worker_log}; {errors or 'no errors'}")
    intruders = max(s.consumers for s in samples) - args.processes - 1  # and our enqueuing broker
    if intruders > 0:
        print(
            f"   WARNING: {intruders} Dramatiq consumer(s) besides ours used Redis db 12 during the run; "
            "they take messages away (runs stay queued): the figures are not valid"
        )
    for note in result.notes:
        print(f"   NOTE: {note}")
    if args.timeline:
        _print_timeline(samples)
    return figures


def _report_model_time(
    args: argparse.Namespace,
    start: Sample,
    end: Sample,
    step_latency_ms: float,
    rate: float,
    calls_per_s: float,
) -> None:
    """Where a model call's time goes: the server's side (a starved server stretches the delay)
    against the workers' (a step's latency_ms: from the request to the answer's last piece read)."""
    answered = end.model_answered - start.model_answered
    ticks = end.model_lag_ticks - start.model_lag_ticks
    if answered <= 0 or ticks <= 0:
        return
    served = (end.model_served_s - start.model_served_s) / answered
    lag_ms = 1000 * (end.model_lag_s - start.model_lag_s) / ticks
    print(
        f"     a model call: {served:.2f} s at the server (delay {args.delay:g} s; its loop's timers "
        f"{lag_ms:.1f} ms late on average), {step_latency_ms / 1000:.2f} s in the worker (steps' "
        f"latency, mean)"
    )
    if served > args.delay:
        print(
            f"     (at the server's own {served:.2f} s a call the ideal is "
            f"{calls_per_s / served:.1f} runs/s; the workers reached "
            f"{100 * rate * served / calls_per_s:.0f}% of that)"
        )


def _report_threads(result: Result) -> None:
    if not result.dumps:
        return
    threads = sum(result.threads.values()) / result.dumps
    print(
        f"   worker threads of one process, mean of {result.dumps} py-spy dumps in the steady state "
        f"({threads:.0f} threads; {result.dump_s / (result.dumps + result.failed_dumps):.1f} s a dump, "
        f"{result.failed_dumps} failed):"
    )
    for state, count in result.threads.most_common():
        print(f"     {count / result.dumps:6.1f}  {state}")


def _report_cpu(result: Result) -> None:
    seconds, runs = result.cpu_window
    if not result.cpu_s or not runs:
        return
    total = sum(result.cpu_s.values())
    print(f"   CPU in the steady state ({seconds:.1f} s, {runs:,} runs), per run:")
    for name, cpu in sorted(result.cpu_s.items(), key=lambda item: -item[1]):
        print(f"     {1000 * cpu / runs:7.2f} ms  {name}")
    print(
        f"     {1000 * total / runs:7.2f} ms  total = {total / seconds:.2f} of the machine's "
        f"2 cores busy with this benchmark"
    )
    if result.sessions_opened:
        print(
            f"   Postgres connections opened in the steady state: {result.sessions_opened:,} "
            f"({result.sessions_opened / runs:.1f} a run: pool overflow connections closed and reopened)"
        )


def _print_timeline(samples: list[Sample]) -> None:
    print("   timeline: t(s) running finished queued model_in_flight connections rss(MiB)")
    t0 = samples[0].t
    for s in samples[:: max(1, len(samples) // 40)]:
        print(
            f"     {s.t - t0:6.1f} {s.running:5d} {s.finished:6d} {s.queued:6d} {s.model_in_flight:5d} "
            f"{s.connections:4d}  {' '.join(f'{m:.0f}' for m in s.rss_mb)}"
        )


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
        for concurrency_env in args.concurrency_env.split(","):
            result = run_scenario(args, engine, concurrency_env.strip(), worker_url, logs)
            summary.append((result.label, report(args, result), result))
    finally:
        engine.dispose()
        flush_redis()
        if not args.keep_database:
            _drop_everything(args)
    print("\nsummary:")
    for label, figures, result in summary:
        if figures:
            print(
                f"  {label}: {figures['rate']:.1f} runs/s of ideal {figures['ideal']:.1f} "
                f"({100 * figures['rate'] / figures['ideal']:.0f}%), {figures['running']:.0f} running, "
                f"{figures['model']:.0f} model calls in flight, peak RSS "
                f"{max(result.peak_rss_mb, default=0):.0f} MiB"
            )
        else:
            print(f"  {label}: no steady state; statuses {result.statuses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
