"""Waiting for runs_throughput's runs to finish, and metering what they cost meanwhile: CPU and
Postgres connections between 10% and 90% done, and with --profile a py-spy profile of one worker."""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks.measuring import CpuMeter, exited_pg_backends_cpu, pg_backend_pids, redis_server_pids
from benchmarks.processes import Child, worker_pids
from benchmarks.profiling import finish_py_spy, start_py_spy
from benchmarks.runs_measurement import Measurement
from benchmarks.seeding import run_status_counts
from benchmarks.stores import consumers_on_bench_redis, pg_sessions_opened

FINISHED = ("completed", "failed", "cancelled", "skipped")
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


def poll_runs(
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
