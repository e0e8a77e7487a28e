"""A step's tokens of any size are recorded on the step, its run and its task."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.agents.steps import ModelCall
from app.clock import SYSTEM_CLOCK
from app.models import Task, TaskRun
from app.providers.base import Completion
from app.services import run_steps, runs
from tests.support.money import queue_run


@pytest.mark.parametrize(
    ("prompt", "completion"),
    [(30_000, 3_000), (3_000, 30_000), (16_384, 16_384), (40_000, 3), (1, 0)],
)
def test_a_step_records_its_tokens_whatever_their_size(
    make_account, session_factory: sessionmaker[Session], prompt: int, completion: int
) -> None:
    """Two token counts under 32,768 each summed past it once overflowed Postgres' smallint
    (psycopg sends a small int as one), so a 30,000-token prompt could never be recorded."""
    account = make_account(plan="enterprise")
    now = datetime.now(UTC)
    task_id, run_id = queue_run(session_factory, account.user_id, now)
    with session_factory.begin() as session:
        claimed = runs.claim_run(session, run_id, now=now, lease_ms=60_000, reservation=100)
    assert claimed is not None
    journal = run_steps.PostgresJournal(session_factory, run_id, claimed.attempt, SYSTEM_CLOCK)
    call = ModelCall(0, "plan", "Plan", "a prompt", 64_000, None)
    journal.start(call)
    journal.complete(
        call, Completion(text="an answer", prompt_tokens=prompt, completion_tokens=completion, model="m"), 5
    )
    with session_factory() as session:
        [step] = run_steps.list_steps(session, run_id)
        run = session.get(TaskRun, run_id)
        task = session.get(Task, task_id)
        assert run is not None
        assert task is not None
        assert (step.status, step.prompt_tokens, step.completion_tokens) == ("completed", prompt, completion)
        assert (run.prompt_tokens, run.completion_tokens, run.tokens_used) == (
            prompt,
            completion,
            prompt + completion,
        )
        assert (task.prompt_tokens, task.completion_tokens, task.tokens_used) == (
            prompt,
            completion,
            prompt + completion,
        )
