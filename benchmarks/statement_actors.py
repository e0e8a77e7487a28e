"""The same-resource baseline: a bare Dramatiq actor making a run's Postgres statements, nothing else.

`dramatiq benchmarks.statement_actors --processes 2 --threads 8`; messages (a queued run's id) go
to the `statements` queue. Per message, through raw psycopg (one autocommit connection per
thread, no SQLAlchemy, no agent runtime, no provider), exactly the statements an offline run
makes: the claim, a start and an end write for each of its four model calls (plan, two steps,
final), the finish, and the look for parked runs its end may release: 11 statements (the read of
completed steps only when an earlier attempt left some, as in the product), each the product's
own SQL as the worker compiles it (app.services.runs, run_steps, concurrency) with the values a
run would bind.
"""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import dramatiq
import psycopg
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from app.db import driver_sql
from app.services import concurrency, credits, run_steps, runs

STATEMENTS_QUEUE = "statements"
STATEMENTS_ACTOR = "same_statements"
CALLS = ((0, "plan", "Plan"), (1, "step", "step one"), (2, "step", "step two"), (3, "final", "Final result"))
PROMPT_TOKENS, COMPLETION_TOKENS = 11, 7

broker = RedisBroker(url=os.environ["REDIS_URL"])
dramatiq.set_broker(broker)
_local = threading.local()


_DIALECT = psycopg_dialect.dialect()


def _psycopg_sql(statement: Any) -> str:
    """The product's statement as psycopg's SQL text, compiled as the worker compiles it."""
    return driver_sql(statement, _DIALECT)


CLAIM, FINISH = _psycopg_sql(runs._CLAIM), _psycopg_sql(runs._FINISH)
START, END = _psycopg_sql(run_steps._START), _psycopg_sql(run_steps._END)
COMPLETED = _psycopg_sql(run_steps._COMPLETED_OUTPUTS)
ENDED_RUN_USER = _psycopg_sql(concurrency._ENDED_RUN_USER)


def _connection() -> psycopg.Connection[Any]:
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        url = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
        conn = _local.conn = psycopg.connect(url, autocommit=True)
    return conn


@dramatiq.actor(actor_name=STATEMENTS_ACTOR, queue_name=STATEMENTS_QUEUE)
def same_statements(run_id: str) -> None:
    conn = _connection()
    now = datetime.now(UTC)
    reservation = credits.reservation(20_000, 1_000)
    claimed = conn.execute(
        CLAIM,
        {
            "run_id": uuid.UUID(run_id),
            "now": now,
            "lease_ms": 30_000,
            "events_channel": runs.RUN_EVENTS_CHANNEL,
            "amount": reservation,
            "period": credits.month_of(now),
        },
    ).fetchone()
    if claimed is None:
        return
    attempt, reserved, steps_completed = claimed[4], claimed[7], claimed[15]
    base = {"run_id": uuid.UUID(run_id), "attempt": attempt, "channel": runs.RUN_EVENTS_CHANNEL}
    if steps_completed:  # as the product: completed steps are read only when there are some
        conn.execute(COMPLETED, {"run_id": uuid.UUID(run_id)}).fetchall()
    for index, kind, title in CALLS:
        conn.execute(START, {**base, "index": index, "kind": kind, "title": title, "model": None, "now": now})
        conn.execute(
            END,
            {
                **base,
                "index": index,
                "status": "completed",
                "model": "offline-deterministic-v1",
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "cached_tokens": 0,
                "usage_estimated": False,
                "latency_ms": 0,
                "waited_ms": 0,
                "output": "[offline provider: no model was called] a short answer",
                "error": None,
                "now": now,
            },
        )
    tokens = len(CALLS) * (PROMPT_TOKENS + COMPLETION_TOKENS)
    conn.execute(
        FINISH,
        {
            "run_id": uuid.UUID(run_id),
            "attempt": attempt,
            "status": "completed",
            "now": now,
            "tokens": tokens,
            "attempt_tokens": tokens,
            "over_budget": 0,
            "charge": credits.charge_for(tokens, 1_000, reserved),
            "reserved": reserved,
            "period": credits.month_of(now),
            "result": "done",
            "error": None,
            "channel": runs.RUN_FINISHED_CHANNEL,
        },
    ).fetchall()
    # the look for the user's parked runs that the run's end may release (app.services.concurrency)
    conn.execute(ENDED_RUN_USER, {"run_id": uuid.UUID(run_id)}).fetchall()
