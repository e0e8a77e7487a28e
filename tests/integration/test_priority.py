"""Under contention, urgent runs go before high, before medium, before low; FIFO within a level."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Sequence

from sqlalchemy import select

from app.models import TaskRun
from app.providers.base import ChatMessage, Completion
from app.providers.offline import OfflineProvider
from tests.integration.conftest import wait_for_runs

PER_LEVEL = 8
LEVELS = ("urgent", "high", "medium", "low")


#: Each model call takes this long, as a (fast) real model would; a run makes about four.
CALL_S = 0.04


class GatedProvider(OfflineProvider):
    """The offline model with a little latency; a goal containing BLOCK waits until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def complete(self, messages: Sequence[ChatMessage], **kwargs: object) -> Completion:  # type: ignore[override]
        if "BLOCK" in messages[-1].content:
            self.release.wait(30)
        time.sleep(CALL_S)
        return super().complete(messages, **kwargs)  # type: ignore[arg-type]


def test_a_busy_worker_starts_runs_in_priority_order(client, make_account, start_worker, session_factory):
    account = make_account(plan="enterprise")
    provider = GatedProvider()
    start_worker(threads=1, provider=provider)

    def submit(goal: str, priority: str) -> str:
        body = {"goal": goal, "agentType": "research_agent", "priority": priority, "async": True}
        return client.post("/api/agent/execute", json=body, headers=account.headers).json()["runId"]

    blocker = submit("BLOCK the only worker thread", "low")
    deadline = time.monotonic() + 10
    while not wait_for_runs(session_factory, [blocker], statuses=("running",), timeout_s=10):
        assert time.monotonic() < deadline
    # The worst order for a FIFO queue: lowest priority first.
    submitted = {
        level: [submit(f"{level} job {i}", level) for i in range(PER_LEVEL)] for level in reversed(LEVELS)
    }
    time.sleep(0.5)  # let the worker prefetch while its thread is busy
    provider.release.set()
    every = [run_id for ids in submitted.values() for run_id in ids]
    wait_for_runs(session_factory, [*every, blocker], timeout_s=60)

    with session_factory() as session:
        runs = session.scalars(
            select(TaskRun).where(TaskRun.id != blocker).order_by(TaskRun.started_at)
        ).all()
    order = [run.priority for run in runs]
    position = {level: [i for i, p in enumerate(order) if p == level] for level in LEVELS}
    means = [statistics.mean(position[level]) for level in LEVELS]
    assert means == sorted(means), f"start order by priority: {order}"
    # Nearly strict: every urgent run starts before the last high, every high before the last
    # medium, and so on (Dramatiq prefetches per queue, so a neighbour may slip in between).
    for higher, lower in itertools.pairwise(LEVELS):
        assert max(position[higher]) < max(position[lower]), order
        assert min(position[higher]) < min(position[lower]), order
    # FIFO within a level.
    for level in LEVELS:
        by_start = [str(run.id) for run in runs if run.priority == level]
        assert by_start == submitted[level], f"{level} runs did not start in submission order"
