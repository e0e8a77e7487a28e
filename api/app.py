"""The Litestar application factory. `api.app:app` builds the app from the environment."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.logging.config import LoggingConfig
from litestar.plugins.pydantic import PydanticInitPlugin

from api.body import ApiRequest
from api.dashboard import dashboard_router, template_config
from api.errors import EXCEPTION_HANDLERS
from api.http_metrics import HttpMetricsMiddleware
from api.query import EmptyQueryValuesMiddleware
from api.rate_limit import RateLimitMiddleware
from api.routes import agent, health, metrics, operations, schedules, steps, task_control, tasks
from api.routes import keys as key_routes
from api.routes import webhooks as webhook_routes
from api.routing import answer_options
from api.schemas.openapi import ClosedModelsSchemaPlugin, docs_assets_router, openapi_config
from api.state import ApiState
from app.db import make_engine, make_session_factory
from app.errors import ConfigurationError
from app.logging import configure_logging
from app.metrics_sharing import MetricsPublisher
from app.services.run_events import RunWaiter
from app.services.run_feed import RunFeed
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

#: Database connections per API process: anyio's default number of worker threads.
API_DB_POOL = 40


def create_app(settings: Settings) -> Litestar:
    from actors import broker  # the broker the API sends run messages on
    from actors.sending import send_dispatches, send_messages
    from actors.webhooks import install_outbox

    # As many connections as anyio runs handler threads (40), and no overflow: opening and
    # closing overflow connections under load costs more than waiting for a pooled one.
    engine = make_engine(settings, pool_size=API_DB_POOL, max_overflow=0, pre_ping=False)
    session_factory = make_session_factory(engine)
    install_outbox(session_factory)  # a cancel's webhook messages go out after its commit
    waiter = RunWaiter(settings.database_url)
    feed = RunFeed(settings.broker_url)
    waiter.add_listener(feed.on_notification)  # one Postgres listener for waits and live events
    state = ApiState(
        settings=settings,
        session_factory=session_factory,
        autocommit_sessions=make_session_factory(engine.execution_options(isolation_level="AUTOCOMMIT")),
        waiter=waiter,
        send=lambda dispatches: send_dispatches(session_factory, dispatches, state.clock),
        send_recorded=send_messages,
        feed=feed,
    )

    publisher = MetricsPublisher(broker.client)

    async def start_waiter() -> None:
        await waiter.start()
        await feed.start()
        publisher.start()

    rate_limiter = RateLimitMiddleware(settings)

    async def stop_waiter() -> None:
        await rate_limiter.close()
        publisher.stop()
        await feed.stop()
        await waiter.stop()
        engine.dispose()

    return Litestar(
        route_handlers=[
            agent.execute,
            tasks.list_tasks,
            tasks.get_task,
            tasks.list_task_runs,
            tasks.get_run,
            steps.get_run_steps,
            steps.get_run_events,
            tasks.me,
            task_control.update_task,
            task_control.run_task_now,
            task_control.cancel_task,
            schedules.preview,
            operations.scheduling_status,
            operations.check_scheduled_tasks,
            operations.stats,
            metrics.metrics,
            health.health,
            dashboard_router(settings),
            key_routes.list_keys,
            key_routes.create_key,
            key_routes.revoke_key,
            webhook_routes.create_webhook_secret,
            webhook_routes.run_deliveries,
            docs_assets_router(),
        ],
        before_request=answer_options,
        state=State({"api": state}),
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        template_config=template_config(),
        middleware=[EmptyQueryValuesMiddleware(), HttpMetricsMiddleware(), rate_limiter],
        on_startup=[start_waiter],
        on_shutdown=[stop_waiter],
        # api/errors.py logs each error itself: a 4xx as one line, a 5xx with its traceback.
        logging_config=LoggingConfig(log_exceptions="never", configure_root_logger=False),
        openapi_config=openapi_config(),
        request_class=ApiRequest,
        plugins=[PydanticInitPlugin(validate_strict=True), ClosedModelsSchemaPlugin()],
    )


def __getattr__(name: str) -> Any:
    """`api.app:app` for `litestar --app` and uvicorn, built on first access, not at import."""
    if name == "app":
        configure_logging()
        try:
            settings = get_settings()
        except ConfigurationError as exc:
            raise SystemExit(f"agentsched api: {exc.message}") from None
        built = create_app(settings)
        globals()["app"] = built
        return built
    raise AttributeError(name)
