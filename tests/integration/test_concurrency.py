"""Per-user concurrency limits and fair share, with real workers on the real broker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import select, text

from app.models import TaskRun, User
from app.providers.base import ChatMessage, Completion
from app.providers.offline import OfflineProvider
from app.services import concurrency
from tests.integration.conftest import wait_for_runs


class PacedProvider:
    """The offline provider, taking `delay_s` a call; calls whose prompt names `gated_goal`
    also wait for `gate` (so a test holds some runs running for as long as it likes)."""

    name = "paced"

    def __init__(self, delay_s: float = 0.0, gated_goal: str | None = None) -> None:
        self.delay_s = delay_s
        self.gated_goal = gated_goal
        self.gate = threading.Event()
        self.inner = OfflineProvider()

    def complete(self, messages: Sequence[ChatMessage], **kwargs: Any) -> Completion:
        if self.gated_goal and any(self.gated_goal in m.content for m in messages):
            assert self.gate.wait(30), "the test never opened the gate"
        time.sleep(self.delay_s)
        return self.inner.complete(messages, **kwargs)


def _run(client, account, goal: str = "Summarise the week", priority: str = "medium") -> str:
    body = {"goal": goal, "agentType": "writer_agent", "async": True, "priority": priority}
    response = client.post("/api/agent/execute", json=body, headers=account.headers)
    assert response.status_code == 202, response.text
    return str(response.json()["runId"])


def _set_limit(session_factory, user_id: uuid.UUID, limit: int) -> None:
    with session_factory.begin() as session:
        concurrency.set_limit(session, user_id, limit)


def _running(session_factory, user_id: uuid.UUID) -> tuple[int, int]:
    """(runs running by their status, the user's running_runs counter)."""
    with session_factory() as session:
        by_status = session.scalar(
            text("SELECT count(*) FROM task_runs WHERE user_id = :u AND status = 'running'"), {"u": user_id}
        )
        counter = session.scalar(select(User.running_runs).where(User.id == user_id))
    return int(by_status or 0), int(counter or 0)


def _run_row(session_factory, run_id: str) -> TaskRun:
    with session_factory() as session:
        run = session.get(TaskRun, uuid.UUID(run_id))
        assert run is not None
        return run


class Sampler:
    """Samples a user's running runs every 50 ms on a thread, keeping the maximum."""

    def __init__(self, session_factory, user_id: uuid.UUID) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(session_factory, user_id), daemon=True)

    def _sample(self, session_factory, user_id) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, *_running(session_factory, user_id))
            time.sleep(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def test_a_user_with_limit_2_never_has_more_than_2_running_across_two_workers(
    client, make_account, start_worker, session_factory
):
    account = make_account()
    _set_limit(session_factory, account.user_id, 50)
    run_ids = [_run(client, account) for _ in range(24)]  # all sent to Redis
    _set_limit(session_factory, account.user_id, 2)  # so 16 threads race to claim them
    provider = PacedProvider(delay_s=0.03)
    with Sampler(session_factory, account.user_id) as sampler:
        start_worker(threads=8, provider=provider)
        start_worker(threads=8, provider=provider)
        runs = wait_for_runs(session_factory, run_ids, timeout_s=120)
    assert sampler.peak == 2
    assert {run.status for run in runs} == {"completed"}
    assert {run.attempts for run in runs} == {1}  # waiting for a slot costs no attempt
    assert _running(session_factory, account.user_id) == (0, 0)


def test_a_waiting_run_starts_when_a_slot_frees_and_not_before(
    client, make_account, start_worker, session_factory
):
    account, other = make_account(), make_account()
    _set_limit(session_factory, account.user_id, 1)
    provider = PacedProvider(gated_goal="held open")
    start_worker(threads=2, provider=provider)
    first = _run(client, account, goal="held open")
    wait_for_runs(session_factory, [first], statuses=("running",))
    waiting = _run(client, account)
    row = _run_row(session_factory, waiting)
    assert row.status == "queued"
    assert row.parked_at is not None  # parked in Postgres at once: no message in Redis
    assert row.message_id is None
    # It holds no worker thread: another user's run goes through the second thread meanwhile.
    elsewhere = _run(client, other)
    wait_for_runs(session_factory, [elsewhere], timeout_s=30)
    assert _run_row(session_factory, waiting).status == "queued"
    provider.gate.set()
    done_first, done_waiting = wait_for_runs(session_factory, [first, waiting], timeout_s=30)
    by_id = {str(run.id): run for run in (done_first, done_waiting)}
    assert by_id[waiting].status == "completed"
    assert by_id[waiting].attempts == 1
    assert by_id[waiting].started_at >= by_id[first].finished_at


def test_a_limit_lowered_while_runs_are_queued_holds(client, make_account, start_worker, session_factory):
    account = make_account()  # pro: 5
    run_ids = [_run(client, account) for _ in range(10)]
    _set_limit(session_factory, account.user_id, 1)
    with Sampler(session_factory, account.user_id) as sampler:
        start_worker(threads=4, provider=PacedProvider(delay_s=0.02))
        runs = wait_for_runs(session_factory, run_ids, timeout_s=120)
    assert sampler.peak == 1
    assert {run.status for run in runs} == {"completed"}


def test_a_backlog_does_not_hold_back_another_users_run_on_a_busy_worker(
    client, make_account, start_worker, session_factory
):
    a, b = make_account(), make_account()
    _set_limit(session_factory, a.user_id, 1)
    backlog = [_run(client, a) for _ in range(6)]  # all in Redis before any worker runs
    theirs = _run(client, b)
    start_worker(threads=1, provider=PacedProvider(delay_s=0.05))
    runs = wait_for_runs(session_factory, [*backlog, theirs], timeout_s=120)
    order = [str(run.id) for run in sorted(runs, key=lambda run: run.started_at)]
    # B's run starts right after the run of A that was running, not after A's whole backlog.
    assert order.index(theirs) == 1, order


def test_waiting_runs_start_in_priority_then_fifo_order(client, make_account, start_worker, session_factory):
    account = make_account()
    _set_limit(session_factory, account.user_id, 1)
    provider = PacedProvider(gated_goal="held open")
    start_worker(threads=2, provider=provider)
    first = _run(client, account, goal="held open")
    wait_for_runs(session_factory, [first], statuses=("running",))
    low = _run(client, account, priority="low")
    medium_1 = _run(client, account, priority="medium")
    urgent = _run(client, account, priority="urgent")
    medium_2 = _run(client, account, priority="medium")
    provider.gate.set()
    runs = wait_for_runs(session_factory, [first, low, medium_1, urgent, medium_2], timeout_s=60)
    order = [str(run.id) for run in sorted(runs, key=lambda run: run.started_at)]
    assert order == [first, urgent, medium_1, medium_2, low]


def test_me_shows_the_limit_and_the_running_runs(client, make_account, start_worker, session_factory):
    account = make_account(plan="free")
    me = client.get("/api/me", headers=account.headers).json()
    assert (me["maxConcurrentRuns"], me["runningRuns"]) == (1, 0)
    provider = PacedProvider(gated_goal="held open")
    start_worker(threads=1, provider=provider)
    run_id = _run(client, account, goal="held open")
    wait_for_runs(session_factory, [run_id], statuses=("running",))
    me = client.get("/api/me", headers=account.headers).json()
    assert me["runningRuns"] == 1
    provider.gate.set()
    wait_for_runs(session_factory, [run_id])
    assert client.get("/api/me", headers=account.headers).json()["runningRuns"] == 0


def test_plan_defaults(make_account, session_factory):
    with session_factory() as session:
        for plan, limit in (("free", 1), ("pro", 5), ("enterprise", 20)):
            account = make_account(plan=plan)
            assert session.scalar(select(User.max_concurrent_runs).where(User.id == account.user_id)) == limit


def test_the_reconciler_releases_runs_a_raised_limit_lets_start(
    client, make_account, start_worker, session_factory, redis_client, settings
):
    from app.services.reconcile import reconcile

    account = make_account()
    _set_limit(session_factory, account.user_id, 0)  # blocked: every run waits
    run_ids = [_run(client, account) for _ in range(3)]
    start_worker(threads=2, provider=PacedProvider())
    wait_for_runs(session_factory, run_ids, statuses=("queued",))
    deadline = time.monotonic() + 30
    while not all(_run_row(session_factory, r).parked_at for r in run_ids):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    _set_limit(session_factory, account.user_id, 2)
    from actors.sending import send_dispatches
    from app.clock import SYSTEM_CLOCK

    later = SYSTEM_CLOCK.now() + concurrency.STRANDED_AFTER
    result = reconcile(
        session_factory,
        now=later,
        redis_client=redis_client,
        send=lambda d: send_dispatches(session_factory, d, SYSTEM_CLOCK),
        grace_ms=settings.reconcile_grace_ms,
        lease_grace_ms=settings.run_lease_grace_ms,
    )
    assert result.sent == 2
    runs = wait_for_runs(session_factory, run_ids, timeout_s=60)
    assert {run.status for run in runs} == {"completed"}


def test_waiting_runs_and_429s_show_in_queue_stats_status_and_metrics(
    client, make_account, start_worker, session_factory, redis_client, settings
):
    from app.providers.ratelimit import WaitBoard
    from app.services.stats import format_status_block

    account = make_account()
    _set_limit(session_factory, account.user_id, 1)
    provider = PacedProvider(gated_goal="held open")
    start_worker(threads=2, provider=provider)
    first = _run(client, account, goal="held open")
    wait_for_runs(session_factory, [first], statuses=("running",))
    waiting = [_run(client, account) for _ in range(3)]
    WaitBoard(redis_client).count_429()
    cron = {"Authorization": f"Bearer {settings.cron_secret.get_secret_value()}"}
    flow = client.get("/api/queue/stats", headers=cron).json()["flowControl"]
    assert flow == {"waitingForSlot": 3, "waitingForProviderBudget": 0, "providerRateLimitedToday": 1}
    with session_factory() as session:
        from app.clock import SYSTEM_CLOCK
        from app.services.stats import queue_stats

        block = format_status_block(queue_stats(redis_client, session, SYSTEM_CLOCK.now()))
    assert "3 run(s) waiting for a user slot" in block
    assert "1 provider 429(s) today" in block
    metrics = client.get("/metrics").text
    assert "agentsched_runs_waiting_for_slot 3.0" in metrics
    assert "agentsched_provider_rate_limited_today 1.0" in metrics
    provider.gate.set()
    wait_for_runs(session_factory, [first, *waiting], timeout_s=60)


def test_plan_set_sets_the_plans_limit_or_the_one_given(make_account, session_factory, capsys):
    from app.cli import build_parser
    from app.cli.admin import run_admin

    account = make_account(plan="free")

    def limit() -> int:
        with session_factory() as session:
            return int(session.scalar(select(User.max_concurrent_runs).where(User.id == account.user_id)))

    assert (
        run_admin(build_parser().parse_args(["plan", "set", "--email", account.email, "--plan", "pro"])) == 0
    )
    assert limit() == 5
    argv = ["plan", "set", "--email", account.email, "--plan", "pro", "--concurrency", "12"]
    assert run_admin(build_parser().parse_args(argv)) == 0
    assert limit() == 12
    assert "may run 12 run(s) at once" in capsys.readouterr().out


def test_a_scheduled_runs_waiting_for_a_slot_still_makes_the_next_slot_skipped(
    client, make_account, start_worker, session_factory
):
    from actors.sending import send_dispatches
    from app.clock import SYSTEM_CLOCK
    from app.services.scheduling import run_scheduling_pass

    account = make_account()
    _set_limit(session_factory, account.user_id, 0)  # nothing of this user may start
    body = {
        "goal": "Check the prices",
        "agentType": "research_agent",
        "schedule": {"enabled": True, "cron": "* * * * *", "timezone": "UTC"},
    }
    task_id = client.post("/api/agent/execute", json=body, headers=account.headers).json()["taskId"]

    def due_pass(minutes_later: int = 0) -> None:
        with session_factory.begin() as session:
            session.execute(
                text("UPDATE tasks SET next_run_at = now() - interval '1 minute' WHERE id = :id"),
                {"id": uuid.UUID(task_id)},
            )
        run_scheduling_pass(
            session_factory,
            now=SYSTEM_CLOCK.now() + timedelta(minutes=minutes_later),
            send=lambda d: send_dispatches(session_factory, d, SYSTEM_CLOCK),
        )

    due_pass()
    start_worker(threads=1, provider=PacedProvider())
    with session_factory() as session:
        (first,) = session.scalars(select(TaskRun.id).where(TaskRun.task_id == uuid.UUID(task_id))).all()
    deadline = time.monotonic() + 30
    while _run_row(session_factory, str(first)).parked_at is None:
        assert time.monotonic() < deadline, "the run was never parked"
        time.sleep(0.05)
    due_pass(minutes_later=1)  # the next slot, while the first run still waits
    with session_factory() as session:
        statuses = dict(
            session.execute(
                select(TaskRun.id, TaskRun.status).where(TaskRun.task_id == uuid.UUID(task_id))
            ).all()
        )
    assert statuses[first] == "queued"
    assert sorted(statuses.values()) == ["queued", "skipped"]
