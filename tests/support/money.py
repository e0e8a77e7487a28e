"""Helpers for the money tests: providers whose token counts we choose, runs through the real
services on a clock we control, and the books' invariants."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.agents.budget import estimate_prompt
from app.clock import FrozenClock
from app.errors import ProviderError
from app.providers.base import ChatMessage, Completion
from app.providers.offline import OfflineProvider
from app.services import accounts, credit_books, tasks
from app.services.execution import RunEnvironment, execute_run
from app.services.task_input import parse_execute_request
from app.settings import Settings

GOAL = "Check competitor pricing and send report"


class ControlledClock(FrozenClock):
    """Wall time moves only when told (months, backoffs, leases); deadlines use real seconds."""

    def monotonic(self) -> float:
        return time.monotonic()


class WorkerDied(BaseException):
    """Raised inside a model call: the attempt ends as if its process had died (no outcome)."""


class ScriptedProvider:
    """The offline provider's answers with the token counts a test chooses.

    `prompt_tokens` None reports the runtime's own estimate; `greedy` answers with every token
    it may (`max_tokens`). `fail_on_call` n makes the n-th call (1-based, counted over the
    provider's life) raise `failure`.
    """

    name = "scripted"

    def __init__(
        self,
        *,
        prompt_tokens: int | None = None,
        greedy: bool = False,
        fail_on_call: int | None = None,
        failure: BaseException | None = None,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.greedy = greedy
        self.fail_on_call = fail_on_call
        self.failure = failure or ProviderError("the provider failed (scripted)")
        self.max_tokens: list[int] = []

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None,
        max_tokens: int,
        timeout_s: float,
        **_: Any,
    ) -> Completion:
        self.max_tokens.append(max_tokens)
        if self.fail_on_call is not None and len(self.max_tokens) == self.fail_on_call:
            raise self.failure
        answer = OfflineProvider().complete(messages, model=model, max_tokens=max_tokens, timeout_s=timeout_s)
        prompt = (
            estimate_prompt([m.content for m in messages])
            if self.prompt_tokens is None
            else self.prompt_tokens
        )
        completion = max_tokens if self.greedy else answer.completion_tokens
        return dataclasses.replace(answer, prompt_tokens=prompt, completion_tokens=completion)


def make_user(
    session_factory: sessionmaker[Session], *, plan: str = "free", credits: int | None = None
) -> uuid.UUID:
    with session_factory.begin() as session:
        email = f"money-{uuid.uuid4().hex[:10]}@example.com"
        return accounts.create_user(session, email=email, plan=plan, monthly_credits=credits).id


def queue_run(
    session_factory: sessionmaker[Session],
    user_id: uuid.UUID,
    now: datetime,
    *,
    max_retries: int = 0,
) -> tuple[uuid.UUID, uuid.UUID]:
    """A one-off task and its queued run, as POST /api/agent/execute creates them."""
    request = parse_execute_request(
        {
            "goal": GOAL,
            "agentType": "research_agent",
            "async": True,
            "agentConfig": {"maxRetries": max_retries},
        },
        default_timezone="UTC",
    )
    with session_factory.begin() as session:
        created = tasks.create_task(session, user_id, request, now)
    assert created.run_id is not None
    return created.task_id, created.run_id


def run_once(
    session_factory: sessionmaker[Session],
    settings: Settings,
    clock: FrozenClock,
    provider: Any,
    run_id: uuid.UUID,
) -> None:
    """One delivery of the run's message through the real execution service."""
    env = RunEnvironment(session_factory, provider, settings, clock)
    try:
        execute_run(env, run_id)
    except WorkerDied:
        pass
    finally:
        leases = getattr(env, "leases", None)
        if leases is not None:
            leases.close()


def give_credits_used(
    session_factory: sessionmaker[Session], user_id: uuid.UUID, used: int, now: datetime
) -> None:
    """Put the user at `used` credits this month, booked (an adjustment row), as an operator might."""
    with session_factory.begin() as session:
        user = credit_books.lock_user(session, user_id)
        period = now.date().replace(day=1)
        session.execute(
            text(
                "INSERT INTO credit_ledger (user_id, kind, amount, tokens, period) "
                "VALUES (:user_id, 'adjustment', :amount, 0, :period)"
            ),
            {"user_id": user_id, "amount": used, "period": period},
        )
        user.credits_used = used
        user.credits_period = period


def run_row(session_factory: sessionmaker[Session], run_id: uuid.UUID) -> Any:
    with session_factory() as session:
        return session.execute(text("SELECT * FROM task_runs WHERE id = :id"), {"id": run_id}).one()


def user_row(session_factory: sessionmaker[Session], user_id: uuid.UUID) -> Any:
    with session_factory() as session:
        return session.execute(text("SELECT * FROM users WHERE id = :id"), {"id": user_id}).one()


def ledger_sum(session_factory: sessionmaker[Session], user_id: uuid.UUID, period: datetime) -> int:
    with session_factory() as session:
        return int(
            session.execute(
                text(
                    "SELECT COALESCE(sum(amount), 0) FROM credit_ledger"
                    " WHERE user_id = :id AND period = :period"
                ),
                {"id": user_id, "period": period.date().replace(day=1)},
            ).scalar_one()
        )


def assert_books_balance(session_factory: sessionmaker[Session]) -> None:
    """The audit finds nothing, and every task's totals are the sums of its runs'."""
    with session_factory() as session:
        _, imbalances = credit_books.audit(session)
        described = [i.describe() for i in imbalances]
        assert described == [], described
        off = session.execute(
            text(
                """
                SELECT t.id, t.tokens_used, t.credits_used,
                       COALESCE(sum(r.tokens_used), 0) AS run_tokens,
                       COALESCE(sum(r.credits_used), 0) AS run_credits
                  FROM tasks AS t LEFT JOIN task_runs AS r ON r.task_id = t.id
                 GROUP BY t.id
                HAVING t.tokens_used <> COALESCE(sum(r.tokens_used), 0)
                    OR t.credits_used <> COALESCE(sum(r.credits_used), 0)
                """
            )
        ).all()
        assert off == []
