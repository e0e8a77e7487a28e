"""Dashboard server time: the tasks page and a 50-step run page for a user with 100,000 runs.

    .venv/bin/python -m benchmarks.dashboard                       # 100,000 runs, 200 requests a page
    .venv/bin/python -m benchmarks.dashboard --runs 5000 --requests 50

Seeds one user with --tasks tasks and --runs finished runs spread over them (a tenth failed), and
one run with --steps steps; then, in this process, builds the API (`create_app`) and drives it
with Litestar's TestClient, signed in like a browser. For each page: server time p50/p99 over
--requests requests (after a warm-up) and the SQL statements the page ran, counted with a
SQLAlchemy `before_cursor_execute` listener on the app's engine (a constant count, whatever the
number of rows shown, means no N+1). Goals: p50 <= 50 ms, p99 <= 150 ms.
Uses the benchmark database and Redis db 12 (see common.py), dropped/flushed at the end.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks.common import (
    create_users,
    drop_database,
    exclusive_benchmark,
    flush_redis,
    machine_note,
    make_bench_engine,
    percentile,
    recreate_database,
    use_bench_environment,
)

GOAL_P50_MS = 50.0
GOAL_P99_MS = 150.0

_SEED_TASKS = """
INSERT INTO tasks (id, user_id, title, description, agent_type, status, priority, agent_config,
                   schedule_enabled, tokens_used, credits_used, created_at, updated_at, last_run_at)
SELECT gen_random_uuid(), :user_id, 'Benchmark task ' || g, 'Summarise benchmark item ' || g,
       'research_agent', 'completed', 'medium', '{}', false, 0, 0,
       now() - g * interval '1 minute', now(), now()
  FROM generate_series(1, CAST(:tasks AS int)) AS g
"""

_SEED_RUNS = """
WITH numbered AS (
    SELECT id, row_number() OVER (ORDER BY created_at) - 1 AS n FROM tasks WHERE user_id = :user_id
)
INSERT INTO task_runs (id, task_id, user_id, trigger, status, priority, attempts, max_attempts,
                       timeout_ms, queued_at, started_at, finished_at, cancel_requested,
                       tokens_used, credits_used, credits_reserved, result, error)
SELECT gen_random_uuid(), numbered.id, :user_id, 'api',
       CASE WHEN g % 10 = 0 THEN 'failed' ELSE 'completed' END, 'medium', 1, 4, 300000,
       now() - g * interval '7 seconds', now() - g * interval '7 seconds',
       now() - g * interval '7 seconds' + interval '3 seconds', false, 120, 1, 0,
       CASE WHEN g % 10 = 0 THEN NULL ELSE 'A result of a few words for run ' || g END,
       CASE WHEN g % 10 = 0 THEN '{"code": "provider_error", "message": "the provider said 500"}'::jsonb END
  FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS g
  JOIN numbered ON numbered.n = g % CAST(:tasks AS int)
"""

_SEED_STEPS = """
INSERT INTO run_steps (run_id, index, kind, title, status, attempt, model, prompt_tokens,
                       completion_tokens, cached_tokens, latency_ms, started_at, finished_at, output)
SELECT :run_id, g,
       CASE WHEN g = 0 THEN 'plan' WHEN g = CAST(:steps AS int) - 1 THEN 'final' ELSE 'step' END,
       'Step number ' || g, 'completed', 1, 'bench-model', 400, 120, 50, 900,
       now() - interval '1 hour', now() - interval '1 hour' + interval '1 second',
       repeat('Output text of a step, a few hundred characters long. ', 8)
  FROM generate_series(0, CAST(:steps AS int) - 1) AS g
"""


def seed(engine: Any, tasks: int, runs: int, steps: int) -> tuple[str, uuid.UUID, uuid.UUID]:
    """(the user's API key, the run with `steps` steps, the task of most runs)."""
    from sqlalchemy import text

    user = create_users(engine, 1)[0]
    with engine.begin() as conn:
        conn.execute(text(_SEED_TASKS), {"user_id": user.user_id, "tasks": tasks})
    for first in range(1, runs + 1, 20_000):
        with engine.begin() as conn:
            conn.execute(
                text(_SEED_RUNS),
                {"user_id": user.user_id, "tasks": tasks, "first": first, "last": min(runs, first + 19_999)},
            )
    with engine.begin() as conn:
        run_id, task_id = conn.execute(
            text("SELECT id, task_id FROM task_runs WHERE user_id = :u ORDER BY queued_at DESC LIMIT 1"),
            {"u": user.user_id},
        ).one()
        conn.execute(text(_SEED_STEPS), {"run_id": run_id, "steps": steps})
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("VACUUM ANALYZE"))
    return user.api_key, run_id, task_id


def measure(client: Any, engine: Any, path: str, requests: int) -> tuple[list[float], int]:
    """Request times (ms) after a warm-up, and the SQL statements one request ran."""
    from sqlalchemy import event

    for _ in range(max(5, requests // 10)):
        assert client.get(path).status_code == 200, path
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        response = client.get(path)
        assert response.status_code == 200, path
    finally:
        event.remove(engine, "before_cursor_execute", count)
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200
    return times, len(statements)


def run(args: argparse.Namespace) -> None:
    import logging

    use_bench_environment()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    recreate_database()
    flush_redis()
    engine = make_bench_engine()
    try:
        started = time.perf_counter()
        key, run_id, task_id = seed(engine, args.tasks, args.runs, args.steps)
        print(
            f"seeded {args.runs:,} runs over {args.tasks:,} tasks, a run of {args.steps} steps "
            f"({time.perf_counter() - started:.0f} s)"
        )
        from litestar.testing import TestClient

        from api.app import create_app
        from app.settings import load_settings

        app = create_app(load_settings())
        with TestClient(app, base_url="http://127.0.0.1") as client:
            client.get("/dashboard/sign-in")  # sets the CSRF cookie, as a browser's first visit
            signed = client.post(
                "/dashboard/sign-in",
                data={"api_key": key, "_csrf_token": client.cookies.get("agentsched_csrf")},
                follow_redirects=False,
            )
            assert signed.status_code == 303, signed.text
            app_engine = app.state.api.session_factory.kw["bind"]
            pages: dict[str, Callable[[], str]] = {
                "tasks page": lambda: "/dashboard/tasks",
                f"run page ({args.steps} steps)": lambda: f"/dashboard/runs/{run_id}",
                "task page (its runs, next fires)": lambda: f"/dashboard/tasks/{task_id}",
            }
            print(
                f"{'page':36} {'p50 ms':>8} {'p99 ms':>8} {'queries':>8}   goal p50 <= {GOAL_P50_MS:.0f}, "
                f"p99 <= {GOAL_P99_MS:.0f}"
            )
            for name, path in pages.items():
                times, queries = measure(client, app_engine, path(), args.requests)
                p50, p99 = percentile(times, 50), percentile(times, 99)
                verdict = "ok" if p50 <= GOAL_P50_MS and p99 <= GOAL_P99_MS else "over goal"
                print(f"{name:36} {p50:8.1f} {p99:8.1f} {queries:8d}   {verdict}")
        print(machine_note())
    finally:
        engine.dispose()
        drop_database()
        flush_redis()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=1_000)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with exclusive_benchmark("dashboard"):
        run(args)


if __name__ == "__main__":
    main()
