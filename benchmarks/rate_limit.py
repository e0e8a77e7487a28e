"""Provider budget shared by worker processes: requests per second seen at the model server.

    .venv/bin/python -m benchmarks.rate_limit                      # 2 processes, LLM_RPM=600, 200 runs
    .venv/bin/python -m benchmarks.rate_limit --runs 40 --rpm 600  # a short try

`--runs` queued runs (four model calls each) are executed by `dramatiq actors` with
`--processes` x `--threads`, every process calling `benchmarks.model_server` under
`LLM_RPM=--rpm`. The server records when each request arrives. Printed: the most requests in
any 10 s window against the budget's 10 s share (goal: at most 110%) and the throughput from
the first request to the last against the budget (goal: at least 90%). Enough work is queued
that the threads could call far faster than the budget (threads x 1/delay), so the budget is
what holds them back.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

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
    recreate_database,
    run_status_counts,
    send_run_messages,
    use_bench_environment,
)
from benchmarks.workers import model_arrivals, start_model_server, worker_environment

WINDOW_S = 10.0
FINISHED = ("completed", "failed", "cancelled", "skipped")


def max_in_window(times: Sequence[float], window_s: float) -> int:
    """The most arrivals in any half-open window of `window_s` seconds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200, help="runs to execute (four model calls each)")
    parser.add_argument("--rpm", type=int, default=600, help="LLM_RPM for the workers")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--delay", type=float, default=0.05, help="model server seconds per answer")
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    with exclusive_benchmark("rate_limit"):
        return measure(args)


def measure(args: argparse.Namespace) -> int:
    use_bench_environment()
    recreate_database()
    flush_redis()
    engine = make_bench_engine()
    users = create_users(engine, max(1, args.processes * args.threads // 20 + 1))  # slots for every thread
    run_ids = insert_queued_runs(engine, users, args.runs)
    send_run_messages(engine, run_ids, "medium")
    logs = log_directory("rate-limit")
    port = free_port()
    with children() as started:
        start_model_server(started, port, args.delay, logs)
        env = worker_environment(port, LLM_RPM=str(args.rpm))
        worker = dramatiq_worker("actors", args.processes, args.threads, env, logs / "worker.log")
        started.append(worker.start())
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and worker.alive():
            counts = run_status_counts(engine)
            if sum(counts.get(s, 0) for s in FINISHED) >= args.runs:
                break
            time.sleep(1.0)
        arrivals = model_arrivals(port)
    counts = run_status_counts(engine)
    engine.dispose()
    budget_per_window = args.rpm * WINDOW_S / 60
    peak = max_in_window(arrivals, WINDOW_S)
    span = (max(arrivals) - min(arrivals)) if len(arrivals) > 1 else 0.0
    rate_rpm = (len(arrivals) - 1) / span * 60 if span else 0.0
    print(machine_note())
    print(f"{args.runs} runs, {args.processes} worker processes x {args.threads} threads, LLM_RPM={args.rpm}")
    print(f"run statuses: {counts}; requests at the model server: {len(arrivals)}")
    print(
        f"most requests in any {WINDOW_S:.0f} s window: {peak} (budget {budget_per_window:.0f}): "
        f"{100 * peak / budget_per_window:.0f}% (goal <= 110%)"
    )
    print(
        f"throughput first to last request: {rate_rpm:.0f} requests/min over {span:.1f} s: "
        f"{100 * rate_rpm / args.rpm:.0f}% of the budget (goal >= 90%)"
    )
    print(f"logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
