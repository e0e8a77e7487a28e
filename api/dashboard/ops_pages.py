"""Operations (administrators): queues, schedulers, lateness, outcomes, failures, bulk actions."""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import dramatiq
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromQuery
from litestar.response import Template

from api.dashboard.charts import lateness_bars, stacked_bars
from api.dashboard.render import is_fragment_request, page
from api.dashboard.web import BASE_PATH, admin, parse_uuid
from api.state import ApiState, ensure_all_sent, state_of
from app.services import dashboard, run_control
from app.services.dashboard_sessions import SignedIn
from app.services.stats import queue_stats

ADMIN = {"user": Provide(admin, sync_to_thread=True)}

OUTCOME_TONES = {"completed": "good", "failed": "bad", "cancelled": "muted", "skipped": "neutral"}


def _context(state: ApiState, user: SignedIn, error_code: str | None, **extra: Any) -> dict[str, Any]:
    redis_client = dramatiq.get_broker().client  # type: ignore[attr-defined]
    now = state.clock.now()
    with state.session_factory() as session:
        stats = queue_stats(redis_client, session, now)
        ops = dashboard.operations(session, now, error_code=error_code)
    return {
        "user": user,
        "stats": stats,
        "ops": ops,
        "schedulers": dashboard.scheduler_heartbeats(redis_client),
        "outcomes_chart": stacked_bars(
            "Runs per minute by outcome, last hour", ops.runs_per_minute, OUTCOME_TONES
        ),
        "lateness_chart": lateness_bars("Schedule lateness per minute, last hour", ops.lateness_per_minute),
        "error_code": error_code or "",
        "result": None,
        "now": now,
        **extra,
    }


@get(f"{BASE_PATH}/operations", dependencies=ADMIN, sync_to_thread=True, include_in_schema=False)
def operations_page(
    request: Request[Any, Any, State], user: NamedDependency[SignedIn], code: FromQuery[str | None] = None
) -> Template:
    """The page; its `#ops-live` fragment refreshes itself every 15 s."""
    context = _context(state_of(request), user, code or None)
    if is_fragment_request(request, "ops-live"):
        return page("_ops_live.html", context)
    return page("operations.html", context)


def _run_ids(values: list[str]) -> list[uuid.UUID]:
    return [run_id for run_id in (parse_uuid(value) for value in values) if run_id is not None]


@post(f"{BASE_PATH}/operations/retry", dependencies=ADMIN, include_in_schema=False)
async def bulk_retry(request: Request[Any, Any, State], user: NamedDependency[SignedIn]) -> Template:
    """Retry the chosen failed runs (any user's): a new run of each one's task. When Redis
    refuses their messages, the 503 page says the new runs are saved (the reconciler sends them)
    rather than a summary that says they were retried as if on their way."""
    state = state_of(request)
    run_ids = _run_ids((await request.form()).getall("run_id", []))

    def retry() -> Template:
        with state.session_factory.begin() as session:
            result = run_control.bulk_retry(session, run_ids, now=state.clock.now())
        sent = state.send(result.dispatches)
        ensure_all_sent([(result.dispatches, sent)], repeat="retrying them again queues another run of each")
        summary = ("retried", result)
        return page("operations.html", _context(state, user, None, result=summary))

    return await anyio.to_thread.run_sync(retry)


@post(f"{BASE_PATH}/operations/cancel", dependencies=ADMIN, include_in_schema=False)
async def bulk_cancel(request: Request[Any, Any, State], user: NamedDependency[SignedIn]) -> Template:
    """Cancel the chosen queued or running runs (any user's)."""
    state = state_of(request)
    run_ids = _run_ids((await request.form()).getall("run_id", []))

    def cancel() -> Template:
        with state.session_factory.begin() as session:
            result = run_control.bulk_cancel(session, run_ids, settings=state.settings, now=state.clock.now())
        return page("operations.html", _context(state, user, None, result=("cancelled", result)))

    return await anyio.to_thread.run_sync(cancel)
