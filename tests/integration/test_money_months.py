"""Holds under concurrency and across month boundaries: concurrent runs share what is left and
never overdraw; as the issue found them right (keep them so), a hold taken in one month and
settled in the next, and the lazy monthly reset under concurrent first writes."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from tests.support.money import (
    ControlledClock,
    ScriptedProvider,
    assert_books_balance,
    give_credits_used,
    ledger_sum,
    make_user,
    queue_run,
    run_once,
    run_row,
    user_row,
)

NOVEMBER_END = datetime(2030, 11, 30, 23, 59, tzinfo=UTC)
DECEMBER = datetime(2030, 12, 1, 0, 1, tzinfo=UTC)


class Gated(ScriptedProvider):
    """Waits at its first call until the test opens the gate (so runs are in flight together)."""

    def __init__(self, started: threading.Barrier | threading.Event, gate: threading.Event) -> None:
        super().__init__(prompt_tokens=1_500)
        self.started, self.gate = started, gate

    def complete(self, messages, **kwargs):
        if not self.max_tokens:
            if isinstance(self.started, threading.Barrier):
                self.started.wait(30)
            else:
                self.started.set()
            assert self.gate.wait(30)
        return super().complete(messages, **kwargs)


def test_a_november_hold_settling_in_december_is_charged_to_december(session_factory, settings):
    clock = ControlledClock(NOVEMBER_END)
    user_id = make_user(session_factory, plan="free")
    give_credits_used(session_factory, user_id, 30, NOVEMBER_END)
    _, run_id = queue_run(session_factory, user_id, clock.now())
    started, gate = threading.Event(), threading.Event()
    worker = threading.Thread(
        target=run_once, args=(session_factory, settings, clock, Gated(started, gate), run_id)
    )
    worker.start()
    assert started.wait(30)
    assert user_row(session_factory, user_id).credits_reserved == 20  # held in November
    clock._now = DECEMBER
    gate.set()
    worker.join(30)
    run = run_row(session_factory, run_id)
    assert run.status == "completed"
    user = user_row(session_factory, user_id)
    assert user.credits_period == DECEMBER.date()
    assert user.credits_used == run.credits_used == ledger_sum(session_factory, user_id, DECEMBER)
    assert ledger_sum(session_factory, user_id, NOVEMBER_END) == 30
    assert user.credits_reserved == 0
    assert_books_balance(session_factory)


def test_the_monthly_reset_happens_once_under_four_concurrent_first_writes(session_factory, settings):
    clock = ControlledClock(DECEMBER)
    user_id = make_user(session_factory, plan="pro")
    give_credits_used(session_factory, user_id, 40, NOVEMBER_END)
    run_ids = [queue_run(session_factory, user_id, clock.now())[1] for _ in range(4)]
    started, gate = threading.Barrier(4), threading.Event()
    workers = [
        threading.Thread(
            target=run_once, args=(session_factory, settings, clock, Gated(started, gate), run_id)
        )
        for run_id in run_ids
    ]
    for worker in workers:
        worker.start()
    gate.set()
    for worker in workers:
        worker.join(30)
    runs = [run_row(session_factory, run_id) for run_id in run_ids]
    assert [run.status for run in runs] == ["completed"] * 4
    charged = sum(run.credits_used for run in runs)
    user = user_row(session_factory, user_id)
    assert user.credits_used == charged == ledger_sum(session_factory, user_id, DECEMBER)
    assert ledger_sum(session_factory, user_id, NOVEMBER_END) == 40
    assert_books_balance(session_factory)


def test_concurrent_runs_share_what_is_left_and_never_overdraw(session_factory, settings):
    clock = ControlledClock(DECEMBER)
    user_id = make_user(session_factory, plan="enterprise", credits=30)  # 20 slots, 30 credits
    run_ids = [queue_run(session_factory, user_id, clock.now())[1] for _ in range(8)]
    in_flight, gate = threading.Semaphore(0), threading.Event()

    class Holding(ScriptedProvider):
        def complete(self, messages, **kwargs):
            if not self.max_tokens:
                in_flight.release()
                assert gate.wait(30)
            return super().complete(messages, **kwargs)

    workers = [
        threading.Thread(
            target=run_once, args=(session_factory, settings, clock, Holding(greedy=True), run_id)
        )
        for run_id in run_ids
    ]
    for worker in workers:
        worker.start()
    assert in_flight.acquire(timeout=30)
    assert in_flight.acquire(timeout=30)
    deadline = time.monotonic() + 30
    while sum(run_row(session_factory, run_id).status == "failed" for run_id in run_ids) < 6:
        assert time.monotonic() < deadline, "the runs that found no credit left did not fail"
        time.sleep(0.05)
    user = user_row(session_factory, user_id)
    assert user.credits_reserved == 30  # one holds 20, the next the 10 left
    assert sorted(run_row(session_factory, run_id).credits_reserved for run_id in run_ids) == [0] * 6 + [
        10,
        20,
    ]
    assert_books_balance(session_factory)
    gate.set()
    for worker in workers:
        worker.join(30)
    runs = [run_row(session_factory, run_id) for run_id in run_ids]
    failed = [run for run in runs if run.status == "failed"]
    assert len(failed) == 6
    assert {run.error["code"] for run in failed} == {"insufficient_credits"}
    user = user_row(session_factory, user_id)
    assert user.credits_reserved == 0
    assert user.credits_used == sum(run.credits_used for run in runs) <= 30
    assert_books_balance(session_factory)
