"""GET /api/schedules/preview: the next fire times of any expression."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import Parameter

from api.auth import USER_AUTH
from api.schemas.openapi import errors
from api.schemas.params import PARAM_DECODERS, AfterParam, CronParam, TimezoneParam
from api.schemas.responses import SchedulePreview
from api.state import state_of
from app.cron import known_timezones, parse_schedule
from app.services.schedules import (
    PREVIEW_AFTER_YEAR_PATTERN,
    PREVIEW_COUNT_RANGE,
    PREVIEW_DEFAULT_COUNT,
    parse_preview_after,
    preview_fires,
)
from app.wire import iso

Cron = Annotated[
    CronParam,
    Parameter(
        description="A five-field cron expression, e.g. `0 9 * * 1-5`.",
        schema_extra={"type": "string", "format": "cron", "minLength": 1, "maxLength": 200},
    ),
]
Timezone = Annotated[
    TimezoneParam | None,
    Parameter(
        description="IANA timezone of the expression (default DEFAULT_TIMEZONE).",
        schema_extra={"oneOf": None, "type": "string", "enum": sorted(known_timezones())},
    ),
]
Count = Annotated[
    int, Parameter(ge=PREVIEW_COUNT_RANGE[0], le=PREVIEW_COUNT_RANGE[1], description="how many")
]
After = Annotated[
    AfterParam | None,
    Parameter(
        description="Fire times strictly after this instant (default now); years 1900 to 8999.",
        schema_extra={
            "oneOf": None,
            "type": "string",
            "format": "date-time",
            "pattern": PREVIEW_AFTER_YEAR_PATTERN,
        },
    ),
]


@get(
    "/api/schedules/preview",
    **USER_AUTH,
    type_decoders=PARAM_DECODERS,
    responses=errors(400, 401, 429, 503),
)
async def preview(
    request: Request[Any, Any, State],
    user_id: NamedDependency[uuid.UUID],
    cron: Cron,
    timezone: Timezone = None,
    count: Count = PREVIEW_DEFAULT_COUNT,
    after: After = None,
) -> SchedulePreview:
    """The next `count` (1..100) fire times after `after` (default now), in UTC."""
    state = state_of(request)
    schedule = parse_schedule(cron.strip(), timezone or state.settings.default_timezone)
    start = parse_preview_after(after) if after is not None else state.clock.now()
    return {
        "cron": schedule.expr,
        "timezone": schedule.timezone,
        "runs": [iso(moment) for moment in preview_fires(schedule, start, count)],
    }
