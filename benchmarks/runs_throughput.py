"""End-to-end runs/s with the offline provider, next to a bare Dramatiq no-op actor (the baseline).

    .venv/bin/python -m benchmarks.runs_throughput                     # 20,000 runs, 2x8, 1 user
    .venv/bin/python -m benchmarks.runs_throughput --configs 2x8,2x16,4x8 --users 1,50
    .venv/bin/python -m benchmarks.runs_throughput --runs 5000 --profile  # py-spy on one worker

Per configuration (processes x threads, users): N one-off tasks with a queued run each are
inserted in bulk for the user(s) (enterprise plan, plenty of credits), their messages sent the
product's way (`actors.sending.send_dispatches`, 1,000 a call), then `dramatiq actors` starts
and the script polls `task_runs` every --poll seconds until every run has finished. The baseline
sends N messages to a no-op actor (`benchmarks/noop_actors.py`, default middleware) and polls
the queue until all are acked. Rates are measured from the first finished message to the last,
so worker start-up is excluded; the runs' rate is also computed exactly from
min(started_at)..max(finished_at).

Where a run's time goes: the CPU each component used between 10% and 90% done (worker
processes, the Dramatiq parent that relays worker logs, this database's Postgres backends,
redis-server), the Postgres connections opened meanwhile (a pool smaller than the thread count
opens and closes overflow connections all the time), and with --profile a py-spy profile of one
worker process. After each configuration the credit books are checked (nothing left reserved,
the ledger sums to what users were charged).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Child,
    CpuMeter,
    children,
    consumers_on_bench_redis,
    create_users,
    dramatiq_worker,
    drop_database,
    exclusive_benchmark,
    exited_pg_backends_cpu,
    finish_py_spy,
    flush_redis,
    insert_queued_runs,
    log_directory,
    lost_messages,
    machine_note,
    make_bench_engine,
    peak_rss_mb,
    pg_backend_pids,
    pg_sessions_opened,
    pg_setting,
    recreate_database,
    redis_client,
    redis_server_pids,
    run_status_counts,
    send_run_messages,
    start_py_spy,
    truncate_runs,
    use_bench_environment,
    worker_pids,
)

GOAL_RUNS_PER_S = 1_000.0
FINISHED = ("completed", "failed", "cancelled", "skipped")
PRIORITY = "medium"
#: As in benchmarks/noop_actors.py (not imported here: importing it would replace the broker).
NOOP_QUEUE = NOOP_ACTOR = "noop"
#: As in benchmarks/statement_actors.py (the same-resource baseline).
STATEMENTS_QUEUE, STATEMENTS_ACTOR = "statements", "same_statements"
PROFILE_FOCUS = (
    "execute_run (app/services/execution.py",
    "_claim (app/services/execution.py",
    "_attempt (app/services/execution.py",
    "finish (app/services/runs.py",
    "claim_run (",
    "hold_credits (",
    "reserve (app/services/credits.py",
    "settle (app/services/credits.py",
    "notify_finished (",
    "AgentRun.run (",
    "OfflineProvider.complete (",
    "should_stop (",
    "WorkerThread.process_message (dramatiq",
    "_RedisConsumer.ack (",
    "Session.execute (sqlalchemy",
    "SessionTransaction.commit (sqlalchemy",
    "_ConnectionFairy._checkout (sqlalchemy",
    "do_ping (",
    "Connection.wait (psycopg",
    "BaseConnection._exec_command (psycopg",
    "create_engine.<locals>.connect (",
    "Logger.info (",
)


@dataclass
class Measurement:
    label: str
    count: int
    finished: int = 0
    rate_first_to_last: float = 0.0
    rate_steady: float = 0.0
    rate_db: float = 0.0
    enqueue_s: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    window_s: float = 0.0
    sessions_opened: int = 0
    run_latency_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    peak_rss_mb: float = 0.0
    profile: str = ""
    #: Postgres statements per run by kind (pg_stat_statements), when the extension is loaded.
    statements: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


#: How pg_stat_statements' normalized texts of a run's statements are told apart (first match).
_STATEMENT_KINDS = (
    ("claim", "WITH locked_run AS"),
    ("step end", "prompt_tokens = prompt_tokens +"),
    ("step start", "INSERT INTO run_steps"),
    ("finish", "WITH finished AS"),
    ("look for parked runs", "SELECT r.user_id FROM task_runs AS r"),
    ("completed steps read", "SELECT index, output FROM run_steps"),
    ("lease heartbeat", "SET lease_expires_at ="),
)
#: The benchmark's own statements (polling, set-up), not counted.
_OWN_STATEMENTS = (
    "pg_stat",
    "GROUP BY status",
    "VACUUM",
    "TRUNCATE",
    "generate_series",
    "SET message_sent_at",
)


def _reset_statement_counts(engine: Any) -> bool:
    """Zero pg_stat_statements; False when the extension is not loaded (nothing is counted)."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
            conn.execute(text("SELECT pg_stat_statements_reset()"))
        return True
    except SQLAlchemyError:
        return False


def _statement_counts(engine: Any, runs: int) -> dict[str, float]:
    """Statements per run by kind, from pg_stat_statements, in this database."""
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT regexp_replace(query, '\\s+', ' ', 'g'), calls FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            )
        ).all()
    kinds: dict[str, float] = {}
    for query, calls in rows:
        if any(own in query for own in _OWN_STATEMENTS):
            continue
        kind = next((name for name, marker in _STATEMENT_KINDS if marker in query), "other")
        kinds[kind] = kinds.get(kind, 0.0) + calls / runs
    return kinds


def _rates(samples: list[tuple[float, int]], total: int) -> tuple[float, float]:
    """Rates (first finish .. last finish, and 10%..90%) from (time, finished) polls.

    The first window runs from the last poll that saw nothing finished to the first poll that saw
    everything finished, so it overstates the duration by up to two polls.
    """
    zero_t = next((t for t, done in reversed(samples) if done == 0), samples[0][0])
    end_t = next((t for t, done in samples if done >= total), samples[-1][0])
    overall = min(samples[-1][1], total) / (end_t - zero_t) if end_t > zero_t else 0.0
    low = next(((t, d) for t, d in samples if d >= 0.1 * total), None)
    high = next(((t, d) for t, d in samples if d >= 0.9 * total), None)
    steady = (high[1] - low[1]) / (high[0] - low[0]) if low and high and high[0] > low[0] else 0.0
    return overall, steady


def _check_intruders(result: Measurement, consumers: int, processes: int) -> None:
    if consumers > processes + 1:  # the workers, and this script's broker (it enqueued)
        result.notes.append(
            f"WARNING: {consumers - processes - 1} Dramatiq consumer(s) besides ours used Redis db 12; "
            "they take messages away: the figures are not valid"
        )


# --- the baseline ---------------------------------------------------------------------------------


def measure_noop(args: argparse.Namespace, logs: Path) -> Measurement:
    import dramatiq

    processes, threads = args.baseline_config
    flush_redis()
    broker = dramatiq.get_broker()
    started = time.perf_counter()
    for number in range(args.runs):
        message = dramatiq.Message(
            queue_name=NOOP_QUEUE, actor_name=NOOP_ACTOR, args=(f"noop-{number}",), kwargs={}, options={}
        )
        broker.enqueue(message)
    result = Measurement(f"bare no-op actor {processes}x{threads}", args.runs)
    result.enqueue_s = time.perf_counter() - started
    client = redis_client()
    key = f"dramatiq:{NOOP_QUEUE}.msgs"
    samples: list[tuple[float, int]] = []
    consumers = 0
    with children() as started_children:
        worker = dramatiq_worker(
            "benchmarks.noop_actors", processes, threads, _worker_env(args), logs / "noop-worker.log"
        )
        started_children.append(worker.start())
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            done = args.runs - int(client.hlen(key))
            samples.append((time.monotonic(), done))
            consumers = max(consumers, int(client.zcard("dramatiq:__heartbeats__")))
            if done >= args.runs or not worker.alive():
                break
            time.sleep(args.baseline_poll)
        result.peak_rss_mb = max((peak_rss_mb(pid) for pid in worker_pids(worker.pid)), default=0.0)
    client.close()
    _check_intruders(result, consumers, processes)
    result.finished = samples[-1][1]
    result.rate_first_to_last, result.rate_steady = _rates(samples, args.runs)
    if result.finished < args.runs:
        result.notes.append(f"only {result.finished} of {args.runs} acked before the timeout")
    flush_redis()
    return result


def measure_same_statements(
    args: argparse.Namespace, engine: Any, processes: int, threads: int, users: int, logs: Path
) -> Measurement:
    """The same-resource baseline: runs' own Postgres statements from a bare actor (raw psycopg)."""
    import dramatiq

    truncate_runs(engine)
    flush_redis()
    bench_users = create_users(engine, users)
    run_ids = insert_queued_runs(engine, bench_users, args.runs, priority=PRIORITY)
    broker = dramatiq.get_broker()
    started = time.perf_counter()
    for run_id in run_ids:
        broker.enqueue(
            dramatiq.Message(
                queue_name=STATEMENTS_QUEUE,
                actor_name=STATEMENTS_ACTOR,
                args=(str(run_id),),
                kwargs={},
                options={},
            )
        )
    result = Measurement(
        f"bare actor, the runs' 11 statements (raw psycopg) {processes}x{threads}, {users} user(s)", args.runs
    )
    result.enqueue_s = time.perf_counter() - started
    counting = _reset_statement_counts(engine)
    tag = f"statements-{processes}x{threads}-u{users}"
    with children() as started_children:
        worker = dramatiq_worker(
            "benchmarks.statement_actors", processes, threads, _worker_env(args), logs / f"worker-{tag}.log"
        )
        started_children.append(worker.start())
        samples, consumers = _poll_runs(args, engine, worker, result, logs / f"py-spy-{tag}.txt")
        result.peak_rss_mb = max((peak_rss_mb(pid) for pid in worker_pids(worker.pid)), default=0.0)
    _check_intruders(result, consumers, processes)
    result.statuses = run_status_counts(engine)
    result.finished = sum(result.statuses.get(s, 0) for s in FINISHED)
    result.rate_first_to_last, result.rate_steady = _rates(samples, args.runs)
    if counting:
        result.statements = _statement_counts(engine, args.runs)
    _db_figures(engine, result)
    return result


# --- the runs -------------------------------------------------------------------------------------


def _worker_env(args: argparse.Namespace) -> dict[str, str]:
    from benchmarks.common import bench_environment

    env = bench_environment(LOG_LEVEL=args.log_level)
    if args.agent_worker_concurrency:
        env["AGENT_WORKER_CONCURRENCY"] = str(args.agent_worker_concurrency)
    if (
        args.pg_options
    ):  # libpq session options for the workers' connections, e.g. "-c synchronous_commit=off"
        from urllib.parse import quote

        env["DATABASE_URL"] = f"{env['DATABASE_URL']}?options={quote(args.pg_options)}"
    return env


def measure_runs(
    args: argparse.Namespace, engine: Any, processes: int, threads: int, users: int, logs: Path
) -> Measurement:
    truncate_runs(engine)
    flush_redis()
    bench_users = create_users(engine, users)
    run_ids = insert_queued_runs(engine, bench_users, args.runs, priority=PRIORITY)
    result = Measurement(f"agentsched runs {processes}x{threads}, {users} user(s)", args.runs)
    result.enqueue_s = send_run_messages(engine, run_ids, PRIORITY)
    counting = _reset_statement_counts(engine)
    tag = f"{processes}x{threads}-u{users}"
    with children() as started_children:
        worker = dramatiq_worker(
            args.worker_module, processes, threads, _worker_env(args), logs / f"worker-{tag}.log"
        )
        started_children.append(worker.start())
        samples, consumers = _poll_runs(args, engine, worker, result, logs / f"py-spy-{tag}.txt")
        result.peak_rss_mb = max((peak_rss_mb(pid) for pid in worker_pids(worker.pid)), default=0.0)
        if not worker.alive():
            result.notes.append(f"the worker exited early; log: {worker.log_path}\n{worker.log_tail()}")
    _check_intruders(result, consumers, processes)
    result.statuses = run_status_counts(engine)
    lost = lost_messages(result.statuses)
    if lost:
        result.notes.append(lost)
    result.finished = sum(result.statuses.get(s, 0) for s in FINISHED)
    result.rate_first_to_last, result.rate_steady = _rates(samples, args.runs)
    if counting:
        result.statements = _statement_counts(engine, args.runs)
    _db_figures(engine, result)
    result.notes.extend(_consistency_problems(engine))
    if result.finished < args.runs:
        result.notes.append(f"only {result.finished} of {args.runs} runs finished before the timeout")
    return result


def _poll_runs(
    args: argparse.Namespace, engine: Any, worker: Child, result: Measurement, profile_path: Path
) -> tuple[list[tuple[float, int]], int]:
    """Poll until every run finished; CPU and connections between 10% and 90% of the runs."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + args.timeout
    meter = CpuMeter(
        lambda: {
            "worker processes": worker_pids(worker.pid),
            "dramatiq parent (log relay)": [worker.pid],
            "postgres backends (this db)": pg_backend_pids(engine),
            "redis-server (shared)": redis_server_pids(),
        },
        exited_pg_backends_cpu,
    )
    window_start: float | None = None
    sessions_start = 0
    spy: subprocess.Popen[bytes] | None = None
    consumers = 0
    while time.monotonic() < deadline:
        consumers = max(consumers, consumers_on_bench_redis())
        counts = run_status_counts(engine)
        done = sum(counts.get(s, 0) for s in FINISHED)
        now = time.monotonic()
        samples.append((now, done))
        if window_start is None and done >= 0.1 * args.runs:
            meter.start()
            sessions_start = pg_sessions_opened()
            window_start = now
            if args.profile:
                spy = start_py_spy(
                    worker_pids(worker.pid), profile_path, args.profile_seconds, idle=args.profile_idle
                )
        elif window_start is not None and not result.window_s:
            if done >= 0.9 * args.runs:
                result.cpu = meter.stop()
                result.sessions_opened = pg_sessions_opened() - sessions_start
                result.window_s = now - window_start
            else:
                meter.sample()
        if done >= args.runs or not worker.alive():
            break
        stalled = [d for t, d in samples if t >= now - args.stall]
        if samples[0][0] <= now - args.stall and done > 0 and stalled[0] == done:
            result.notes.append(f"stopped waiting: nothing finished for {args.stall:.0f} s")
            break
        time.sleep(args.poll)
    if spy is not None:
        result.profile = finish_py_spy(spy, profile_path, args.profile_seconds, PROFILE_FOCUS)
    return samples, consumers


def _db_figures(engine: Any, result: Measurement) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        count, span, p50, p99, mean = conn.execute(
            text(
                """
                SELECT count(*),
                       extract(epoch FROM max(finished_at) - min(started_at)),
                       percentile_cont(0.5)
                           WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                       percentile_cont(0.99)
                           WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)),
                       avg(extract(epoch FROM finished_at - started_at))
                  FROM task_runs WHERE finished_at IS NOT NULL
                """
            )
        ).one()
    if count and span:
        result.rate_db = float(count) / float(span)
        result.run_latency_ms = (float(p50) * 1000, float(p99) * 1000, float(mean) * 1000)


def _consistency_problems(engine: Any) -> list[str]:
    """Credits must balance after a run: nothing held, the ledger sums to what users were charged."""
    from sqlalchemy import text

    with engine.connect() as conn:
        held, used, ledger, charges, charged_runs = conn.execute(
            text(
                """
                SELECT (SELECT coalesce(sum(credits_reserved), 0) FROM users),
                       (SELECT coalesce(sum(credits_used), 0) FROM users),
                       (SELECT coalesce(sum(amount), 0) FROM credit_ledger),
                       (SELECT count(*) FROM credit_ledger WHERE kind = 'charge'),
                       (SELECT count(*) FROM task_runs WHERE credits_used > 0)
                """
            )
        ).one()
    problems = []
    if held:
        problems.append(f"CONSISTENCY: users still hold {held} reserved credits")
    if used != ledger:
        problems.append(f"CONSISTENCY: users were charged {used} credits but the ledger sums to {ledger}")
    if charges != charged_runs:
        problems.append(f"CONSISTENCY: {charges} ledger charges for {charged_runs} charged runs")
    return problems


# --- reporting ------------------------------------------------------------------------------------


def _print_measurement(m: Measurement, baseline: Measurement | None) -> None:
    print(f"\n== {m.label}: {m.finished:,}/{m.count:,} finished")
    print(f"   sending {m.count:,} messages took {m.enqueue_s:.2f} s ({m.count / m.enqueue_s:,.0f} msg/s)")
    line = (
        f"   rate, first..last finish: {m.rate_first_to_last:,.0f}/s; steady 10%..90%: {m.rate_steady:,.0f}/s"
    )
    if m.rate_db:
        line += f"; exact from started_at/finished_at: {m.rate_db:,.0f}/s"
    print(line)
    if baseline is not None and baseline.rate_steady:
        print(
            f"   = {100 * m.rate_steady / baseline.rate_steady:.0f}% of the bare no-op actor "
            f"({baseline.rate_steady:,.0f}/s); goal {GOAL_RUNS_PER_S:,.0f}/s"
        )
    if m.statuses:
        print(f"   statuses: {m.statuses}")
    if m.run_latency_ms[0]:
        p50, p99, mean = m.run_latency_ms
        print(f"   one run, claimed to finished: p50 {p50:.1f} ms, p99 {p99:.1f} ms, mean {mean:.1f} ms")
    print(f"   peak RSS per worker process: {m.peak_rss_mb:.0f} MiB")
    if m.cpu and m.window_s:
        runs = 0.8 * m.count
        total = sum(m.cpu.values())
        print(f"   CPU between 10% and 90% done ({m.window_s:.1f} s), per run:")
        for name, seconds in sorted(m.cpu.items(), key=lambda item: -item[1]):
            print(
                f"     {1e6 * seconds / runs:8.0f} us  {100 * seconds / total if total else 0:4.0f}%  {name}"
            )
        print(
            f"     {1e6 * total / runs:8.0f} us  total: {total / m.window_s:.2f} of the 2 cores "
            f"(at most {2 * runs / total:,.0f} runs/s if the machine were ours alone)"
        )
        print(
            f"   Postgres connections opened meanwhile: {m.sessions_opened:,}"
            + (
                " (pool overflow churn: a pool smaller than the worker's threads)"
                if m.sessions_opened > 10
                else ""
            )
        )
    if m.statements:
        parts = ", ".join(f"{n:.2f} {kind}" for kind, n in sorted(m.statements.items(), key=lambda i: -i[1]))
        print(
            f"   Postgres statements per run (pg_stat_statements): {sum(m.statements.values()):.2f}: {parts}"
        )
    for note in m.notes:
        print(f"   NOTE: {note}")
    if m.profile:
        print("   py-spy profile of one worker process:")
        print("     " + m.profile.replace("\n", "\n     "))


def _config(text: str) -> tuple[int, int]:
    processes, _, threads = text.partition("x")
    return int(processes), int(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20_000, help="runs per configuration (default 20000)")
    parser.add_argument(
        "--configs", default="2x8", help="worker processes x threads, comma-separated (default 2x8)"
    )
    parser.add_argument(
        "--users", default="1", help="users the runs are spread over, comma-separated (default 1)"
    )
    parser.add_argument(
        "--baseline-config", type=_config, default=(2, 8), help="no-op worker processes x threads"
    )
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--skip-same-resource", action="store_true", help="skip the bare actor making the runs' statements"
    )
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between run-count polls")
    parser.add_argument(
        "--baseline-poll", type=float, default=0.1, help="seconds between queue polls (baseline)"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up on one configuration after this (s)"
    )
    parser.add_argument(
        "--stall", type=float, default=30.0, help="give up after this long without progress (s)"
    )
    parser.add_argument("--log-level", default="INFO", help="the workers' LOG_LEVEL (product default INFO)")
    parser.add_argument(
        "--agent-worker-concurrency",
        type=int,
        default=0,
        help="AGENT_WORKER_CONCURRENCY for the workers (sizes their pool; default unset)",
    )
    parser.add_argument("--worker-module", default="actors", help="what `dramatiq` imports (for experiments)")
    parser.add_argument(
        "--pg-options",
        default="",
        help='libpq options for the workers\' connections ("-c synchronous_commit=off")',
    )
    parser.add_argument("--profile", action="store_true", help="py-spy record one worker process")
    parser.add_argument("--profile-seconds", type=int, default=8)
    parser.add_argument("--profile-idle", action="store_true", help="include threads waiting on I/O")
    parser.add_argument("--keep-database", action="store_true", help="do not drop the database at the end")
    args = parser.parse_args(argv)
    if not 0 < args.runs <= 1_000_000:
        parser.error("--runs must be between 1 and 1,000,000")
    with exclusive_benchmark("runs_throughput"):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    configs = [_config(c) for c in args.configs.split(",")]
    user_counts = [int(u) for u in args.users.split(",")]
    use_bench_environment()
    import actors  # noqa: F401  (binds the broker to REDIS_URL db 12)

    logs = log_directory("runs")
    print(f"runs_throughput: {args.runs:,} runs per configuration; {machine_note()}")
    print(
        f"postgres: max_connections={pg_setting('max_connections')}, "
        f"synchronous_commit={pg_setting('synchronous_commit')}, fsync={pg_setting('fsync')}; logs in {logs}"
    )
    recreate_database()
    engine = make_bench_engine()
    results: list[Measurement] = []
    baseline = None
    try:
        if not args.skip_baseline:
            baseline = measure_noop(args, logs)
            _print_measurement(baseline, None)
        for users in user_counts:
            for processes, threads in configs:
                same = None
                if not args.skip_same_resource:
                    same = measure_same_statements(args, engine, processes, threads, users, logs)
                    results.append(same)
                    _print_measurement(same, baseline)
                result = measure_runs(args, engine, processes, threads, users, logs)
                results.append(result)
                _print_measurement(result, baseline)
                if same is not None and same.rate_steady:
                    print(
                        f"   = {100 * result.rate_steady / same.rate_steady:.0f}% of the same-resource "
                        f"baseline ({same.rate_steady:,.0f}/s); goal >= 60%"
                    )
    finally:
        engine.dispose()
        flush_redis()
        if not args.keep_database:
            drop_database()
    print("\nsummary (steady rate, 10%..90% of messages):")
    if baseline is not None:
        print(f"  {baseline.rate_steady:8,.0f}/s  {baseline.label} (baseline)")
    for r in results:
        verdict = "meets" if r.rate_steady >= GOAL_RUNS_PER_S else "below"
        print(f"  {r.rate_steady:8,.0f}/s  {r.label}  ({verdict} the {GOAL_RUNS_PER_S:,.0f}/s goal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
