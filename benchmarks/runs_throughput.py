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
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    children,
    create_users,
    dramatiq_worker,
    drop_database,
    exclusive_benchmark,
    flush_redis,
    insert_queued_runs,
    log_directory,
    lost_messages,
    machine_note,
    make_bench_engine,
    peak_rss_mb,
    pg_setting,
    recreate_database,
    redis_client,
    run_status_counts,
    send_run_messages,
    truncate_runs,
    use_bench_environment,
    worker_pids,
)
from benchmarks.runs_database import (
    consistency_problems,
    db_figures,
    reset_statement_counts,
    statement_counts,
)
from benchmarks.runs_measurement import (
    GOAL_RUNS_PER_S,
    Measurement,
    check_intruders,
    finish_rates,
    print_measurement,
)
from benchmarks.runs_polling import FINISHED, poll_runs

PRIORITY = "medium"
#: As in benchmarks/noop_actors.py (not imported here: importing it would replace the broker).
NOOP_QUEUE = NOOP_ACTOR = "noop"
#: As in benchmarks/statement_actors.py (the same-resource baseline).
STATEMENTS_QUEUE, STATEMENTS_ACTOR = "statements", "same_statements"


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
    check_intruders(result, consumers, processes)
    result.finished = samples[-1][1]
    result.rate_first_to_last, result.rate_steady = finish_rates(samples, args.runs)
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
    counting = reset_statement_counts(engine)
    tag = f"statements-{processes}x{threads}-u{users}"
    with children() as started_children:
        worker = dramatiq_worker(
            "benchmarks.statement_actors", processes, threads, _worker_env(args), logs / f"worker-{tag}.log"
        )
        started_children.append(worker.start())
        samples, consumers = poll_runs(args, engine, worker, result, logs / f"py-spy-{tag}.txt")
        result.peak_rss_mb = max((peak_rss_mb(pid) for pid in worker_pids(worker.pid)), default=0.0)
    check_intruders(result, consumers, processes)
    result.statuses = run_status_counts(engine)
    result.finished = sum(result.statuses.get(s, 0) for s in FINISHED)
    result.rate_first_to_last, result.rate_steady = finish_rates(samples, args.runs)
    if counting:
        result.statements = statement_counts(engine, args.runs)
    db_figures(engine, result)
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
    counting = reset_statement_counts(engine)
    tag = f"{processes}x{threads}-u{users}"
    with children() as started_children:
        worker = dramatiq_worker(
            args.worker_module, processes, threads, _worker_env(args), logs / f"worker-{tag}.log"
        )
        started_children.append(worker.start())
        samples, consumers = poll_runs(args, engine, worker, result, logs / f"py-spy-{tag}.txt")
        result.peak_rss_mb = max((peak_rss_mb(pid) for pid in worker_pids(worker.pid)), default=0.0)
        if not worker.alive():
            result.notes.append(f"the worker exited early; log: {worker.log_path}\n{worker.log_tail()}")
    check_intruders(result, consumers, processes)
    result.statuses = run_status_counts(engine)
    lost = lost_messages(result.statuses)
    if lost:
        result.notes.append(lost)
    result.finished = sum(result.statuses.get(s, 0) for s in FINISHED)
    result.rate_first_to_last, result.rate_steady = finish_rates(samples, args.runs)
    if counting:
        result.statements = statement_counts(engine, args.runs)
    db_figures(engine, result)
    result.notes.extend(consistency_problems(engine))
    if result.finished < args.runs:
        result.notes.append(f"only {result.finished} of {args.runs} runs finished before the timeout")
    return result


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
            print_measurement(baseline, None)
        for users in user_counts:
            for processes, threads in configs:
                same = None
                if not args.skip_same_resource:
                    same = measure_same_statements(args, engine, processes, threads, users, logs)
                    results.append(same)
                    print_measurement(same, baseline)
                result = measure_runs(args, engine, processes, threads, users, logs)
                results.append(result)
                print_measurement(result, baseline)
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
