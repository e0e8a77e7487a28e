"""GET /api/health: liveness and readiness of Postgres and Redis (no auth)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import State
from sqlalchemy import text

from api.schemas.openapi import answer
from api.schemas.responses import Health
from api.state import ApiState, state_of


def _check_database(state: ApiState) -> str:
    try:
        with state.session_factory() as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


def _check_redis() -> str:
    import dramatiq

    try:
        dramatiq.get_broker().client.ping()  # type: ignore[attr-defined]
    except Exception as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


@get(
    "/api/health",
    sync_to_thread=True,
    security=[],
    responses={503: answer(Health, "Postgres or Redis does not answer (which one is named).")},
)
def health(request: Request[Any, Any, State]) -> Response[Health]:
    """200 when Postgres and Redis both answer, else 503."""
    state = state_of(request)
    database, redis = _check_database(state), _check_redis()
    healthy = database == "ok" and redis == "ok"
    return Response(
        {"status": "ok" if healthy else "degraded", "database": database, "redis": redis},
        status_code=200 if healthy else 503,
    )
