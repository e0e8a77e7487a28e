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

from benchmarks.run_statements import (
    CALLS,
    CLAIM,
    CLAIMED_ATTEMPT,
    CLAIMED_RESERVED,
    CLAIMED_STEPS_COMPLETED,
    COMPLETED,
    END,
    ENDED_RUN_USER,
    FINISH,
    START,
    claim_params,
    end_params,
    finish_params,
    start_params,
)

STATEMENTS_QUEUE = "statements"
STATEMENTS_ACTOR = "same_statements"
OFFLINE_OUTPUT = "[offline provider: no model was called] a short answer"

broker = RedisBroker(url=os.environ["REDIS_URL"])  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)
_local = threading.local()


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
    run = uuid.UUID(run_id)
    claimed = conn.execute(CLAIM, claim_params(run, now)).fetchone()
    if claimed is None:
        return
    attempt, reserved = claimed[CLAIMED_ATTEMPT], claimed[CLAIMED_RESERVED]
    if claimed[CLAIMED_STEPS_COMPLETED]:  # as the product: completed steps are read only when there are some
        conn.execute(COMPLETED, {"run_id": run}).fetchall()
    for index, kind, title, _ in CALLS:
        conn.execute(START, start_params(run, attempt, index, kind, title, now))
        conn.execute(END, end_params(run, attempt, index, OFFLINE_OUTPUT, "offline-deterministic-v1", 0, now))
    conn.execute(FINISH, finish_params(run, attempt, reserved, now)).fetchall()
    # the look for the user's parked runs that the run's end may release (app.services.concurrency)
    conn.execute(ENDED_RUN_USER, {"run_id": run}).fetchall()
