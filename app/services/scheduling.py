"""The scheduling pass: due tasks become runs, exactly one per (task, slot), queued after commit.

One function serves the scheduler's minute job and `POST /api/cron/check-scheduled-tasks`.
Any number of passes may race (several scheduler processes, cron-endpoint calls): each batch
of due tasks is claimed with `FOR UPDATE SKIP LOCKED`, so a task is handled by one pass at a
time, and `UNIQUE (task_id, scheduled_for)` turns a repeated slot into a no-op.

Rules (CONTRACT "Time"):

* The slot of a due task is the latest fire time `s` with `next_run_at <= s <= now`: after
  downtime only the latest missed slot runs; the older ones are counted as missed. A task made
  due by hand (`UPDATE tasks SET next_run_at = now() - interval '1 minute'`) has no fire time in
  that window; its slot is then `next_run_at` itself, so it runs at the next pass.
* If the task's previous run is still queued or running, the slot is recorded as a `skipped`
  run (error code `overlap`) and nothing is sent.
* `next_run_at` becomes the first fire strictly after `now`.

Fire times are computed once per `(cron, timezone, next_run_at)` group and once per
`(cron, timezone)` for the next fire, so a burst of tasks due in the same minute costs one cron
search per distinct expression, not one per task.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.cron import CronSchedule, latest_fire_at_or_before, next_fire, parse_schedule
from app.errors import InvalidInput
from app.models.enums import RunStatus
from app.services.dispatch import Dispatch
from app.services.stats import record_missed_slots
from app.services.task_input import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_MS

if TYPE_CHECKING:
    from redis import Redis

logger = logging.getLogger(__name__)

#: Missed slots of one task are counted one by one up to this many per pass (then capped), so a
#: minutely task back from a month of downtime does not stall the pass.
MISSED_COUNT_LIMIT = 1_000
_EPSILON = timedelta(microseconds=1)

OVERLAP_ERROR = {
    "code": "overlap",
    "message": "the task's previous run was still queued or running at this slot",
}

# Uses ix_tasks_schedule_enabled_next_run_at: equality on the first column, range and order on
# the second, so the scan stops after :limit rows; locked rows (another pass) are skipped.
_CLAIM_DUE = text(
    """
    SELECT id, cron, timezone, next_run_at
      FROM tasks
     WHERE schedule_enabled AND next_run_at <= :now
     ORDER BY next_run_at
     LIMIT :limit
       FOR UPDATE SKIP LOCKED
    """
)

# One statement per batch: the overlap test, the run rows and the (task, slot) deduplication.
_INSERT_RUNS = text(
    """
    INSERT INTO task_runs (task_id, user_id, trigger, scheduled_for, status, priority, attempts,
                           max_attempts, timeout_ms, queued_at, finished_at, error)
    SELECT t.id, t.user_id, 'schedule', s.slot, s.status, t.priority, 0,
           1 + COALESCE((t.agent_config ->> 'maxRetries')::int, :default_retries),
           COALESCE((t.agent_config ->> 'timeout')::int, :default_timeout_ms),
           :now,
           CASE WHEN s.status = 'skipped' THEN CAST(:now AS timestamptz) END,
           CASE WHEN s.status = 'skipped' THEN CAST(:overlap AS jsonb) END
      FROM (SELECT u.task_id, u.slot,
                   CASE WHEN EXISTS (SELECT 1 FROM task_runs AS r
                                      WHERE r.task_id = u.task_id
                                        AND r.status IN ('queued', 'running'))
                        THEN 'skipped' ELSE 'queued' END AS status
              FROM unnest(CAST(:task_ids AS uuid[]), CAST(:slots AS timestamptz[]))
                   AS u(task_id, slot)) AS s
      JOIN tasks AS t ON t.id = s.task_id
        ON CONFLICT (task_id, scheduled_for) DO NOTHING
    RETURNING id, priority, status
    """
)

_ADVANCE = text(
    """
    UPDATE tasks AS t
       SET next_run_at = s.next_run_at, updated_at = :now
      FROM unnest(CAST(:task_ids AS uuid[]), CAST(:next_run_ats AS timestamptz[]))
           AS s(task_id, next_run_at)
     WHERE t.id = s.task_id
    """
)

# A stored schedule that no longer parses (say, a timezone gone from tzdata) stops firing and
# says why on the task, rather than being claimed again on every pass.
_STOP_BROKEN = text(
    """
    UPDATE tasks SET next_run_at = NULL, error = CAST(:error AS jsonb), updated_at = :now
     WHERE id = :task_id
    """
)

_HEALTH = text(
    """
    SELECT count(*), count(*) FILTER (WHERE next_run_at <= :now)
      FROM tasks
     WHERE schedule_enabled
    """
)


@dataclass(frozen=True, slots=True)
class PassResult:
    runs_queued: int = 0
    runs_skipped: int = 0
    tasks_claimed: int = 0
    #: Slots older than the one that ran, after downtime (counted, never run).
    missed_slots: int = 0

    def __add__(self, other: PassResult) -> PassResult:
        return PassResult(
            self.runs_queued + other.runs_queued,
            self.runs_skipped + other.runs_skipped,
            self.tasks_claimed + other.tasks_claimed,
            self.missed_slots + other.missed_slots,
        )


class _FireTimes:
    """Per-pass memo of the cron searches, keyed by what the answer depends on."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._slots: dict[tuple[str, str, datetime], tuple[datetime, int]] = {}
        self._next: dict[tuple[str, str], datetime] = {}

    def slot(self, cron: str, timezone: str, due_since: datetime) -> tuple[datetime, int]:
        """The slot to run and how many older slots were missed since `due_since`."""
        key = (cron, timezone, due_since)
        found = self._slots.get(key)
        if found is None:
            schedule = parse_schedule(cron, timezone)
            latest = latest_fire_at_or_before(schedule, self.now, due_since)
            # None: made due by hand between two fire times; the slot is when it was made due.
            found = (due_since, 0) if latest is None else (latest, _count_fires(schedule, due_since, latest))
            self._slots[key] = found
        return found

    def next_after_now(self, cron: str, timezone: str) -> datetime:
        key = (cron, timezone)
        found = self._next.get(key)
        if found is None:
            found = self._next[key] = next_fire(parse_schedule(cron, timezone), self.now)
        return found


def _count_fires(schedule: CronSchedule, start: datetime, end: datetime) -> int:
    """Fire times `f` with `start <= f < end`, counted up to MISSED_COUNT_LIMIT."""
    count = 0
    fire = next_fire(schedule, start - _EPSILON)
    while fire < end and count < MISSED_COUNT_LIMIT:
        count += 1
        fire = next_fire(schedule, fire)
    return count


def run_scheduling_pass(
    session_factory: sessionmaker[Session],
    *,
    now: datetime,
    send: Callable[[Sequence[Dispatch]], object],
    batch_size: int = 1000,
    redis_client: Redis | None = None,
) -> PassResult:
    """Turn every task due at `now` into its run, batch by batch; send each batch after commit.

    `redis_client`, when given, receives the day's missed-slot count (see `app.services.stats`).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    fire_times = _FireTimes(now)
    total = PassResult()
    while True:
        with session_factory.begin() as session:
            result, dispatches = _process_batch(session, fire_times, batch_size)
        if result.tasks_claimed == 0:
            break
        total += result
        if dispatches:
            send(dispatches)
        if result.tasks_claimed < batch_size:
            break
    if total.tasks_claimed:
        logger.info(
            "scheduling pass at %s: %d task(s) due, %d run(s) queued, %d skipped (overlap), "
            "%d older slot(s) missed",
            now.isoformat(),
            total.tasks_claimed,
            total.runs_queued,
            total.runs_skipped,
            total.missed_slots,
        )
    if redis_client is not None and total.missed_slots:
        record_missed_slots(redis_client, total.missed_slots, now)
    return total


def _process_batch(
    session: Session, fire_times: _FireTimes, batch_size: int
) -> tuple[PassResult, list[Dispatch]]:
    now = fire_times.now
    rows: Sequence[tuple[uuid.UUID, str, str, datetime]] = session.execute(
        _CLAIM_DUE, {"now": now, "limit": batch_size}
    ).all()
    if not rows:
        return PassResult(), []
    task_ids: list[uuid.UUID] = []
    slots: list[datetime] = []
    next_run_ats: list[datetime] = []
    missed = 0
    for task_id, cron, timezone, due_since in rows:
        try:
            slot, missed_here = fire_times.slot(cron, timezone, due_since)
            following = fire_times.next_after_now(cron, timezone)
        except (InvalidInput, TypeError, ValueError) as exc:
            _stop_broken_schedule(session, task_id, cron, timezone, exc, now)
            continue
        task_ids.append(task_id)
        slots.append(slot)
        next_run_ats.append(following)
        missed += missed_here
    queued: list[Dispatch] = []
    skipped = 0
    if task_ids:
        created: Sequence[tuple[uuid.UUID, str, str]] = session.execute(
            _INSERT_RUNS,
            {
                "task_ids": task_ids,
                "slots": slots,
                "now": now,
                "overlap": json.dumps(OVERLAP_ERROR),
                "default_retries": DEFAULT_MAX_RETRIES,
                "default_timeout_ms": DEFAULT_TIMEOUT_MS,
            },
        ).all()
        for run_id, priority, status in created:
            if status == RunStatus.QUEUED.value:
                queued.append(Dispatch(run_id, priority))
            else:
                skipped += 1
        session.execute(_ADVANCE, {"task_ids": task_ids, "next_run_ats": next_run_ats, "now": now})
    return PassResult(len(queued), skipped, len(rows), missed), queued


def _stop_broken_schedule(
    session: Session, task_id: uuid.UUID, cron: str, timezone: str, exc: Exception, now: datetime
) -> None:
    message = exc.message if isinstance(exc, InvalidInput) else str(exc)
    logger.error("task %s: schedule %r in %r cannot fire (%s); stopped", task_id, cron, timezone, message)
    error = {"code": "invalid_schedule", "message": f"the schedule cannot fire: {message}"}
    session.execute(_STOP_BROKEN, {"task_id": task_id, "error": json.dumps(error), "now": now})


def scheduling_health(session: Session, now: datetime) -> dict[str, Any]:
    """What `GET /api/cron/check-scheduled-tasks` answers."""
    counts: tuple[int, int] = session.execute(_HEALTH, {"now": now}).one()
    scheduled, due = counts
    moment = now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "status": "healthy",
        "scheduledTasks": int(scheduled),
        "tasksCurrentlyDue": int(due),
        "timestamp": moment,
    }
