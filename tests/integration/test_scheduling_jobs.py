"""The scheduler's APScheduler jobs and their triggers."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("poll_interval", "trigger_text"), [(60, "cron[second='0']"), (5, "interval[0:00:05]")]
)
def test_the_scheduler_jobs_fire_on_the_minute_or_every_poll_interval(settings, poll_interval, trigger_text):
    from apscheduler.schedulers.background import BackgroundScheduler

    from scheduler.jobs import SchedulerContext, add_jobs

    scheduler = BackgroundScheduler(timezone="UTC")
    context = SchedulerContext(
        settings=settings.model_copy(update={"scheduler_poll_interval": poll_interval}),
        session_factory=None,  # type: ignore[arg-type]
        redis_client=None,  # type: ignore[arg-type]
        send=lambda dispatches: [],
    )
    add_jobs(scheduler, context)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert {
        "scheduling_pass",
        "reconcile",
        "status",
        "heartbeat",
        "idempotency_cleanup",
        "webhook_delivery_cleanup",
    } <= set(jobs)
    the_pass = jobs["scheduling_pass"]
    assert str(the_pass.trigger).startswith(trigger_text)
    assert (the_pass.coalesce, the_pass.max_instances, the_pass.misfire_grace_time) == (True, 1, None)
    assert str(jobs["reconcile"].trigger) == f"interval[0:00:{settings.reconcile_interval_s:02d}]"
    assert str(jobs["status"].trigger) == "interval[0:00:30]"
