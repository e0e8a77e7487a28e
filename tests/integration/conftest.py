from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dramatiq
import pytest
from litestar.testing import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.models import TaskRun
from app.providers.base import ModelProvider
from app.providers.offline import OfflineProvider
from app.services.execution import RunEnvironment
from app.settings import Settings


@pytest.fixture(autouse=True)
def _isolated(clean_state: None) -> None:
    """Every integration test starts from empty tables and an empty Redis database."""


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    from api.app import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


StartWorker = Callable[..., dramatiq.Worker]


@pytest.fixture
def start_worker(session_factory: sessionmaker[Session], settings: Settings) -> Iterator[StartWorker]:
    """Start a real Dramatiq worker on the real Redis broker, with a chosen provider."""
    from actors import broker
    from actors import worker as worker_module

    workers: list[dramatiq.Worker] = []

    def start(
        *,
        threads: int = 4,
        provider: ModelProvider | None = None,
        run_settings: Settings | None = None,
        before_call: list[Any] | None = None,
    ) -> dramatiq.Worker:
        worker_module.set_run_environment(
            RunEnvironment(
                session_factory,
                provider or OfflineProvider(),
                run_settings or settings,
                before_call=before_call or [],
            )
        )
        worker = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout=10_000)
    worker_module._environment = None


def wait_for_runs(
    session_factory: sessionmaker[Session],
    run_ids: Sequence[uuid.UUID | str],
    *,
    statuses: Sequence[str] = ("completed", "failed", "cancelled", "skipped"),
    timeout_s: float = 30,
) -> list[TaskRun]:
    """Poll (in the test, not the product) until every run reaches one of `statuses`."""
    ids = [uuid.UUID(str(run_id)) for run_id in run_ids]
    deadline = time.monotonic() + timeout_s
    while True:
        with session_factory() as session:
            runs = list(session.scalars(select(TaskRun).where(TaskRun.id.in_(ids))))
        if len(runs) == len(ids) and all(run.status in statuses for run in runs):
            return runs
        if time.monotonic() > deadline:
            states = {str(run.id): run.status for run in runs}
            raise AssertionError(f"runs did not reach {statuses} in {timeout_s}s: {states}")
        time.sleep(0.05)
