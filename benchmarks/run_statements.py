"""A run's Postgres statements, as the product's SQL with the values a run binds: for the baselines.

The same-resource baselines (`statement_actors`, `stream_actors`) make exactly the statements an
agent run makes, each the product's own SQL as the worker compiles it (app.services.runs,
run_steps, concurrency) for psycopg: the claim, a start and an end write for each model call,
the finish, and the look for the user's parked runs its end may release.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect

from app.db import driver_sql
from app.services import concurrency, credits, run_steps, runs

#: (index, kind, title, what the model is asked) of an offline run's four calls.
CALLS = (
    (0, "plan", "Plan", "Plan the goal. Answer with a JSON array of at most 5 short steps."),
    (1, "step", "step one", "step one"),
    (2, "step", "step two", "step two"),
    (3, "final", "Final result", "Write the final result."),
)
PROMPT_TOKENS, COMPLETION_TOKENS = 11, 7

_DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]


def _psycopg_sql(statement: Any) -> str:
    """The product's statement as psycopg's SQL text, compiled as the worker compiles it."""
    return driver_sql(statement, _DIALECT)


CLAIM, FINISH = _psycopg_sql(runs._CLAIM), _psycopg_sql(runs._FINISH)
START, END = _psycopg_sql(run_steps._START), _psycopg_sql(run_steps._END)
COMPLETED = _psycopg_sql(run_steps._COMPLETED_OUTPUTS)
ENDED_RUN_USER = _psycopg_sql(concurrency._ENDED_RUN_USER)

#: Of a claimed run's row: its attempt, the credits reserved, the steps completed before.
CLAIMED_ATTEMPT, CLAIMED_RESERVED, CLAIMED_STEPS_COMPLETED = 4, 7, 15


def claim_params(run_id: uuid.UUID, now: datetime, lease_ms: int = 30_000) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "now": now,
        "lease_ms": lease_ms,
        "events_channel": runs.RUN_EVENTS_CHANNEL,
        "amount": credits.reservation(20_000, 1_000),
        "period": credits.month_of(now),
    }


def _step_key(run_id: uuid.UUID, attempt: int, index: int) -> dict[str, Any]:
    return {"run_id": run_id, "attempt": attempt, "channel": runs.RUN_EVENTS_CHANNEL, "index": index}


def start_params(
    run_id: uuid.UUID, attempt: int, index: int, kind: str, title: str, now: datetime
) -> dict[str, Any]:
    return {**_step_key(run_id, attempt, index), "kind": kind, "title": title, "model": None, "now": now}


def end_params(
    run_id: uuid.UUID, attempt: int, index: int, output: str, model: str, latency_ms: int, now: datetime
) -> dict[str, Any]:
    return {
        **_step_key(run_id, attempt, index),
        "status": "completed",
        "model": model,
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "cached_tokens": 0,
        "usage_estimated": False,
        "latency_ms": latency_ms,
        "waited_ms": 0,
        "output": output,
        "error": None,
        "now": now,
    }


def finish_params(run_id: uuid.UUID, attempt: int, reserved: int, now: datetime) -> dict[str, Any]:
    tokens = len(CALLS) * (PROMPT_TOKENS + COMPLETION_TOKENS)
    return {
        "run_id": run_id,
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
    }
