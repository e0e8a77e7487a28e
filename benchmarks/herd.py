"""Thundering herd: N scheduled tasks due in the same minute, until every run and message exists.

    .venv/bin/python -m benchmarks.herd                     # 100,000 tasks, one pass
    .venv/bin/python -m benchmarks.herd --tasks 10000 --passes 2

N enabled tasks over a few hundred distinct (cron, timezone) pairs, all firing at the same UTC
minute, are inserted into the benchmark database with `next_run_at` = that minute. The clock
starts when the scheduling pass starts (`app.services.scheduling.run_scheduling_pass`, with the
product's sender `actors.sending.send_dispatches`) and stops when it returns; the script then
checks that N runs exist, each with `message_sent_at`, and that N messages are in Redis.
With --passes P, P passes race over the same tasks (threads, as several schedulers would).
Then, in the same run, a same-resource baseline: one bulk INSERT of a run per task plus a
pipelined enqueue of one Dramatiq message per run, nothing else (skip with --no-baseline).

Everything here uses the benchmarks' shared database and Redis db (`benchmarks/common.py`:
dropped, created, migrated and flushed by the script); `lateness.py` and `scheduler_memory.py`
share these helpers.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from benchmarks.common import (
    DATABASE_URL,
    PROJECT_ROOT,
    REDIS_URL,
    CpuMeter,
    bench_environment,
    pg_backend_pids,
    redis_server_pids,
)
from benchmarks.common import recreate_database as recreate_shared_database
from benchmarks.common import use_bench_environment as use_bench_environment  # lateness, scheduler_memory

ZONES = (
    "UTC", "Europe/London", "Europe/Paris", "Europe/Moscow", "Africa/Cairo", "Africa/Lagos",
    "Asia/Dubai", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Shanghai", "Asia/Tokyo", "Asia/Singapore",
    "Australia/Sydney", "Australia/Adelaide", "Pacific/Auckland", "Pacific/Honolulu",
    "America/Anchorage", "America/Los_Angeles", "America/Denver", "America/Chicago",
    "America/New_York", "America/Halifax", "America/St_Johns", "America/Sao_Paulo",
    "America/Mexico_City", "Atlantic/Azores", "Europe/Helsinki", "Asia/Tehran", "Asia/Jakarta",
    "Asia/Seoul",
)  # fmt: skip


def recreate_database() -> None:
    """The shared benchmark database, rebuilt with the migrations; its Redis db flushed."""
    import redis

    recreate_shared_database()
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    client.close()


def make_engine(pool_size: int = 8) -> Any:
    from app.db import make_engine as make_app_engine
    from app.settings import load_settings

    return make_app_engine(load_settings(database_url=DATABASE_URL), pool_size=pool_size)


def create_user(engine: Any, email: str = "bench@example.com") -> Any:
    from app.db import make_session_factory
    from app.services import accounts

    with make_session_factory(engine).begin() as session:
        user = accounts.create_user(session, email=email, plan="enterprise", monthly_credits=2_000_000_000)
        return user.id


def herd_expressions(due_at: datetime, distinct: int) -> list[tuple[str, str]]:
    """`distinct` (cron, timezone) pairs that all fire at the UTC minute `due_at`."""
    pairs: list[tuple[str, str]] = []
    for zone in ZONES:
        local = due_at.astimezone(ZoneInfo(zone))
        m, h, dom, mon, dow = local.minute, local.hour, local.day, local.month, (local.weekday() + 1) % 7
        shapes = (
            f"{m} * * * *",
            f"{m} {h} * * *",
            f"{m} {h} * * {dow}",
            f"{m} {h} {dom} * *",
            f"{m} {h} * {mon} *",
            f"{m % 5}-59/5 * * * *",
            f"{m % 15}-59/15 {h} * * *",
            f"{m},{(m + 30) % 60} * * * *" if m != (m + 30) % 60 else "* * * * *",
            f"{m} {h},{(h + 12) % 24} * * *",
            f"{m} {h} {dom} {mon} *",
            "* * * * *",
        )
        pairs.extend((shape, zone) for shape in shapes)
    unique = list(dict.fromkeys(pairs))
    return unique[:distinct]


_SEED = """
INSERT INTO tasks (user_id, title, description, agent_type, status, priority, schedule,
                   schedule_enabled, cron, timezone, next_run_at, agent_config)
SELECT :user_id, 'herd ' || g, 'Summarise item ' || g, 'research_agent', 'pending',
       (ARRAY['urgent', 'high', 'medium', 'low'])[1 + g % 4],
       jsonb_build_object('enabled', true, 'cron', (CAST(:crons AS text[]))[1 + g % :k],
                          'timezone', (CAST(:zones AS text[]))[1 + g % :k]),
       :enabled, (CAST(:crons AS text[]))[1 + g % :k], (CAST(:zones AS text[]))[1 + g % :k],
       :next_run_at, '{"timeout": 300000, "maxRetries": 3}'
  FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS g
"""


def seed_scheduled_tasks(
    engine: Any,
    user_id: Any,
    count: int,
    pairs: Sequence[tuple[str, str]],
    next_run_at: datetime,
    *,
    enabled: bool = True,
    batch: int = 100_000,
) -> None:
    """`count` scheduled tasks spread round-robin over `pairs`, all with this `next_run_at`."""
    from sqlalchemy import text

    for first in range(0, count, batch):
        with engine.begin() as conn:
            conn.execute(
                text(_SEED),
                {
                    "user_id": user_id,
                    "crons": [cron for cron, _ in pairs],
                    "zones": [zone for _, zone in pairs],
                    "k": len(pairs),
                    "enabled": enabled,
                    "next_run_at": next_run_at,
                    "first": first,
                    "last": min(count, first + batch) - 1,
                },
            )


def vacuum_analyze(engine: Any) -> None:
    from sqlalchemy import text

    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE tasks, task_runs"))


class Child:
    """A process this script started, in a session of its own; stopped with SIGTERM, then killed."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, **env: str) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            list(argv),
            cwd=PROJECT_ROOT,
            env=bench_environment(**env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace_s: float = 20.0) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)  # its own group: only what it started
                self.process.wait(5)
        self._log.close()
        return self.process.returncode

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def peak_rss_mb(pid: int) -> float:
    """The process's high-water resident set size (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_extra_sql(engine: Any, statements: Sequence[str]) -> None:
    from sqlalchemy import text

    for statement in statements:
        with engine.begin() as conn:
            conn.execute(text(statement))
        print(f"applied: {statement}")


def messages_in_redis() -> int:
    import redis

    from app.models.enums import Priority
    from app.services.dispatch import queue_name
    from app.services.stats import queue_key

    client = redis.Redis.from_url(REDIS_URL)
    try:
        return sum(int(client.llen(queue_key(queue_name(p)))) for p in Priority)
    finally:
        client.close()


_BASELINE_INSERT = """
INSERT INTO task_runs (task_id, user_id, trigger, scheduled_for, status, priority, attempts,
                       max_attempts, timeout_ms, queued_at, message_id, message_sent_at)
SELECT id, user_id, 'schedule', :slot, 'queued', priority, 0, 4, 300000, now(),
       CAST(gen_random_uuid() AS text), now()
  FROM tasks
RETURNING id, priority, message_id
"""


def cpu_meter() -> CpuMeter:
    """CPU seconds of this process, the benchmark database's backends and Redis: what the pass
    and the baseline cost, which the shared machine's load does not change as much as time."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    probe = create_engine(DATABASE_URL, poolclass=NullPool)  # its own backend is left out
    return CpuMeter(
        lambda: {
            "this process": [os.getpid()],
            "postgres": pg_backend_pids(probe),
            "redis": redis_server_pids(),
        }
    )


def format_cpu(used: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in used.items())


def measure_baseline(engine: Any, slot: datetime, meter: CpuMeter) -> tuple[float, int, dict[str, float]]:
    """The same work with nothing else: one bulk INSERT of a run per task, then a pipelined
    enqueue of a Dramatiq message per run (as `RedisBroker.enqueue` would store it). Seconds, runs
    and the CPU seconds `meter` counted over the same span."""
    import dramatiq
    import redis
    from sqlalchemy import text

    from app.services.dispatch import actor_name, queue_name

    with engine.begin() as conn:
        conn.execute(text("TRUNCATE task_runs CASCADE"))
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    vacuum_analyze(engine)
    meter.start()
    started = time.perf_counter()
    with engine.begin() as conn:
        rows = conn.execute(text(_BASELINE_INSERT), {"slot": slot}).all()
    pipe = client.pipeline(transaction=False)
    for index, (run_id, priority, message_id) in enumerate(rows, 1):
        queue = queue_name(priority)
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=queue,
            actor_name=actor_name(priority),
            args=(str(run_id),),
            kwargs={},
            options={"redis_message_id": message_id},
            message_id=message_id,
            message_timestamp=int(time.time() * 1000),
        )
        pipe.hset(f"dramatiq:{queue}.msgs", message_id, message.encode())
        pipe.rpush(f"dramatiq:{queue}", message_id)
        if index % 2000 == 0:
            pipe.execute()
    pipe.execute()
    elapsed = time.perf_counter() - started
    used = meter.stop()
    client.close()
    return elapsed, len(rows), used


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100_000, help="tasks due in the same minute")
    parser.add_argument("--expressions", type=int, default=300, help="distinct (cron, timezone) pairs")
    parser.add_argument("--batch-size", type=int, default=1000, help="tasks claimed per transaction")
    parser.add_argument("--passes", type=int, default=1, help="passes racing over the same tasks")
    parser.add_argument(
        "--extra-sql",
        action="append",
        default=[],
        help="SQL run after the migrations (to try a schema change)",
    )
    parser.add_argument("--no-baseline", action="store_true", help="skip the same-resource baseline")
    args = parser.parse_args(argv)
    from benchmarks.common import exclusive_benchmark

    with exclusive_benchmark("herd"):
        return measure(args)


def measure(args: argparse.Namespace) -> int:
    use_bench_environment()
    recreate_database()
    import actors  # noqa: F401  (the broker, bound to Redis db 13)
    from actors.sending import send_dispatches
    from app.clock import SYSTEM_CLOCK
    from app.db import make_session_factory
    from app.services.scheduling import PassResult, run_scheduling_pass

    engine = make_engine(pool_size=2 * args.passes + 2)
    session_factory = make_session_factory(engine)
    run_extra_sql(engine, args.extra_sql)
    due_at = datetime.now(UTC).replace(second=0, microsecond=0)
    pairs = herd_expressions(due_at, args.expressions)
    seeding = time.perf_counter()
    seed_scheduled_tasks(engine, create_user(engine), args.tasks, pairs, due_at)
    vacuum_analyze(engine)
    print(
        f"seeded {args.tasks:,} tasks over {len(pairs)} (cron, timezone) pairs due at {due_at:%H:%M} UTC "
        f"in {time.perf_counter() - seeding:.1f} s"
    )

    send_seconds = [0.0]
    lock = threading.Lock()

    def send(dispatches: Sequence[Any]) -> None:
        started = time.perf_counter()
        send_dispatches(session_factory, dispatches, SYSTEM_CLOCK)
        with lock:
            send_seconds[0] += time.perf_counter() - started

    results: list[PassResult] = []
    now = due_at + timedelta(seconds=0.5)

    def one_pass() -> None:
        results.append(run_scheduling_pass(session_factory, now=now, send=send, batch_size=args.batch_size))

    threads = [threading.Thread(target=one_pass) for _ in range(args.passes)]
    meter = cpu_meter()
    meter.start()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    pass_cpu = meter.stop()

    from sqlalchemy import text

    with engine.connect() as conn:
        runs, sent = conn.execute(
            text("SELECT count(*), count(message_sent_at) FROM task_runs WHERE trigger = 'schedule'")
        ).one()
    in_redis = messages_in_redis()
    queued = sum(r.runs_queued for r in results)
    print(f"passes: {args.passes}, batch size {args.batch_size}, {os.cpu_count()} CPUs")
    print(
        f"runs created: {runs:,} (queued {queued:,}), messages recorded sent: {sent:,}, "
        f"in Redis: {in_redis:,}"
    )
    print(
        f"time from pass start until all runs and messages exist: {elapsed:.2f} s "
        f"({args.tasks / elapsed:,.0f} runs/s); sending {send_seconds[0]:.2f} s of it"
    )
    print(f"  CPU seconds: {format_cpu(pass_cpu)} (load average {os.getloadavg()[0]:.2f})")
    ok = runs == sent == in_redis == args.tasks
    if not args.no_baseline:
        baseline_slot = due_at + timedelta(minutes=1)
        baseline_s, baseline_runs, baseline_cpu = measure_baseline(engine, baseline_slot, meter)
        baseline_in_redis = messages_in_redis()
        print(
            f"baseline (bulk INSERT of {baseline_runs:,} runs + pipelined enqueue of {baseline_in_redis:,} "
            f"messages, nothing else): {baseline_s:.2f} s; the pass reaches "
            f"{100 * baseline_s / elapsed:.0f}% of its speed (goal: >= 70%, and <= 10 s at 100,000)"
        )
        print(f"  CPU seconds: {format_cpu(baseline_cpu)} (load average {os.getloadavg()[0]:.2f})")
    engine.dispose()
    if not ok:
        print("MISMATCH: expected", args.tasks, "of each")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
