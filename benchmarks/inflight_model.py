"""What `benchmarks.inflight` measures: its goals, one poll's sample and a scenario's result."""

from __future__ import annotations

import argparse
import collections
from dataclasses import dataclass, field
from pathlib import Path

GOAL_IN_FLIGHT = 512
GOAL_SHARE_OF_IDEAL = 0.90
GOAL_RSS_MB = 300.0
BENCH_ROLE = "agentsched_bench"
#: The CPU meter's group of the worker processes (the others: Postgres, model server, Redis).
WORKER_GROUP = "worker processes"
#: The same-resource baselines: bare actors doing a run's I/O (`STREAM_BASELINE` = threads, asyncio).
BASELINE_MODULE = "benchmarks.stream_actors"
PRIORITY = "medium"
FINISHED = ("completed", "failed", "cancelled", "skipped")
#: A run 'running' for longer than this (several times its ideal latency) is not executing.
STALE_RUNNING_S = 30
#: What a worker thread is doing, by the first matching frame of its stack (py-spy dump).
THREAD_STATES = (
    ("waiting for a pooled Postgres connection", "QueuePool._do_get"),
    ("waiting for a pooled Postgres connection", "getconn (psycopg_pool"),  # the baselines
    ("in a model call", "OpenAIProvider.complete"),
    ("in a model call", "_call (benchmarks/stream_actors"),
    ("waiting for its coroutine on the event loop", "run_coroutine (dramatiq/asyncio"),
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
    #: A same-resource baseline's, not the product's.
    baseline: bool = False
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


# --- scenarios: the product, or a same-resource baseline ----------------------------------------


@dataclass(frozen=True)
class Scenario:
    """What one scenario runs: the product (an AGENT_WORKER_CONCURRENCY value) or a baseline."""

    label: str
    tag: str
    module: str
    env: dict[str, str]
    baseline: bool = False


def product_scenario(args: argparse.Namespace, concurrency_env: str) -> Scenario:
    env = {} if concurrency_env == "unset" else {"AGENT_WORKER_CONCURRENCY": concurrency_env}
    label = f"{args.processes}x{args.threads}, AGENT_WORKER_CONCURRENCY={concurrency_env}"
    return Scenario(label, f"c{concurrency_env}", args.worker_module, env)


def baseline_scenario(args: argparse.Namespace, mode: str) -> Scenario:
    """`benchmarks.stream_actors` in `mode`: a bare actor doing the runs' I/O on the same resources."""
    label = f"{args.processes}x{args.threads}, same-resource baseline: bare actor, {mode}"
    return Scenario(label, f"bare-{mode}", BASELINE_MODULE, {"STREAM_BASELINE": mode}, baseline=True)
