"""Recovery from `kill -9`: one of two worker processes dies with runs in flight.

    .venv/bin/python -m benchmarks.recovery                      # 200 runs, 2 s a model call
    .venv/bin/python -m benchmarks.recovery --runs 40 --lease-s 10 --reconcile-s 5   # a quick look

Two `dramatiq actors --processes 1` workers (A, then B), the scheduler (its reconciler), and a
model server answering every call after --delay seconds (streamed). N runs with 1-hour timeouts
are queued; once every run is running, worker A is killed with SIGKILL (its whole process
group). The runs A held, running or prefetched, are found from its Dramatiq ack sets just
before the kill. Printed: the time until every one of A's runs is running again on B (claimed
again) and until all N are completed, against the bound RUN_LEASE_S + RECONCILE_INTERVAL_S;
the model calls spent again (calls answered minus 4 per run; goal: at most one per killed
run) and the charges per run (exactly one each).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from typing import Any

from benchmarks.common import (
    Child,
    children,
    create_users,
    dramatiq_worker,
    drop_database,
    exclusive_benchmark,
    flush_redis,
    free_port,
    insert_queued_runs,
    log_directory,
    machine_note,
    make_bench_engine,
    recreate_database,
    redis_client,
    send_run_messages,
    truncate_runs,
    use_bench_environment,
)
from benchmarks.workers import model_arrivals, start_model_server, worker_environment

PRIORITY = "medium"
CALLS_PER_RUN = 4
ONE_HOUR_MS = 3_600_000


def _state(engine: Any, run_ids: set[str]) -> dict[str, tuple[str, int]]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, status, attempts FROM task_runs")).all()
    return {str(r[0]): (str(r[1]), int(r[2])) for r in rows if not run_ids or str(r[0]) in run_ids}


def _held_by(client: Any, worker_id: str, engine: Any) -> set[str]:
    """The runs whose messages a worker holds (running or prefetched), from its ack sets."""
    from sqlalchemy import text

    message_ids: set[str] = set()
    for key in client.scan_iter(match=f"dramatiq:__acks__.{worker_id}.*"):
        message_ids |= {m.decode() for m in client.smembers(key)}
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id FROM task_runs WHERE message_id = ANY(:ids)"), {"ids": list(message_ids)}
        ).all()
    return {str(r[0]) for r in rows}


def _lift_concurrency_limits(engine: Any, runs: int) -> None:
    """Every run may run at once: the benchmark measures recovery, not the per-user limit."""
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("UPDATE users SET max_concurrent_runs = :n"), {"n": runs})


def _wait(check: Any, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"recovery: {what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


def run(args: argparse.Namespace) -> int:
    use_bench_environment()
    import actors  # noqa: F401  (binds the broker to the benchmark Redis db)

    logs = log_directory("recovery")
    print(f"recovery: {args.runs} runs, model {args.delay:g} s a call, 1 h timeouts; {machine_note()}")
    recreate_database()
    engine = make_bench_engine()
    client = redis_client()
    try:
        truncate_runs(engine)
        flush_redis()
        users = create_users(engine, args.users)
        _lift_concurrency_limits(engine, args.runs)
        run_ids = insert_queued_runs(engine, users, args.runs, priority=PRIORITY, timeout_ms=ONE_HOUR_MS)
        port = free_port()
        env = worker_environment(
            port,
            RUN_LEASE_S=str(args.lease_s),
            RUN_HEARTBEAT_S=str(args.heartbeat_s),
            RECONCILE_INTERVAL_S=str(args.reconcile_s),
            LOG_LEVEL="INFO",
            # Each worker holds at most `threads` messages, so the runs spread over both.
            dramatiq_queue_prefetch=str(args.threads),
        )
        with children() as started:
            start_model_server(started, port, args.delay, logs)
            scheduler = Child("scheduler", [sys.executable, "-m", "scheduler"], env, logs / "scheduler.log")
            started.append(scheduler.start())
            worker_a = dramatiq_worker("actors", 1, args.threads, env, logs / "worker-a.log")
            started.append(worker_a.start())
            before = {m.decode() for m in client.zrange("dramatiq:__heartbeats__", 0, -1)}
            _wait(lambda: client.zcard("dramatiq:__heartbeats__") > len(before), 60, "worker A's start")
            (a_id,) = {m.decode() for m in client.zrange("dramatiq:__heartbeats__", 0, -1)} - before
            worker_b = dramatiq_worker("actors", 1, args.threads, env, logs / "worker-b.log")
            started.append(worker_b.start())
            _wait(lambda: client.zcard("dramatiq:__heartbeats__") > len(before) + 1, 60, "worker B's start")
            send_run_messages(engine, run_ids, PRIORITY)
            ids = {str(r) for r in run_ids}
            _wait(
                lambda: sum(s == "running" for s, _ in _state(engine, ids).values()) >= args.runs,
                120,
                "every run running",
            )
            time.sleep(args.delay * 1.5)  # into the runs' steps
            held = _held_by(client, a_id, engine)
            os.killpg(worker_a.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            print(f"killed worker A holding {len(held)} run(s) (running or prefetched)")

            def a_runs_back() -> bool:
                state = _state(engine, held)
                return all(s == "completed" or (s == "running" and n >= 2) for s, n in state.values())

            back_s = _wait(a_runs_back, args.timeout, "A's runs running again")
            done_s = _wait(
                lambda: all(s == "completed" for s, _ in _state(engine, ids).values()),
                args.timeout,
                "completion",
            )
            answered = len(model_arrivals(port))  # a call cut by the kill counts: it was paid for
        _report(args, engine, held, back_s, done_s + back_s, answered, killed_at)
    finally:
        client.close()
        engine.dispose()
        flush_redis()
        drop_database()
    return 0


def _report(
    args: argparse.Namespace,
    engine: Any,
    held: set[str],
    back_s: float,
    done_s: float,
    answered: int,
    _: float,
) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        charges = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n <> 1) FROM"
                " (SELECT r.id, count(l.*) AS n FROM task_runs r"
                "  LEFT JOIN credit_ledger l ON l.run_id = r.id AND l.kind = 'charge' GROUP BY r.id) AS c"
            )
        ).one()
        replanned = conn.execute(
            text("SELECT count(*) FROM run_steps WHERE kind = 'plan' AND attempt > 1")
        ).scalar_one()
    bound = args.lease_s + args.reconcile_s
    extra = answered - CALLS_PER_RUN * args.runs
    print(
        f"  A's {len(held)} runs running again after {back_s:.1f} s"
        f" (bound RUN_LEASE_S + reconciler interval = {bound:g} s)"
    )
    print(f"  all {args.runs} completed {done_s:.1f} s after the kill")
    print(
        f"  model calls: {answered} made, {extra} spent again "
        f"({extra / max(1, len(held)):.2f} per killed run; goal <= 1); plans made again: {replanned}"
    )
    print(f"  charges: {charges[0]} runs charged exactly once, {charges[1]} otherwise (goal 0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds the model takes per call")
    parser.add_argument(
        "--threads", type=int, default=0, help="threads of each of the two workers (default: half the runs)"
    )
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--lease-s", type=float, default=30.0, help="RUN_LEASE_S (product default 30)")
    parser.add_argument("--heartbeat-s", type=float, default=5.0, help="RUN_HEARTBEAT_S (default 5)")
    parser.add_argument("--reconcile-s", type=int, default=30, help="RECONCILE_INTERVAL_S (default 30)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    args.threads = args.threads or -(-args.runs // 2)
    with exclusive_benchmark("recovery"):
        return run(args)


if __name__ == "__main__":
    sys.exit(main())
