"""The statements that touch one run by its id find it through the primary keys.

With statistics gathered while every run was queued and no step existed (a backlog just
inserted, as in benchmarks.runs_throughput), the planner once took `status = 'running'` as a
condition on ix_task_runs_unfinished and walked its dead entries on every step write, and looked
a step up by its index alone in pk_run_steps (app.services.run_rows). The plans are read with
EXPLAIN, with the parameters a worker binds.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, TextClause, text

from app.db import driver_sql
from app.services import dispatch, leases, reconcile, run_steps, runs
from tests.support import plans

BACKLOG = 600
RUNNING = 60
FINISHED = 200

STATEMENTS = {
    "step start": run_steps._START,
    "step end": run_steps._END,
    "requeue": runs._REQUEUE,
    "finish": runs._FINISH,
    "hand back": leases._HAND_BACK,
    "lease renewal": leases._RENEW,
    "marked sent": dispatch._MARK_SENT,
    "marked resent": reconcile._MARK_RESENT_RUNNING,
}


def _params(statement: TextClause, run_id: uuid.UUID) -> dict[str, Any]:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "run_id": run_id,
        "run_ids": [run_id],
        "attempt": 1,
        "attempts": [1],
        "message_ids": ["m-1"],
        "index": 1,
        "kind": "step",
        "title": "step one",
        "model": None,
        "status": "completed",
        "now": now,
        "not_before": now,
        "lease_ms": 30_000,
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "cached_tokens": 0,
        "usage_estimated": False,
        "latency_ms": 1,
        "waited_ms": 0,
        "output": "an answer",
        "error": None,
        "result": "done",
        "tokens": 18,
        "attempt_tokens": 18,
        "over_budget": 0,
        "charge": 1,
        "reserved": 1,
        "period": now.date().replace(day=1),
        "channel": runs.RUN_EVENTS_CHANNEL,
        "events_channel": runs.RUN_EVENTS_CHANNEL,
    }
    names = set(re.findall(r"(?<![:\w]):([A-Za-z_]\w*)", statement.text))
    missing = names - values.keys()
    assert not missing, f"give the test a value for {sorted(missing)}"
    return {name: values[name] for name in names}


@pytest.fixture
def running_run(engine: Engine, make_account: Callable[..., Any]) -> uuid.UUID:
    """A backlog analyzed while queued (and some finished runs with steps), then some of it
    running with steps of their own (not analyzed)."""
    user_id = make_account().user_id
    with engine.begin() as conn:
        run_ids = (
            conn.execute(
                text(
                    """
                WITH t AS (
                    INSERT INTO tasks (id, user_id, title, description, agent_type, status, priority,
                                       schedule_enabled, tokens_used, credits_used, created_at, updated_at)
                    SELECT gen_random_uuid(), :user_id, 'plan ' || g, 'goal ' || g, 'research_agent',
                           'queued', 'medium', false, 0, 0, now(), now()
                      FROM generate_series(1, :count) AS g
                    RETURNING id
                )
                INSERT INTO task_runs (id, task_id, user_id, trigger, status, priority, attempts,
                                       max_attempts, timeout_ms, queued_at, cancel_requested,
                                       tokens_used, credits_used, credits_reserved)
                SELECT gen_random_uuid(), t.id, :user_id, 'api', 'queued', 'medium', 0, 4, 60000,
                       now(), false, 0, 0, 0
                  FROM t
                RETURNING id
                """
                ),
                {"user_id": user_id, "count": BACKLOG},
            )
            .scalars()
            .all()
        )
        # earlier runs' steps, finished: the table has a history when it is analyzed
        conn.execute(
            text(
                """
                INSERT INTO run_steps (run_id, index, kind, title, status, attempt, started_at)
                SELECT r, i, CASE WHEN i = 0 THEN 'plan' ELSE 'step' END, 'step', 'completed', 1, now()
                  FROM unnest(CAST(:ids AS uuid[])) AS r, generate_series(0, 3) AS i
                """
            ),
            {"ids": run_ids[-FINISHED:]},
        )
        conn.execute(
            text("UPDATE task_runs SET status = 'completed', attempts = 1 WHERE id = ANY(:ids)"),
            {"ids": run_ids[-FINISHED:]},
        )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("ANALYZE users, tasks, task_runs, run_steps")
        )
    started = run_ids[:RUNNING]
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE task_runs SET status = 'running', attempts = 1, started_at = now(),"
                " lease_expires_at = now() + interval '1 minute' WHERE id = ANY(:ids)"
            ),
            {"ids": started},
        )
        conn.execute(
            text(
                """
                INSERT INTO run_steps (run_id, index, kind, title, status, attempt, started_at)
                SELECT r, i, CASE WHEN i = 0 THEN 'plan' ELSE 'step' END, 'step', 'running', 1, now()
                  FROM unnest(CAST(:ids AS uuid[])) AS r, generate_series(0, 3) AS i
                """
            ),
            {"ids": started},
        )
    return started[RUNNING // 2]


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_a_run_is_found_by_its_primary_key(engine: Engine, running_run: uuid.UUID, name: str) -> None:
    statement = STATEMENTS[name]
    with engine.begin() as conn:
        (plan,) = conn.exec_driver_sql(
            "EXPLAIN (FORMAT JSON) " + driver_sql(statement, engine.dialect), _params(statement, running_run)
        ).one()
        conn.rollback()
    if isinstance(plan, str):
        plan = json.loads(plan)
    scans = [scan for scan in plans.scans(plan) if scan["Relation Name"] in ("task_runs", "run_steps")]
    assert scans, f"{name}: no scan of task_runs or run_steps in {plan}"
    for scan in scans:
        where = f"{name}: {scan['Node Type']} on {scan['Relation Name']}"
        if scan["Relation Name"] == "task_runs":
            assert scan.get("Index Name") == "pk_task_runs", f"{where} uses {scan.get('Index Name')}"
        else:
            assert scan.get("Index Name") == "pk_run_steps", f"{where} uses {scan.get('Index Name')}"
            assert "run_id" in scan.get("Index Cond", ""), f"{where}: {scan.get('Index Cond')}"
