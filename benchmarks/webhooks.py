"""Webhook deliveries: deliveries/s, run end -> receiver 2xx (p50/p99), runs/s with and without.

    .venv/bin/python -m benchmarks.webhooks                       # 10,000 runs, 2x8 workers
    .venv/bin/python -m benchmarks.webhooks --runs 500 --config 1x4

Two phases on the benchmark database and Redis db (benchmarks/common.py), each with N one-off
tasks and a queued run each, their messages sent the product's way, then `dramatiq actors`:

1. without webhooks: runs/s from the first run's start to the last run's end;
2. with a webhook on every task (events run.completed, run.failed) to a local receiver in this
   process (`WEBHOOK_ALLOW_PRIVATE=true`), which verifies every request with `standardwebhooks`
   and answers 204: runs/s as above, deliveries/s from the first delivery received to the
   last, and for each delivery the time from its run's end (`webhook_deliveries.occurred_at`,
   the finishing statement's time) to the receiver's answer, as p50/p99.

The issue's goal: webhooks cost runs/s at most 10%. The receiver shares this process's GIL, so
at high rates it can be what limits deliveries/s; its request count and verification failures
are printed.
"""

from __future__ import annotations

import argparse
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    machine_note,
    make_bench_engine,
    percentile,
    recreate_database,
    run_status_counts,
    send_run_messages,
    truncate_runs,
    use_bench_environment,
)

FINISHED = ("completed", "failed", "cancelled", "skipped")
GOAL_OVERHEAD = 0.10


class Receiver:
    """Records (webhook-id, wall time) per request; verifies each signature."""

    def __init__(self, secret: str) -> None:
        from standardwebhooks import Webhook

        self.webhook = Webhook(secret)
        self.lock = threading.Lock()
        self.arrivals: dict[str, float] = {}
        self.requests = 0
        self.bad_signatures = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                ok = True
                try:
                    receiver.webhook.verify(body, headers, json_parse=False)
                except Exception:
                    ok = False
                self.send_response(204 if ok else 400)
                self.send_header("Content-Length", "0")
                self.end_headers()
                at = time.time()
                with receiver.lock:
                    receiver.requests += 1
                    if ok:
                        receiver.arrivals.setdefault(headers["webhook-id"], at)
                    else:
                        receiver.bad_signatures += 1

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait(
    engine: Any, runs: int, timeout_s: float, deliveries: int = 0, receiver: Receiver | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        counts = run_status_counts(engine)
        done = sum(counts.get(s, 0) for s in FINISHED)
        got = len(receiver.arrivals) if receiver is not None else 0
        if done >= runs and got >= deliveries:
            return
        time.sleep(0.25)
    raise SystemExit(f"timed out: runs {run_status_counts(engine)}, deliveries received {got}/{deliveries}")


def _runs_per_s(engine: Any) -> float:
    from sqlalchemy import text

    with engine.connect() as conn:
        first, last, count = conn.execute(
            text(
                "SELECT min(started_at), max(finished_at), count(*) FROM task_runs"
                " WHERE finished_at IS NOT NULL"
            )
        ).one()
    return count / max((last - first).total_seconds(), 1e-9)


def _phase(
    engine: Any, args: argparse.Namespace, logs: Any, receiver: Receiver | None, secret: str | None
) -> float:
    from sqlalchemy import text

    truncate_runs(engine)
    flush_redis()
    users = create_users(engine, 1)
    run_ids = insert_queued_runs(engine, users, args.runs, max_retries=0)
    if receiver is not None:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE tasks SET webhook_url = :url, webhook_events = '{run.completed,run.failed}'"),
                {"url": receiver.url},
            )
            conn.execute(text("UPDATE users SET webhook_secret = :secret"), {"secret": secret})
    send_run_messages(engine, run_ids, "medium")
    processes, threads = args.config
    label = "with" if receiver else "without"
    env = {"WEBHOOK_ALLOW_PRIVATE": "true", "LOG_LEVEL": "WARNING"}
    with children() as started:
        from benchmarks.common import bench_environment

        worker = dramatiq_worker(
            "actors", processes, threads, bench_environment(**env), logs / f"worker-{label}.log"
        )
        started.append(worker.start())
        _wait(engine, args.runs, args.timeout, args.runs if receiver else 0, receiver)
    return _runs_per_s(engine)


def _latencies(engine: Any, receiver: Receiver) -> list[float]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT CAST(id AS text), occurred_at FROM webhook_deliveries")).all()
    ended = {delivery_id: occurred.astimezone(UTC).timestamp() for delivery_id, occurred in rows}
    return [receiver.arrivals[i] - ended[i] for i in receiver.arrivals if i in ended]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--config", default="2x8", help="worker processes x threads (default 2x8)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on a phase after this (s)")
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args(argv)
    processes, threads = (int(x) for x in args.config.split("x"))
    args.config = (processes, threads)
    with exclusive_benchmark("webhooks"):
        use_bench_environment(WEBHOOK_ALLOW_PRIVATE="true")
        import actors  # noqa: F401  (binds the broker to the benchmark Redis db)
        from app.webhooks.signing import new_secret

        logs = log_directory("webhooks")
        print(
            f"webhooks: {args.runs:,} runs, {processes}x{threads} workers; {machine_note()}; logs in {logs}"
        )
        recreate_database()
        engine = make_bench_engine()
        try:
            plain = _phase(engine, args, logs, None, None)
            print(f"without webhooks: {plain:,.0f} runs/s")
            secret = new_secret()
            receiver = Receiver(secret)
            try:
                started = datetime.now(UTC)
                hooked = _phase(engine, args, logs, receiver, secret)
                arrivals = sorted(receiver.arrivals.values())
                span = max(arrivals[-1] - arrivals[0], 1e-9) if len(arrivals) > 1 else float("nan")
                latencies = _latencies(engine, receiver)
                change = (hooked - plain) / plain
                print(f"with webhooks:    {hooked:,.0f} runs/s ({change:+.1%}; goal: no worse than -10%)")
                print(
                    f"deliveries: {len(arrivals):,} received ({receiver.requests:,} requests, "
                    f"{receiver.bad_signatures} bad signatures) at {len(arrivals) / span:,.0f}/s"
                )
                print(
                    f"run end -> receiver 2xx: p50 {percentile(latencies, 50) * 1000:,.0f} ms, "
                    f"p99 {percentile(latencies, 99) * 1000:,.0f} ms (phase began {started:%H:%M:%S} UTC)"
                )
            finally:
                receiver.stop()
        finally:
            engine.dispose()
            if not args.keep_database:
                drop_database()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
