"""GET /api/schedules/preview: the next fire times of any expression."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery

from api.auth import current_user_id
from api.schemas.views import iso
from api.state import ApiState
from app.cron import next_fires, parse_schedule, validate_timezone
from app.errors import InvalidInput

PREVIEW_MAX = 100


def _parse_after(value: str | None, now: datetime) -> datetime:
    if value is None:
        return now
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "+"))
    except ValueError:
        raise InvalidInput({"after": "must be an ISO 8601 time, e.g. 2026-03-08T00:00:00Z"}) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@get(
    "/api/schedules/preview",
    dependencies={"user_id": Provide(current_user_id, sync_to_thread=True)},
)
async def preview(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    cron: FromQuery[str | None] = None,
    timezone: FromQuery[str | None] = None,
    count: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
) -> dict[str, Any]:
    """The next `count` (1..100) fire times after `after` (default now), in UTC."""
    state: ApiState = request.app.state.api
    problems: dict[str, str] = {}
    size = 5
    if count is not None:
        if not count.strip().isdigit() or not 1 <= int(count) <= PREVIEW_MAX:
            problems["count"] = f"must be an integer between 1 and {PREVIEW_MAX}"
        else:
            size = int(count)
    if not cron:
        problems["cron"] = "is required, e.g. cron=0 9 * * *"
    start = state.clock.now()
    try:
        start = _parse_after(after, start)
    except InvalidInput as exc:
        problems.update(exc.fields)
    zone = timezone or state.settings.default_timezone
    try:
        validate_timezone(zone, field="timezone")
    except InvalidInput as exc:
        problems.update(exc.fields)
    schedule = None
    if cron:
        try:
            schedule = parse_schedule(cron, "UTC" if "timezone" in problems else zone)
        except InvalidInput as exc:
            problems.update({name.removeprefix("schedule."): text for name, text in exc.fields.items()})
    if problems or schedule is None:
        raise InvalidInput(problems)
    return {
        "cron": schedule.expr,
        "timezone": schedule.timezone,
        "runs": [iso(moment) for moment in next_fires(schedule, start, size)],
    }
