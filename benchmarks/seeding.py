"""Benchmark data: users with API keys, queued runs inserted in bulk and their messages sent the
product's way, and the run tables read back or emptied."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from benchmarks.environment import BENCH_CREDITS


@dataclass(frozen=True)
class BenchUser:
    user_id: uuid.UUID
    api_key: str


def create_users(engine: Any, count: int = 1, credits: int = BENCH_CREDITS) -> list[BenchUser]:
    """Users on the enterprise plan with `credits` a month, each with an API key."""
    from app.db import make_session_factory
    from app.services import accounts

    users = []
    with make_session_factory(engine).begin() as session:
        for _ in range(count):
            email = f"bench-{uuid.uuid4().hex[:12]}@example.com"
            user = accounts.create_user(session, email=email, plan="enterprise", monthly_credits=credits)
            users.append(BenchUser(user.id, accounts.issue_api_key(session, user)))
    return users


# One task and one queued run per row of generate_series, spread round-robin over the users.
_INSERT_QUEUED_RUNS = """
WITH t AS (
    INSERT INTO tasks (id, user_id, title, description, agent_type, status, priority,
                       agent_config, schedule_enabled, tokens_used, credits_used,
                       created_at, updated_at)
    SELECT gen_random_uuid(), (CAST(:user_ids AS uuid[]))[1 + (g % CAST(:user_count AS int))],
           'bench ' || g, 'Summarise the benchmark item number ' || g, :agent_type, 'queued',
           :priority, CAST(:config AS jsonb), false, 0, 0, now(), now()
      FROM generate_series(CAST(:first AS int), CAST(:last AS int)) AS g
    RETURNING id, user_id, priority
)
INSERT INTO task_runs (id, task_id, user_id, trigger, status, priority, attempts, max_attempts,
                       timeout_ms, queued_at, cancel_requested, tokens_used, credits_used,
                       credits_reserved)
SELECT gen_random_uuid(), t.id, t.user_id, 'api', 'queued', t.priority, 0, CAST(:max_attempts AS int),
       CAST(:timeout_ms AS int), now(), false, 0, 0, 0
  FROM t
RETURNING id
"""


def insert_queued_runs(
    engine: Any,
    users: Sequence[BenchUser],
    count: int,
    *,
    priority: str = "medium",
    agent_type: str = "research_agent",
    timeout_ms: int = 300_000,
    max_retries: int = 3,
    batch: int = 10_000,
) -> list[uuid.UUID]:
    """`count` one-off tasks, each with one queued run (no message sent yet); the run ids."""
    import json

    from sqlalchemy import text

    run_ids: list[uuid.UUID] = []
    config = json.dumps({"timeout": timeout_ms, "maxRetries": max_retries})
    for first in range(1, count + 1, batch):
        last = min(count, first + batch - 1)
        with engine.begin() as conn:
            rows = conn.execute(
                text(_INSERT_QUEUED_RUNS),
                {
                    "user_ids": [u.user_id for u in users],
                    "user_count": len(users),
                    "agent_type": agent_type,
                    "priority": priority,
                    "config": config,
                    "first": first,
                    "last": last,
                    "max_attempts": 1 + max_retries,
                    "timeout_ms": timeout_ms,
                },
            ).all()
        run_ids.extend(row[0] for row in rows)
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("VACUUM ANALYZE tasks, task_runs, users")
        )
    return run_ids


def send_run_messages(engine: Any, run_ids: Sequence[uuid.UUID], priority: str, batch: int = 1_000) -> float:
    """Send each run's message the product's way (`actors.sending.send_dispatches`); seconds."""
    from actors.sending import send_dispatches
    from app.clock import SYSTEM_CLOCK
    from app.db import make_session_factory
    from app.services.dispatch import Dispatch

    session_factory = make_session_factory(engine)
    started = time.perf_counter()
    for start in range(0, len(run_ids), batch):
        chunk = [Dispatch(run_id, priority) for run_id in run_ids[start : start + batch]]
        send_dispatches(session_factory, chunk, SYSTEM_CLOCK)
    return time.perf_counter() - started


def run_status_counts(engine: Any) -> dict[str, int]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM task_runs GROUP BY status")).all()
    return {str(status): int(n) for status, n in rows}


def truncate_runs(engine: Any) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("TRUNCATE credit_ledger, task_runs, tasks, api_keys, users CASCADE"))
