"""Lateness: 1,000 tasks due in the same minute, free workers; slot -> started_at, p50 and p99.

    .venv/bin/python -m benchmarks.lateness                     # 1,000 tasks, 2 x 16 worker threads
    .venv/bin/python -m benchmarks.lateness --tasks 200 --threads 16

The real processes run as a user would run them, against the benchmark database and Redis db 13
(see `benchmarks/herd.py`): `python -m scheduler` (SCHEDULER_POLL_INTERVAL=60, so its pass fires
on the minute boundary) and `dramatiq actors --processes P --threads T` with the offline model.
N tasks (a few hundred distinct expressions and timezones) are made due at the next minute
boundary at least --lead seconds away; the script waits until every run has started and reports
percentiles of `started_at - scheduled_for` (the lateness the stats endpoint shows), measured in
Postgres with percentile_cont, plus how long the last run took to finish.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from benchmarks.herd import (
    Child,
    create_user,
    herd_expressions,
    make_engine,
    recreate_database,
    seed_scheduled_tasks,
    use_bench_environment,
    vacuum_analyze,
)

_LATENESS = """
SELECT count(*), count(started_at), count(*) FILTER (WHERE status IN ('completed', 'failed')),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - scheduled_for)),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM started_at - scheduled_for)),
       max(EXTRACT(EPOCH FROM started_at - scheduled_for)),
       max(EXTRACT(EPOCH FROM message_sent_at - scheduled_for)),
       max(EXTRACT(EPOCH FROM finished_at - scheduled_for))
  FROM task_runs WHERE trigger = 'schedule'
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1_000)
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker process")
    parser.add_argument("--users", type=int, default=1, help="owners the tasks are spread over")
    parser.add_argument("--lead", type=float, default=15.0, help="seconds at least before the slot")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for every run")
    args = parser.parse_args(argv)

    use_bench_environment()
    recreate_database()
    from sqlalchemy import text

    engine = make_engine()
    slot = (datetime.now(UTC) + timedelta(seconds=args.lead + 60)).replace(second=0, microsecond=0)
    pairs = herd_expressions(slot, 300)
    for index in range(args.users):
        share = args.tasks // args.users + (1 if index < args.tasks % args.users else 0)
        owner = create_user(engine, f"bench-{index}@example.com")
        seed_scheduled_tasks(engine, owner, share, pairs, slot)
    vacuum_analyze(engine)
    logs = Path(tempfile.mkdtemp(prefix="agentsched-lateness-"))
    print(
        f"{args.tasks:,} tasks over {len(pairs)} (cron, timezone) pairs, "
        f"due at {slot:%H:%M:%S} UTC; logs in {logs}"
    )

    python = sys.executable
    children = [
        Child(
            "worker",
            [
                python,
                "-m",
                "dramatiq",
                "actors",
                "--processes",
                str(args.processes),
                "--threads",
                str(args.threads),
            ],
            logs / "worker.log",
            AGENT_WORKER_CONCURRENCY=str(args.threads),  # sizes each process's connection pool
        ),
        Child("scheduler", [python, "-m", "scheduler"], logs / "scheduler.log", SCHEDULER_POLL_INTERVAL="60"),
    ]
    try:
        deadline = time.monotonic() + (slot - datetime.now(UTC)).total_seconds() + args.timeout
        while True:
            for child in children:
                if not child.alive():
                    print(f"{child.name} exited:\n{child.tail()}")
                    return 1
            with engine.connect() as conn:
                total, started, finished, p50, p99, worst, all_sent, last_done = conn.execute(
                    text(_LATENESS)
                ).one()
            if started == args.tasks and finished == args.tasks:
                break
            if time.monotonic() > deadline:
                print(f"timed out: {total} runs, {started} started, {finished} finished")
                return 1
            time.sleep(0.5)
    finally:
        for child in reversed(children):
            child.stop()
        engine.dispose()
    print(
        f"workers: {args.processes} processes x {args.threads} threads, offline model; {args.users} user(s)"
    )
    print(
        f"runs: {total:,}, all started and finished; every message in Redis {all_sent * 1000:.0f} ms "
        "after the slot"
    )
    print(
        f"lateness slot -> started_at: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {worst * 1000:.0f} ms"
    )
    print(f"last run finished {last_done:.2f} s after the slot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
