"""The books balance after every step of random interleavings of runs, retries, dead workers,
cancels, resets, plan changes and month changes, through the real services on a clock we control."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import text

from app.services import accounts, task_control
from app.services.credits import month_of
from tests.support.money import (
    ControlledClock,
    ScriptedProvider,
    WorkerDied,
    assert_books_balance,
    make_user,
    queue_run,
    run_once,
    user_row,
)

START = datetime(2030, 1, 30, 22, 0, tzinfo=UTC)
USERS = 2
#: Token counts a provider reports per call: as estimated, heavy, and far more than estimated.
PROMPTS = {"estimated": None, "heavy": 4_000, "huge": 10_000}

user_index = st.integers(0, USERS - 1)
ACTIONS = st.one_of(
    st.tuples(st.just("run"), user_index, st.sampled_from(sorted(PROMPTS)), st.booleans()),
    st.tuples(st.just("flaky"), user_index),
    st.tuples(st.just("die"), user_index),
    st.tuples(st.just("resume")),
    st.tuples(st.just("cancel"), user_index),
    st.tuples(st.just("reset"), user_index),
    st.tuples(st.just("plan"), user_index, st.sampled_from([0, 3, 25, 60, 12_000])),
    st.tuples(st.just("month")),
)


class Scenario:
    """The real services driven one action at a time, with the invariants checked after each."""

    def __init__(self, session_factory, app_settings) -> None:
        self.session_factory = session_factory
        self.settings = app_settings
        self.clock = ControlledClock(START)
        self.users = [make_user(session_factory, plan="pro", credits=60) for _ in range(USERS)]
        self.tasks: dict[uuid.UUID, list[uuid.UUID]] = {user: [] for user in self.users}
        #: Users whose allowance an operator lowered below their use this month.
        self.overdrawn: set[uuid.UUID] = set()

    def do(self, action: tuple) -> None:
        name, *args = action
        getattr(self, name)(*args)
        self.check()

    def _queue(self, user: uuid.UUID, max_retries: int = 0) -> uuid.UUID:
        task_id, run_id = queue_run(self.session_factory, user, self.clock.now(), max_retries=max_retries)
        self.tasks[user].append(task_id)
        return run_id

    def _run(self, run_id: uuid.UUID, provider: ScriptedProvider) -> None:
        run_once(self.session_factory, self.settings, self.clock, provider, run_id)

    def run(self, index: int, prompt: str, greedy: bool) -> None:
        run_id = self._queue(self.users[index])
        self._run(run_id, ScriptedProvider(prompt_tokens=PROMPTS[prompt], greedy=greedy))

    def flaky(self, index: int) -> None:
        """A run whose second call fails: it waits for a retry, holding its credits."""
        run_id = self._queue(self.users[index], max_retries=2)
        self._run(run_id, ScriptedProvider(prompt_tokens=800, fail_on_call=2))

    def die(self, index: int) -> None:
        """A run whose worker dies in its second call: left running, holding its credits."""
        run_id = self._queue(self.users[index], max_retries=1)
        self._run(run_id, ScriptedProvider(prompt_tokens=900, fail_on_call=2, failure=WorkerDied()))

    def resume(self) -> None:
        """Later: every unfinished run is delivered again (retries due, dead workers' leases over)."""
        self.clock.advance(7_200)
        with self.session_factory() as session:
            unfinished = session.execute(
                text(
                    "SELECT id FROM task_runs WHERE user_id = ANY(:users)"
                    " AND status IN ('queued', 'running') ORDER BY queued_at"
                ),
                {"users": self.users},
            ).scalars()
            run_ids = list(unfinished)
        for run_id in run_ids:
            self._run(run_id, ScriptedProvider())

    def cancel(self, index: int) -> None:
        user = self.users[index]
        if not self.tasks[user]:
            return
        with self.session_factory.begin() as session:
            task_control.cancel_task(
                session, user, self.tasks[user][-1], settings=self.settings, now=self.clock.now()
            )

    def reset(self, index: int) -> None:
        with self.session_factory.begin() as session:
            user = accounts.get_user_by_email(
                session, user_row(self.session_factory, self.users[index]).email
            )
            accounts.reset_credits(session, user, now=self.clock.now())

    def plan(self, index: int, monthly: int) -> None:
        user_id = self.users[index]
        with self.session_factory.begin() as session:
            user = accounts.get_user_by_email(session, user_row(self.session_factory, user_id).email)
            accounts.set_plan(session, user, "enterprise", monthly, now=self.clock.now())
        if self._used(user_id) + user_row(self.session_factory, user_id).credits_reserved > monthly:
            self.overdrawn.add(user_id)

    def month(self) -> None:
        self.clock._now = datetime.combine(
            month_of(self.clock.now()) + timedelta(days=32), datetime.min.time(), UTC
        ).replace(day=1) + timedelta(hours=self.clock.now().hour)
        # A new month starts at 0 used; what runs in flight hold stays held.
        self.overdrawn = {
            user_id
            for user_id in self.overdrawn
            if user_row(self.session_factory, user_id).credits_reserved
            > user_row(self.session_factory, user_id).monthly_credits
        }

    def _used(self, user_id: uuid.UUID) -> int:
        user = user_row(self.session_factory, user_id)
        return user.credits_used if user.credits_period >= month_of(self.clock.now()) else 0

    def check(self) -> None:
        assert_books_balance(self.session_factory)
        for user_id in self.users:
            user = user_row(self.session_factory, user_id)
            if user_id not in self.overdrawn:
                assert self._used(user_id) + user.credits_reserved <= user.monthly_credits


@hypothesis_settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=st.lists(ACTIONS, min_size=1, max_size=14))
def test_the_ledger_equals_the_balance_after_every_step(session_factory, settings, actions):
    scenario = Scenario(session_factory, settings)
    for action in actions:
        scenario.do(action)
    scenario.resume()
    scenario.check()
    for user_id in scenario.users:
        assert user_row(session_factory, user_id).credits_reserved == 0
