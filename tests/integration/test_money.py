"""Money exact to the credit (issue 7): each case the issue found, through the real services."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from app.cli import build_parser
from app.cli.admin import run_admin
from app.services import accounts, credits, task_control
from app.services.task_input import parse_task_update
from app.services.tasks import get_task
from tests.support.money import (
    ControlledClock,
    ScriptedProvider,
    WorkerDied,
    assert_books_balance,
    give_credits_used,
    ledger_sum,
    make_user,
    queue_run,
    run_once,
    run_row,
    user_row,
)

NOVEMBER = datetime(2030, 11, 20, 12, 0, tzinfo=UTC)
DECEMBER = datetime(2030, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> ControlledClock:
    return ControlledClock(NOVEMBER)


def _admin(*argv: str) -> int:
    return run_admin(build_parser().parse_args(list(argv)))


def _email(session_factory, user_id) -> str:
    return str(user_row(session_factory, user_id).email)


# -- case 1: every credit is usable


def test_a_free_user_at_81_runs_with_a_19_credit_budget_and_reaches_exactly_100(
    session_factory, settings, clock
):
    user_id = make_user(session_factory, plan="free")
    give_credits_used(session_factory, user_id, 81, clock.now())
    seen_reserved: list[int] = []

    class Watching(ScriptedProvider):
        def complete(self, messages, **kwargs):
            if not self.max_tokens:
                seen_reserved.append(user_row(session_factory, user_id).credits_reserved)
            return super().complete(messages, **kwargs)

    outcomes = []
    for _ in range(40):
        _, run_id = queue_run(session_factory, user_id, clock.now())
        provider = Watching(greedy=True)  # answers with every token it may
        run_once(session_factory, settings, clock, provider, run_id)
        run = run_row(session_factory, run_id)
        outcomes.append((run.status, run.credits_used))
        if run.status == "completed":  # within the budget its hold allows
            assert run.tokens_used <= settings.tokens_per_credit * seen_reserved[-1]
            assert run.tokens_over_budget == 0
        assert_books_balance(session_factory)
        if run.status == "failed":
            break
    assert seen_reserved[0] == 19, "the first run holds what is left, 19 credits"
    *spent, _failed = outcomes
    assert all(status == "completed" and charged >= 1 for status, charged in spent)
    assert run.error["code"] == "insufficient_credits"
    assert run.attempts == 1
    assert run.credits_used == 0
    user = user_row(session_factory, user_id)
    assert user.credits_used == 100 == 81 + sum(charged for _, charged in spent)
    assert user.credits_reserved == 0
    assert ledger_sum(session_factory, user_id, clock.now()) == 100


# -- case 2: a budget is a budget


def test_a_provider_counting_10000_prompt_tokens_a_call_fails_budget_exhausted_charged_at_most_the_hold(
    session_factory, settings, clock
):
    user_id = make_user(session_factory, plan="pro")
    task_id, run_id = queue_run(session_factory, user_id, clock.now(), max_retries=3)
    provider = ScriptedProvider(prompt_tokens=10_000)
    run_once(session_factory, settings, clock, provider, run_id)
    run = run_row(session_factory, run_id)
    assert run.status == "failed"
    assert run.error["code"] == "budget_exhausted"
    assert run.attempts == 1, "not retried"
    # Plan and one step were covered by the estimate; the final call was never started.
    assert len(provider.max_tokens) == 2
    assert run.tokens_used > settings.run_token_budget
    assert run.credits_used == 20, "the cost (21 by the rate) capped at the 20-credit hold"
    assert run.tokens_over_budget == run.tokens_used - 20 * settings.tokens_per_credit > 0
    assert user_row(session_factory, user_id).credits_used == 20
    with session_factory() as session:
        task = session.execute(text("SELECT * FROM tasks WHERE id = :id"), {"id": task_id}).one()
        steps = session.execute(
            text("SELECT kind, status FROM run_steps WHERE run_id = :id ORDER BY index"), {"id": run_id}
        ).all()
    assert [tuple(step) for step in steps] == [("plan", "completed"), ("step", "completed")]  # kept
    assert task.status == "failed"
    assert task.tokens_used == run.tokens_used
    assert task.credits_used == 20
    assert_books_balance(session_factory)


def test_no_call_starts_past_the_budget_and_the_final_call_keeps_its_room(session_factory, settings, clock):
    user_id = make_user(session_factory, plan="free", credits=3)  # holds 3: a 3,000-token budget
    _, run_id = queue_run(session_factory, user_id, clock.now())
    provider = ScriptedProvider(greedy=True)  # counts as estimated, answers with all it may
    run_once(session_factory, settings, clock, provider, run_id)
    run = run_row(session_factory, run_id)
    assert run.status == "completed", run.error
    assert run.tokens_used <= 3_000
    assert run.credits_used <= 3
    assert run.tokens_over_budget == 0


# -- case 3 and 4: resets book this month's use, with the user row locked


def test_a_reset_early_in_a_new_month_books_nothing_of_last_month(session_factory, settings, clock):
    user_id = make_user(session_factory, plan="free")
    give_credits_used(session_factory, user_id, 50, NOVEMBER)
    clock._now = DECEMBER
    with session_factory.begin() as session:
        user = accounts.get_user_by_email(session, _email(session_factory, user_id))
        assert accounts.reset_credits(session, user, now=DECEMBER) == 0
    _, run_id = queue_run(session_factory, user_id, clock.now())
    run_once(session_factory, settings, clock, ScriptedProvider(), run_id)
    charged = run_row(session_factory, run_id).credits_used
    assert charged >= 1
    assert user_row(session_factory, user_id).credits_used == charged
    assert ledger_sum(session_factory, user_id, DECEMBER) == charged
    assert ledger_sum(session_factory, user_id, NOVEMBER) == 50
    assert_books_balance(session_factory)


def test_a_reset_racing_a_settling_run_waits_for_its_charge_and_undoes_it(session_factory, engine, settings):
    now = datetime.now(UTC)
    user_id = make_user(session_factory, plan="free")
    give_credits_used(session_factory, user_id, 5, now)
    _, run_id = queue_run(session_factory, user_id, now)
    email = _email(session_factory, user_id)
    # A second connection settles the run's charge and holds the user row lock meanwhile.
    with engine.connect() as connection:
        settling = Session(bind=connection)
        settling.execute(text("SELECT 1 FROM users WHERE id = :id FOR UPDATE"), {"id": user_id})
        charge = credits.settle(
            settling,
            user_id=user_id,
            run_id=run_id,
            reserved=0,
            tokens=1_500,
            tokens_per_credit=settings.tokens_per_credit,
            now=now,
        )
        assert charge == 2
        done: list[int] = []
        reset = threading.Thread(target=lambda: done.append(_admin("credits", "reset", "--email", email)))
        reset.start()
        _wait_for_a_lock_wait(session_factory)
        assert not done, "the reset waits for the row lock"
        settling.commit()
        reset.join(timeout=30)
    assert done == [0]
    user = user_row(session_factory, user_id)
    assert user.credits_used == 0
    assert ledger_sum(session_factory, user_id, now) == 0  # 5 + 2 - 7
    assert_books_balance(session_factory)


def _wait_for_a_lock_wait(session_factory, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_factory() as session:
            waiting = session.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError("nothing waited for the row lock")


# -- case 5: task totals follow their runs


def test_cancelling_a_task_whose_run_waits_for_a_retry_charges_its_tokens_and_credits_to_the_task(
    session_factory, settings, clock
):
    user_id = make_user(session_factory, plan="pro")
    task_id, run_id = queue_run(session_factory, user_id, clock.now(), max_retries=2)
    run_once(session_factory, settings, clock, ScriptedProvider(prompt_tokens=1_200, fail_on_call=2), run_id)
    waiting = run_row(session_factory, run_id)
    assert waiting.status == "queued"
    assert waiting.tokens_used > 0
    assert waiting.credits_reserved == 20
    assert_books_balance(session_factory)  # the waiting run's tokens are in the task already
    with session_factory.begin() as session:
        task = task_control.cancel_task(session, user_id, task_id, settings=settings, now=clock.now())
        assert task.tokens_used == waiting.tokens_used
        assert task.credits_used == credits.cost_of(waiting.tokens_used, settings.tokens_per_credit) == 2
    cancelled = run_row(session_factory, run_id)
    assert cancelled.status == "cancelled"
    assert cancelled.credits_used == 2
    assert user_row(session_factory, user_id).credits_reserved == 0
    assert_books_balance(session_factory)


def test_a_run_whose_worker_died_with_no_attempts_left_shows_attempts_within_max_and_its_tokens(
    client, make_account, session_factory, settings, clock
):
    account = make_account()
    task_id, run_id = queue_run(session_factory, account.user_id, clock.now(), max_retries=1)
    # Attempt 1 fails after a call (its tokens are kept); attempt 2's worker dies mid-call.
    run_once(session_factory, settings, clock, ScriptedProvider(fail_on_call=2), run_id)
    tokens = run_row(session_factory, run_id).tokens_used
    clock.advance(600)
    run_once(session_factory, settings, clock, ScriptedProvider(fail_on_call=1, failure=WorkerDied()), run_id)
    assert run_row(session_factory, run_id).status == "running"
    clock.advance(3_600)  # past any lease
    run_once(session_factory, settings, clock, ScriptedProvider(), run_id)
    run = run_row(session_factory, run_id)
    assert run.status == "failed"
    assert run.error["code"] == "worker_lost"
    assert run.attempts == run.max_attempts == 2
    view = client.get(f"/api/runs/{run_id}", headers=account.headers).json()
    assert view["attempts"] == 2
    assert view["maxAttempts"] == 2
    assert view["tokensUsed"] == tokens
    assert view["creditsUsed"] == 1
    task = client.get(f"/api/tasks/{task_id}", headers=account.headers).json()
    assert (task["tokensUsed"], task["creditsUsed"]) == (tokens, 1)
    assert_books_balance(session_factory)


# -- case 6: task status follows the contract


@pytest.mark.parametrize("when", ["queued", "running"])
def test_a_one_off_task_given_a_schedule_while_its_run_goes_is_pending_after_it(
    session_factory, settings, clock, when
):
    user_id = make_user(session_factory, plan="pro")
    task_id, run_id = queue_run(session_factory, user_id, clock.now())
    gate = threading.Event()
    started = threading.Event()

    class Gated(ScriptedProvider):
        def complete(self, messages, **kwargs):
            started.set()
            gate.wait(30)
            return super().complete(messages, **kwargs)

    worker = threading.Thread(target=run_once, args=(session_factory, settings, clock, Gated(), run_id))
    if when == "running":
        worker.start()
        assert started.wait(30)
    update = parse_task_update({"schedule": {"cron": "0 9 * * *", "timezone": "UTC"}})
    with session_factory.begin() as session:
        task = task_control.update_task(session, user_id, task_id, update, settings=settings, now=clock.now())
        assert task.status == "pending"
    if when == "queued":
        worker.start()
    gate.set()
    worker.join(30)
    assert run_row(session_factory, run_id).status == "completed"
    with session_factory.begin() as session:
        assert get_task(session, user_id, task_id).status == "pending"
        run, _ = task_control.run_now(session, user_id, task_id, now=clock.now())
    run_once(session_factory, settings, clock, ScriptedProvider(), run.id)
    with session_factory() as session:
        task = get_task(session, user_id, task_id)
        assert task.status == "pending"
        assert task.result
    assert_books_balance(session_factory)


# -- case 7: plan changes say what they do; empty query values


def test_lowering_the_plan_below_what_is_used_and_held_warns_and_no_new_run_starts_until_it_fits(
    session_factory, settings, clock, capsys
):
    user_id = make_user(session_factory, plan="pro")
    email = _email(session_factory, user_id)
    give_credits_used(session_factory, user_id, 6, clock.now())
    _, held_id = queue_run(session_factory, user_id, clock.now())
    run_once(
        session_factory, settings, clock, ScriptedProvider(failure=WorkerDied(), fail_on_call=1), held_id
    )
    assert user_row(session_factory, user_id).credits_reserved == 20  # a run in flight holds 20
    capsys.readouterr()
    assert (
        _admin("plan", "set", "--email", email, "--plan", "free", "--credits", "10", "--concurrency", "5")
        == 0
    )
    out = capsys.readouterr().out
    assert "warning:" in out
    assert "16 more than the new allowance of 10" in out
    _, blocked_id = queue_run(session_factory, user_id, clock.now())
    run_once(session_factory, settings, clock, ScriptedProvider(), blocked_id)
    blocked = run_row(session_factory, blocked_id)
    assert blocked.status == "failed"
    assert blocked.error["code"] == "insufficient_credits"
    assert_books_balance(session_factory)
    # The held run's worker was lost; once it is failed and its hold released, 6 of 10 are used.
    clock.advance(3_600)
    run_once(session_factory, settings, clock, ScriptedProvider(), held_id)
    assert run_row(session_factory, held_id).status in ("completed", "failed")
    user = user_row(session_factory, user_id)
    assert user.credits_reserved == 0
    assert user.credits_used <= 10
    _, next_id = queue_run(session_factory, user_id, clock.now())
    run_once(session_factory, settings, clock, ScriptedProvider(), next_id)
    assert run_row(session_factory, next_id).status == "completed"
    assert_books_balance(session_factory)
    with session_factory() as session:
        kinds = session.execute(
            text("SELECT kind, amount, note FROM credit_ledger WHERE user_id = :id AND kind = 'plan'"),
            {"id": user_id},
        ).all()
    assert [(k, a) for k, a, _ in kinds] == [("plan", 0)]
    assert "-> free (10/month)" in kinds[0].note


def test_empty_query_values_count_as_unset(client, make_account):
    account = make_account()
    created = client.post(
        "/api/agent/execute",
        json={"goal": "g", "agentType": "research_agent", "async": True},
        headers=account.headers,
    ).json()
    listed = client.get("/api/tasks?status=&limit=&cursor=", headers=account.headers)
    assert listed.status_code == 200, listed.text
    assert [t["id"] for t in listed.json()["items"]] == [created["taskId"]]
    runs = client.get(f"/api/tasks/{created['taskId']}/runs?limit=&cursor=", headers=account.headers)
    assert runs.status_code == 200, runs.text
    assert client.get("/api/tasks?limit=0", headers=account.headers).status_code == 400


# -- the audit command


def test_the_audit_passes_a_balanced_database_and_names_each_unbalanced_user(
    session_factory, settings, clock, capsys
):
    balanced, broken = make_user(session_factory), make_user(session_factory)
    for user_id in (balanced, broken):
        give_credits_used(session_factory, user_id, 7, clock.now())
        _, run_id = queue_run(session_factory, user_id, clock.now())
        run_once(session_factory, settings, clock, ScriptedProvider(), run_id)
    capsys.readouterr()
    assert _admin("credits", "audit") == 0
    assert "the books balance for 2 user(s)" in capsys.readouterr().out
    with session_factory.begin() as session:  # what the reset race left behind
        session.execute(
            text("UPDATE users SET credits_used = credits_used - 1 WHERE id = :id"), {"id": broken}
        )
    assert _admin("credits", "audit") == 1
    out = capsys.readouterr().out
    assert _email(session_factory, broken) in out
    assert "off by +1" in out
    assert _email(session_factory, balanced) not in out
    assert _admin("credits", "audit", "--email", _email(session_factory, balanced)) == 0
    assert _admin("credits", "audit", "--email", _email(session_factory, broken)) == 1


def test_the_readmes_worked_example(session_factory, settings, clock):
    user_id = make_user(session_factory, plan="free")
    give_credits_used(session_factory, user_id, 81, clock.now())
    _, run_id = queue_run(session_factory, user_id, clock.now())
    provider = ScriptedProvider(prompt_tokens=10_000)
    run_once(session_factory, settings, clock, provider, run_id)
    run = run_row(session_factory, run_id)
    assert provider.max_tokens == [1_024, 1_024]
    assert run.error["code"] == "budget_exhausted"
    assert run.tokens_used == 20_055
    assert run.credits_used == 19
    assert run.tokens_over_budget == 1_055
    assert user_row(session_factory, user_id).credits_used == 100
    _, next_id = queue_run(session_factory, user_id, clock.now())
    run_once(session_factory, settings, clock, ScriptedProvider(), next_id)
    assert run_row(session_factory, next_id).error["code"] == "insufficient_credits"
    assert_books_balance(session_factory)
