"""Fair share and priorities under a backlog: start latency of another user's (or an urgent) run.

    .venv/bin/python -m benchmarks.fairness                         # 5,000 backlog, 10,000 low
    .venv/bin/python -m benchmarks.fairness --backlog 300 --low 600 --samples 5   # a short try

1. User A (enterprise: 20 at once, at least the workers' 2 x 8 threads, so A alone keeps
   every thread busy) queues `--backlog` runs through the product's create path (the statement of
   POST /api/agent/execute, then the send). While the workers are busy with them, user B
   queues one run of the same priority, `--samples` times, each after the previous one has
   started; its start latency (queued to started) is printed as p50/p99 beside the median run
   duration. Goal: about one run duration at most.
2. `--low` low-priority runs of 50 users are queued (bulk, every message in Redis: the
   hardest case for the queue), then, while the workers are busy, one `urgent` run of another
   user at a time, `--samples` times. Same figures, same goal.

The model server answers each call after `--delay` s; a run makes four calls.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from benchmarks.common import (
    children,
    create_users,
    dramatiq_worker,
    exclusive_benchmark,
    flush_redis,
    free_port,
    insert_queued_runs,
    log_directory,
    machine_note,
    make_bench_engine,
    percentile,
    recreate_database,
    send_run_messages,
    truncate_runs,
    use_bench_environment,
)
from benchmarks.workers import start_model_server, worker_environment


def create_run(session_factory: Any, user_id: uuid.UUID, priority: str) -> uuid.UUID:
    """One task and run the way POST /api/agent/execute makes them, its message sent after."""
    from actors.sending import send_messages
    from app.clock import SYSTEM_CLOCK
    from app.services.task_input import parse_execute_request
    from app.services.tasks import create_task

    request = parse_execute_request(
        {"goal": "Summarise the item", "agentType": "research_agent", "priority": priority, "async": True},
        default_timezone="UTC",
    )
    with session_factory() as session:
        created = create_task(session, user_id, request, SYSTEM_CLOCK.now())
    send_messages(created.dispatches)
    assert created.run_id is not None
    return created.run_id


def started_after(engine: Any, run_id: uuid.UUID, timeout_s: float) -> float | None:
    """Seconds from queued to started, once the run has started; None after `timeout_s`."""
    from sqlalchemy import text

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            latency = conn.execute(
                text(
                    "SELECT extract(epoch FROM started_at - queued_at) FROM task_runs"
                    " WHERE id = :id AND started_at IS NOT NULL"
                ),
                {"id": run_id},
            ).scalar()
        if latency is not None:
            return float(latency)
        time.sleep(0.02)
    return None


def busy(engine: Any, threads: int, timeout_s: float = 120) -> None:
    from sqlalchemy import text

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if (
                conn.execute(text("SELECT count(*) FROM task_runs WHERE status = 'running'")).scalar_one()
                >= threads
            ):
                return
        time.sleep(0.1)
    raise SystemExit("the workers never got busy")


def run_duration_s(engine: Any) -> float:
    from sqlalchemy import text

    with engine.connect() as conn:
        value = conn.execute(
            text(
                "SELECT percentile_cont(0.5) WITHIN GROUP"
                " (ORDER BY extract(epoch FROM finished_at - started_at))"
                " FROM task_runs WHERE status = 'completed'"
            )
        ).scalar()
    return float(value or 0.0)


def sample(engine: Any, session_factory: Any, user_id: uuid.UUID, priority: str, samples: int) -> list[float]:
    latencies: list[float] = []
    for _ in range(samples):
        run_id = create_run(session_factory, user_id, priority)
        latency = started_after(engine, run_id, timeout_s=300)
        if latency is None:
            print(f"  a {priority} run did not start within 300 s")
            break
        latencies.append(latency)
        time.sleep(0.2)
    return latencies


def report(title: str, latencies: Sequence[float], duration_s: float) -> None:
    if not latencies:
        print(f"{title}: no samples")
        return
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(
        f"{title}: start latency p50 {p50:.2f} s, p99 {p99:.2f} s over {len(latencies)} runs; "
        f"median run duration {duration_s:.2f} s (goal: about one run duration)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backlog", type=int, default=5_000, help="user A's queued runs")
    parser.add_argument("--low", type=int, default=10_000, help="low runs queued ahead of an urgent one")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.25, help="model server seconds per call")
    args = parser.parse_args(argv)
    with exclusive_benchmark("fairness"):
        return measure(args)


def measure(args: argparse.Namespace) -> int:
    use_bench_environment()
    recreate_database()
    flush_redis()
    import actors  # noqa: F401  (the broker the runs are sent on)
    from app.db import make_session_factory

    engine = make_bench_engine(pool_size=4)
    autocommit = make_session_factory(engine.execution_options(isolation_level="AUTOCOMMIT"))
    logs = log_directory("fairness")
    port = free_port()
    threads = args.processes * args.threads
    print(machine_note())
    with children() as started:
        start_model_server(started, port, args.delay, logs)
        env = worker_environment(port)

        # 1. A's backlog against B's new runs
        a, b = create_users(engine, 2)
        queuing = time.perf_counter()
        for _ in range(args.backlog):
            create_run(autocommit, a.user_id, "medium")
        print(f"user A: {args.backlog} runs queued in {time.perf_counter() - queuing:.1f} s")
        worker = dramatiq_worker("actors", args.processes, args.threads, env, logs / "worker-1.log")
        started.append(worker.start())
        busy(engine, threads)
        latencies = sample(engine, autocommit, b.user_id, "medium", args.samples)
        report(f"B's run behind A's {args.backlog}-run backlog", latencies, run_duration_s(engine))
        worker.stop()

        # 2. an urgent run behind many low ones
        truncate_runs(engine)
        flush_redis()
        lows = create_users(engine, 50)
        run_ids = insert_queued_runs(engine, lows, args.low, priority="low")
        send_run_messages(engine, run_ids, "low")
        print(f"{args.low} low runs of 50 users queued, every message in Redis")
        (urgent_user,) = create_users(engine, 1)
        worker = dramatiq_worker("actors", args.processes, args.threads, env, logs / "worker-2.log")
        started.append(worker.start())
        busy(engine, threads)
        latencies = sample(engine, autocommit, urgent_user.user_id, "urgent", args.samples)
        report(f"an urgent run behind {args.low} low runs", latencies, run_duration_s(engine))
    engine.dispose()
    print(f"logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
