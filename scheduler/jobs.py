"""The scheduler's jobs, each a thin call into one `app` service, and their triggers."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from app.clock import SYSTEM_CLOCK, Clock
from app.services.dispatch import Dispatch
from app.services.idempotency import delete_expired as delete_expired_keys
from app.services.reconcile import ReconcileResult, reconcile
from app.services.scheduling import PassResult, run_scheduling_pass
from app.services.stats import (
    clear_scheduler_heartbeat,
    format_status_block,
    queue_stats,
    record_scheduler_heartbeat,
)
from app.settings import Settings
from app.webhooks.cleanup import delete_old_deliveries
from app.webhooks.outbox import PendingDelivery
from app.webhooks.recovery import recover_deliveries

logger = logging.getLogger(__name__)

#: The status block is logged this often.
STATUS_INTERVAL_S = 30
#: The heartbeat is renewed this often and lives this long, so `running` turns false soon
#: after the process dies.
HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_TTL_S = 30
#: Expired idempotency keys (and old webhook deliveries) are deleted this often.
IDEMPOTENCY_CLEANUP_INTERVAL_S = 600
#: The jobs that also run when the process starts, so a restart catches up at once.
RUN_AT_START = frozenset({"scheduling_pass", "heartbeat"})
#: Jobs run on this many threads; each job has max_instances=1, so they never pile up.
EXECUTOR_THREADS = 4


@dataclass
class SchedulerContext:
    """What the jobs share; built once by `scheduler.__main__`."""

    settings: Settings
    session_factory: sessionmaker[Session]
    redis_client: Redis
    send: Callable[[Sequence[Dispatch]], list[tuple[uuid.UUID, str]]]
    clock: Clock = SYSTEM_CLOCK
    #: Sends webhook delivery messages (the reconciler resends lost ones); None: not here.
    send_webhooks: Callable[[Sequence[PendingDelivery]], object] | None = None
    scheduler_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started_at: datetime = field(default_factory=SYSTEM_CLOCK.now)


def scheduling_pass(ctx: SchedulerContext) -> PassResult:
    """Queue the runs of every task due now."""
    return run_scheduling_pass(
        ctx.session_factory, now=ctx.clock.now(), send=ctx.send, redis_client=ctx.redis_client
    )


def reconcile_runs(ctx: SchedulerContext) -> ReconcileResult:
    """Send again what Redis lost or never got, and what dead workers left running; and the
    webhook deliveries whose message was lost."""
    if ctx.send_webhooks is not None:
        recover_deliveries(
            ctx.session_factory,
            now=ctx.clock.now(),
            redis_client=ctx.redis_client,
            send=ctx.send_webhooks,
            grace_ms=ctx.settings.reconcile_grace_ms,
        )
    return reconcile(
        ctx.session_factory,
        now=ctx.clock.now(),
        redis_client=ctx.redis_client,
        send=ctx.send,
        grace_ms=ctx.settings.reconcile_grace_ms,
        lease_grace_ms=ctx.settings.run_lease_grace_ms,
        dead_worker_ms=int(ctx.settings.run_lease_s * 1000),
    )


def expire_idempotency_keys(ctx: SchedulerContext) -> int:
    """Delete idempotency keys past their 24 h."""
    with ctx.session_factory.begin() as session:
        return delete_expired_keys(session, ctx.clock.now())


def expire_webhook_deliveries(ctx: SchedulerContext) -> int:
    """Delete finished webhook deliveries past their retention."""
    with ctx.session_factory.begin() as session:
        return delete_old_deliveries(session, ctx.clock.now())


def log_status(ctx: SchedulerContext) -> None:
    with ctx.session_factory() as session:
        stats = queue_stats(ctx.redis_client, session, ctx.clock.now())
    logger.info("%s", format_status_block(stats))


def heartbeat(ctx: SchedulerContext) -> None:
    record_scheduler_heartbeat(ctx.redis_client, ctx.scheduler_id, ctx.started_at, HEARTBEAT_TTL_S)


def stop_heartbeat(ctx: SchedulerContext) -> None:
    clear_scheduler_heartbeat(ctx.redis_client, ctx.scheduler_id)


def every(seconds: float) -> IntervalTrigger:
    """A trigger every `seconds`, in UTC."""
    return IntervalTrigger(seconds=seconds, timezone="UTC")


def pass_trigger(poll_interval_s: int) -> CronTrigger | IntervalTrigger:
    """On the minute boundary when polling every 60 s (slots are whole minutes), else every N s."""
    if poll_interval_s == 60:
        return CronTrigger(second=0, timezone="UTC")
    return every(poll_interval_s)


def add_jobs(scheduler: BaseScheduler, ctx: SchedulerContext) -> None:
    """Register the jobs. Their state is Postgres (`next_run_at`), so the job store is memory.

    Every job has coalesce=True (a backlog of missed fire times runs once), max_instances=1 (a
    pass that overruns its interval is never run twice at once in this process; other
    processes are safe anyway) and misfire_grace_time=None: APScheduler's default of 1 s would
    drop a pass that starts late (a busy executor, a GC pause, a suspended VM), and a dropped
    pass leaves due tasks waiting a whole interval, while a late pass still queues everything
    due, once. The pass and the heartbeat also run at start (`RUN_AT_START`).
    """
    now = ctx.clock.now()
    cleanup = every(IDEMPOTENCY_CLEANUP_INTERVAL_S)
    jobs: list[tuple[str, str, Callable[[SchedulerContext], object], BaseTrigger]] = [
        (
            "scheduling_pass",
            "scheduling pass",
            scheduling_pass,
            pass_trigger(ctx.settings.scheduler_poll_interval),
        ),
        ("reconcile", "reconciler", reconcile_runs, every(ctx.settings.reconcile_interval_s)),
        ("idempotency_cleanup", "idempotency key cleanup", expire_idempotency_keys, cleanup),
        ("webhook_delivery_cleanup", "webhook delivery cleanup", expire_webhook_deliveries, cleanup),
        ("status", "status block", log_status, every(STATUS_INTERVAL_S)),
        ("heartbeat", "heartbeat", heartbeat, every(HEARTBEAT_INTERVAL_S)),
    ]
    for job_id, name, job, trigger in jobs:
        at_start = {"next_run_time": now} if job_id in RUN_AT_START else {}
        scheduler.add_job(
            job,
            trigger,
            args=[ctx],
            id=job_id,
            name=name,
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
            **at_start,
        )
