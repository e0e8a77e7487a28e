"""The run view is built once, in app/, and the API documents exactly its keys."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

from api.schemas.responses import RunView
from app.models import TaskRun
from app.services.run_views import run_view
from app.wire import iso


def test_the_documented_run_view_has_exactly_the_keys_the_view_builds():
    documented = RunView.__required_keys__ | RunView.__optional_keys__
    run = TaskRun(id=uuid.uuid4(), task_id=uuid.uuid4(), attempts=1, max_attempts=4)
    assert set(run_view(run)) == documented


def test_instants_are_written_in_utc_with_z_and_milliseconds():
    moment = datetime(2026, 3, 8, 9, 30, 0, 123_456, tzinfo=timezone(timedelta(hours=-5)))
    assert iso(moment) == "2026-03-08T14:30:00.123Z"
    assert iso(None) is None
