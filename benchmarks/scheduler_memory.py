"""Scheduler memory: 1,000,000 scheduled tasks in the database, a pass with few due; max RSS.

    .venv/bin/python -m benchmarks.scheduler_memory                  # 1,000,000 tasks, 100 due
    .venv/bin/python -m benchmarks.scheduler_memory --tasks 200000 --due 1000

The benchmark database (see `benchmarks/herd.py`) gets N enabled scheduled tasks, all but --due
of them due tomorrow, inserted with generate_series. The real `python -m scheduler` then runs
(SCHEDULER_POLL_INTERVAL=1, RECONCILE_INTERVAL_S=2) for --seconds, long enough for its first
passes, several reconciler rounds and one status block; the script checks that exactly the due
tasks got runs and reports the scheduler process's peak resident set size (VmHWM), and that of
an idle scheduler on an empty database for comparison.
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
    peak_rss_mb,
    recreate_database,
    seed_scheduled_tasks,
    use_bench_environment,
    vacuum_analyze,
)


def run_scheduler(seconds: float, log_path: Path) -> tuple[float, str]:
    """Run `python -m scheduler` for `seconds`; its peak RSS (MiB) and the tail of its log."""
    child = Child(
        "scheduler",
        [sys.executable, "-m", "scheduler"],
        log_path,
        SCHEDULER_POLL_INTERVAL="1",
        RECONCILE_INTERVAL_S="2",
    )
    try:
        time.sleep(seconds)
        if not child.alive():
            raise RuntimeError(f"the scheduler exited:\n{child.tail()}")
        peak = peak_rss_mb(child.process.pid)
    finally:
        code = child.stop()
    if code != 0:
        raise RuntimeError(f"the scheduler exited with {code}:\n{child.tail()}")
    return peak, child.tail(20)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1_000_000, help="scheduled tasks in the database")
    parser.add_argument("--due", type=int, default=100, help="of which due now")
    parser.add_argument("--seconds", type=float, default=35.0, help="how long the scheduler runs")
    args = parser.parse_args(argv)

    use_bench_environment()
    recreate_database()
    from sqlalchemy import text

    logs = Path(tempfile.mkdtemp(prefix="agentsched-scheduler-memory-"))
    idle_peak, _ = run_scheduler(min(args.seconds, 10.0), logs / "idle.log")

    engine = make_engine()
    user_id = create_user(engine)
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    pairs = herd_expressions(now, 300)
    started = time.perf_counter()
    seed_scheduled_tasks(engine, user_id, args.tasks - args.due, pairs, now + timedelta(days=1))
    seed_scheduled_tasks(engine, user_id, args.due, pairs, now)
    vacuum_analyze(engine)
    print(f"seeded {args.tasks:,} scheduled tasks ({args.due} due) in {time.perf_counter() - started:.1f} s")

    peak, tail = run_scheduler(args.seconds, logs / "scheduler.log")
    with engine.connect() as conn:
        # A minutely task due now is due again at the next minute (and skipped: nothing runs it).
        runs = conn.execute(text("SELECT count(DISTINCT task_id) FROM task_runs")).scalar_one()
        due_left = conn.execute(
            text("SELECT count(*) FROM tasks WHERE schedule_enabled AND next_run_at <= now()")
        ).scalar_one()
    engine.dispose()
    print(
        f"scheduler ran {args.seconds:.0f} s: {runs} tasks got runs (expected {args.due}), "
        f"{due_left} tasks still due"
    )
    print(
        f"scheduler peak RSS (VmHWM): {peak:.1f} MiB with {args.tasks:,} tasks; "
        f"{idle_peak:.1f} MiB idle on an empty database"
    )
    print(f"scheduler log tail ({logs}):\n{tail}")
    return 0 if runs == args.due and due_left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
