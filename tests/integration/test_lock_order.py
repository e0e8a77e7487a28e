"""Cancels racing run ends: every path locks run(s) -> task -> user, so none deadlocks.

The ends of a run (finish, requeue, hand-back) lock the run, then its task, then its user, in
one statement each; the cancels (task cancel, run cancel, bulk cancel) take the same order
(app.services.task_control). Before that rule a cancel locked the task, then its runs, and
Postgres aborted it or the finish with `deadlock detected` (a 500 for the cancel).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.models import TaskRun, User
from app.services import concurrency, credit_books, run_control, runs, task_control
from app.services.runs import ClaimedRun, Outcome
from app.settings import Settings

PAIRS = 40


def _queued_runs(client, account, session_factory, count: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    with session_factory.begin() as session:  # all of them run at once
        concurrency.set_limit(session, account.user_id, count + 1)
    made = []
    for n in range(count):
        body = client.post(
            "/api/agent/execute",
            json={"goal": f"race {n}", "agentType": "research_agent", "async": True},
            headers=account.headers,
        ).json()
        made.append((uuid.UUID(body["taskId"]), uuid.UUID(body["runId"])))
    return made


def _claim(session_factory: sessionmaker[Session], run_id: uuid.UUID) -> ClaimedRun:
    with session_factory.begin() as session:
        claimed = runs.claim_run(session, run_id, now=datetime.now(UTC), lease_ms=60_000, reservation=5)
    assert claimed is not None
    return claimed


def _finish(
    session_factory: sessionmaker[Session], claimed: ClaimedRun, settings: Settings, tokens: int
) -> None:
    with session_factory.begin() as session:
        runs.finish(
            session,
            claimed,
            Outcome(tokens=tokens, result="done"),
            tokens_per_credit=settings.tokens_per_credit,
            now=datetime.now(UTC),
        )


def _race(first: Callable[[], None], second: Callable[[], None]) -> list[BaseException]:
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(body: Callable[[], None]) -> None:
        barrier.wait()
        try:
            body()
        except BaseException as exc:  # collected, asserted on below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(body,)) for body in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


def test_cancels_racing_run_ends_never_deadlock_and_the_books_balance(
    client, make_account, session_factory: sessionmaker[Session], settings: Settings
):
    account = make_account(plan="pro")
    made = _queued_runs(client, account, session_factory, PAIRS)
    claimed = {run_id: _claim(session_factory, run_id) for _, run_id in made}
    errors: list[BaseException] = []
    for n, (task_id, run_id) in enumerate(made):

        def finish(run_id: uuid.UUID = run_id) -> None:
            _finish(session_factory, claimed[run_id], settings, 1500)

        def cancel(task_id: uuid.UUID = task_id, run_id: uuid.UUID = run_id, n: int = n) -> None:
            with session_factory.begin() as session:
                now = datetime.now(UTC)
                if n % 3 == 0:
                    task_control.cancel_task(session, account.user_id, task_id, settings=settings, now=now)
                elif n % 3 == 1:
                    run_control.cancel_run(session, None, run_id, settings=settings, now=now)
                else:
                    run_control.bulk_cancel(session, [run_id], settings=settings, now=now)

        errors += _race(finish, cancel)
    assert [repr(error) for error in errors if "deadlock" in str(error).lower()] == []
    assert [repr(error) for error in errors if "Conflict" not in type(error).__name__] == []
    with session_factory() as session:
        checked, imbalances = credit_books.audit(session)
        assert checked >= 1
        assert imbalances == []
        user = session.get(User, account.user_id)
        assert user is not None
        assert user.credits_reserved == 0
        statuses = session.scalars(select(TaskRun.status).where(TaskRun.user_id == account.user_id)).all()
        assert set(statuses) <= {"completed", "cancelled"}


def test_the_cancel_api_never_answers_500_while_runs_finish(
    client, make_account, session_factory: sessionmaker[Session], settings: Settings
):
    account = make_account(plan="pro")
    made = _queued_runs(client, account, session_factory, PAIRS // 2)
    claimed = {run_id: _claim(session_factory, run_id) for _, run_id in made}
    codes: list[int] = []
    for task_id, run_id in made:

        def finish(run_id: uuid.UUID = run_id) -> None:
            _finish(session_factory, claimed[run_id], settings, 800)

        def cancel(task_id: uuid.UUID = task_id) -> None:
            codes.append(client.post(f"/api/tasks/{task_id}/cancel", headers=account.headers).status_code)

        assert _race(finish, cancel) == []
    assert set(codes) <= {200}
    with session_factory() as session:
        assert credit_books.audit(session)[1] == []


def test_run_now_racing_run_ends_of_its_task_never_deadlocks(
    client, make_account, session_factory: sessionmaker[Session], settings: Settings
):
    """Run now holds the task and inserts a run (its foreign key share-locks the user); the
    finish holds the user and waits for the task: the user's lock in a finish must not block
    that share lock (FOR NO KEY UPDATE, not FOR UPDATE)."""
    account = make_account(plan="pro")
    with session_factory.begin() as session:
        concurrency.set_limit(session, account.user_id, 2 * PAIRS)
    schedule = {"enabled": True, "cron": "0 9 * * *", "timezone": "UTC"}
    task_ids = [
        uuid.UUID(
            client.post(
                "/api/agent/execute",
                json={"goal": f"race {n}", "agentType": "research_agent", "schedule": schedule},
                headers=account.headers,
            ).json()["taskId"]
        )
        for n in range(PAIRS // 2)
    ]
    errors: list[BaseException] = []
    for task_id in task_ids:
        with session_factory.begin() as session:
            run, _ = task_control.run_now(session, account.user_id, task_id, now=datetime.now(UTC))
            run_id = run.id
        claimed = _claim(session_factory, run_id)

        def finish(claimed: ClaimedRun = claimed) -> None:
            _finish(session_factory, claimed, settings, 900)

        def run_now(task_id: uuid.UUID = task_id) -> None:
            with session_factory.begin() as session:
                task_control.run_now(session, account.user_id, task_id, now=datetime.now(UTC))

        errors += _race(finish, run_now)
    assert [repr(error) for error in errors] == []
    with session_factory() as session:
        assert credit_books.audit(session)[1] == []


def test_a_claim_racing_the_end_of_another_run_of_its_one_off_task_never_deadlocks(
    client, make_account, session_factory: sessionmaker[Session], settings: Settings
):
    """A one-off task can have two live runs (run now while one runs). The claim of one makes
    the task follow it (`running`) while the other's finish writes the task's result: both
    must lock the task before the user, or Postgres aborts one with `deadlock detected`."""
    account = make_account(plan="pro")
    made = _queued_runs(client, account, session_factory, PAIRS)
    errors: list[BaseException] = []
    for task_id, run_id in made:
        first = _claim(session_factory, run_id)
        with session_factory.begin() as session:
            second, _ = task_control.run_now(session, account.user_id, task_id, now=datetime.now(UTC))
            second_id = second.id

        def finish(claimed: ClaimedRun = first) -> None:
            _finish(session_factory, claimed, settings, 700)

        def claim(run_id: uuid.UUID = second_id) -> None:
            _claim(session_factory, run_id)

        errors += _race(finish, claim)
    assert [repr(error) for error in errors] == []
    with session_factory() as session:
        assert credit_books.audit(session)[1] == []
        running = session.scalars(
            select(TaskRun.status).where(TaskRun.user_id == account.user_id, TaskRun.status == "running")
        ).all()
        assert len(running) == PAIRS  # every second run was claimed
