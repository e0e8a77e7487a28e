"""`python -m scheduler`: the APScheduler process (scheduling passes, reconciler, status block)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from app.db import make_engine, make_session_factory
from app.errors import ConfigurationError
from app.logging import configure_logging
from app.settings import get_settings
from scheduler.jobs import EXECUTOR_THREADS, SchedulerContext, add_jobs, stop_heartbeat

logger = logging.getLogger("scheduler")


def main() -> int:
    configure_logging()
    # APScheduler logs every job start at INFO; with a 1 s poll that drowns the status block.
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
    try:
        settings = get_settings()
    except ConfigurationError as exc:
        print(f"agentsched scheduler: {exc.message}", file=sys.stderr)
        return 2

    import actors  # the broker the runs' messages are sent on (the scheduler only sends)
    from actors.sending import send_dispatches
    from actors.webhooks import install_outbox, send_delivery_messages

    engine = make_engine(settings, pool_size=EXECUTOR_THREADS + 1)
    session_factory = make_session_factory(engine)
    install_outbox(session_factory)  # skipped runs' webhook messages go out after the pass commits
    ctx = SchedulerContext(
        settings=settings,
        session_factory=session_factory,
        redis_client=actors.broker.client,
        send=lambda dispatches: send_dispatches(session_factory, dispatches, ctx.clock),
        send_webhooks=send_delivery_messages,
    )
    from app.metrics_sharing import MetricsPublisher

    metrics = MetricsPublisher(actors.broker.client).start()  # reaches the API's /metrics
    scheduler = BlockingScheduler(executors={"default": ThreadPoolExecutor(EXECUTOR_THREADS)}, timezone="UTC")
    add_jobs(scheduler, ctx)

    stopping: list[threading.Thread] = []

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        # Shut down from another thread: the handler runs on the main thread, which may hold
        # the scheduler's locks, and waiting for running jobs there could deadlock.
        if stopping:
            return
        logger.info("%s: stopping once running jobs finish", signal.Signals(signum).name)
        stopper = threading.Thread(
            target=scheduler.shutdown, kwargs={"wait": True}, name="scheduler-shutdown"
        )
        stopping.append(stopper)
        stopper.start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    logger.info(
        "scheduler %s starting: pass every %d s, reconciler every %d s",
        ctx.scheduler_id,
        settings.scheduler_poll_interval,
        settings.reconcile_interval_s,
    )
    try:
        scheduler.start()
    finally:
        for stopper in stopping:
            stopper.join()
        try:
            stop_heartbeat(ctx)
        except Exception:  # Redis gone: the heartbeat expires by itself
            logger.warning("could not clear the heartbeat; it expires by itself")
        metrics.stop()
        engine.dispose()
        logger.info("scheduler %s stopped", ctx.scheduler_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
