"""The run view is built once, in app/, and the API documents exactly its keys."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from api.schemas.responses import RunView
from app.models import TaskRun
from app.services.run_views import run_view
from app.wire import iso


def a_run() -> TaskRun:
    return TaskRun(
        id=uuid.uuid4(),
        task_id=uuid.uuid4(),
        trigger="api",
        scheduled_for=None,
        status="completed",
        priority="medium",
        attempts=1,
        max_attempts=4,
        queued_at=datetime(2026, 12, 1, 9, tzinfo=UTC),
        started_at=datetime(2026, 12, 1, 9, 0, 1, tzinfo=UTC),
        finished_at=datetime(2026, 12, 1, 9, 1, tzinfo=UTC),
        tokens_used=10,
        prompt_tokens=6,
        completion_tokens=4,
        cached_tokens=0,
        step_count=2,
        credits_used=1,
        tokens_over_budget=0,
        result="done",
        error=None,
    )


def test_the_documented_run_view_has_exactly_the_keys_the_view_builds():
    documented = RunView.__required_keys__ | RunView.__optional_keys__
    assert set(run_view(a_run())) == documented


def test_instants_are_written_in_utc_with_z_and_milliseconds():
    moment = datetime(2026, 3, 8, 9, 30, 0, 123_456, tzinfo=timezone(timedelta(hours=-5)))
    assert iso(moment) == "2026-03-08T14:30:00.123Z"
    assert iso(None) is None
