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
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.cron import CronSchedule, latest_fire_at_or_before, next_fire, parse_schedule
from app.errors import InvalidInput
from app.models.enums import RunStatus
from app.services.dispatch import Dispatch, RecordedRuns
from app.services.stats import record_missed_slots
from app.services.task_input import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_MS
from app.webhooks.outbox import insert_deliveries_sql, stash_row

if TYPE_CHECKING:
    from redis import Redis

logger = logging.getLogger(__name__)

#: Missed slots of one task are counted one by one up to this many per pass (then capped), so a
#: minutely task back from a month of downtime does not stall the pass.
MISSED_COUNT_LIMIT = 1_000
_EPSILON = timedelta(microseconds=1)
#: Committed batches waiting to be sent while the pass claims the next one.
MAX_BATCHES_IN_FLIGHT = 2

OVERLAP_ERROR = {
    "code": "overlap",
    "message": "the task's previous run was still queued or running at this slot",
}

# Uses ix_tasks_schedule_enabled_next_run_at: equality on the first column, range and order on
# the second, so the scan stops after :limit rows; locked rows (another pass) are skipped. NO KEY
# UPDATE, because the key is not changed: inserting a run for the task (its foreign key takes
# KEY SHARE) is not blocked, while another pass, a PATCH or a cancel is. Grouped by what the
# fire times depend on, the ids of a group as one text: the pass handles a few hundred groups a
# batch, not a thousand rows (psycopg loads and dumps rows and arrays value by value in Python).
_CLAIM_DUE = text(
    """
    WITH claimed AS MATERIALIZED (
        SELECT id, cron, timezone, next_run_at
          FROM tasks
         WHERE schedule_enabled AND next_run_at <= :now
         ORDER BY next_run_at
         LIMIT :limit
           FOR NO KEY UPDATE SKIP LOCKED
    )
    SELECT cron, timezone, next_run_at, string_agg(CAST(id AS text), ','), count(*)
      FROM claimed
     GROUP BY cron, timezone, next_run_at
    """
)

# One statement per batch. `pairs`: each claimed task with its group's slot and next fire (ids,
# group numbers and times as comma-separated text, which the planner counts exactly and which
# costs Python one string each instead of one adapted value per element). `advanced`
# moves `next_run_at` and returns what the run copies from the task, so tasks is read once.
# `due`: the overlap test, one probe of ix_task_runs_active_task_id per task; as a LATERAL with
# LIMIT it cannot become a hashed subplan, which statistics from an empty task_runs (a herd's
# first batches) made the planner prefer: every queued run read again for each batch. Then the
# run rows, with (task, slot) deduplication, and the webhook deliveries of skipped runs. The
# answer is a few rows (by status and priority) whatever the batch size.
_CREATE_RUNS = text(
    f"""
    WITH fires AS MATERIALIZED (  -- the times parsed once, not once a row
        SELECT CAST(string_to_array(:slots, ',') AS timestamptz[]) AS slots,
               CAST(string_to_array(:next_run_ats, ',') AS timestamptz[]) AS next_run_ats
    ), pairs AS (
        SELECT CAST(u.task_id AS uuid) AS task_id,
               f.slots[CAST(u.grp AS int)] AS slot, f.next_run_ats[CAST(u.grp AS int)] AS next_run_at
          FROM fires AS f,
               unnest(string_to_array(:task_ids, ','), string_to_array(:groups, ',')) AS u(task_id, grp)
    ), advanced AS (
        UPDATE tasks AS t
           SET next_run_at = p.next_run_at, updated_at = :now
          FROM pairs AS p
         WHERE t.id = p.task_id
     RETURNING t.id, t.user_id, t.priority, t.agent_config, p.slot
    ), due AS MATERIALIZED (
        SELECT a.id, a.user_id, a.priority, a.agent_config, a.slot,
               CASE WHEN o.busy THEN 'skipped' ELSE 'queued' END AS status
          FROM advanced AS a
          LEFT JOIN LATERAL (SELECT true AS busy
                               FROM task_runs AS r
                              WHERE r.task_id = a.id AND r.status IN ('queued', 'running')
                              LIMIT 1) AS o ON true
    ), created AS (
    INSERT INTO task_runs (task_id, user_id, trigger, scheduled_for, status, priority, attempts,
                           max_attempts, timeout_ms, queued_at, finished_at, error,
                           message_id, message_sent_at)
    SELECT d.id, d.user_id, 'schedule', d.slot, d.status, d.priority, 0,
           1 + COALESCE((d.agent_config ->> 'maxRetries')::int, :default_retries),
           COALESCE((d.agent_config ->> 'timeout')::int, :default_timeout_ms),
           :now,
           CASE WHEN d.status = 'skipped' THEN CAST(:now AS timestamptz) END,
           CASE WHEN d.status = 'skipped' THEN CAST(:overlap AS jsonb) END,
           -- the id of the message about to be sent (as the API does): no UPDATE after the send;
           -- a send that fails leaves the id missing from Redis, and the reconciler resends
           CASE WHEN d.status = 'queued' THEN CAST(gen_random_uuid() AS text) END,
           CASE WHEN d.status = 'queued' THEN CAST(:now AS timestamptz) END
      FROM due AS d
        ON CONFLICT (task_id, scheduled_for) DO NOTHING
    RETURNING id, task_id, user_id, priority, status, message_id
    ), webhook AS (
        -- a skipped run is an ended run: its webhook delivery is written with it
        {insert_deliveries_sql("(SELECT * FROM created WHERE status = 'skipped')", "'run.skipped'")}
    )
    SELECT c.status, c.priority, count(*),
           string_agg(CAST(c.id AS text) || ' ' || c.message_id, ',') FILTER (WHERE c.status = 'queued'),
           string_agg(CAST(w.id AS text) || ' ' || w.message_id, ',') FILTER (WHERE w.id IS NOT NULL)
      FROM created AS c LEFT JOIN webhook AS w ON w.run_id = c.id
     GROUP BY c.status, c.priority
    """
)

#: (status, priority, runs, "run-id message-id" pairs of queued runs comma-separated, and the
#: same of the webhook deliveries of skipped runs)
_CreatedGroup = tuple[str, str, int, str | None, str | None]
#: (cron, timezone, next_run_at, the group's task ids comma-separated, how many)
_ClaimedGroup = tuple[str, str, datetime, str, int]

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


@dataclass(frozen=True, slots=True)
class _Fire:
    """What a pass does with the tasks of one (cron, timezone, next_run_at)."""

    slot: datetime
    #: Older slots missed since `next_run_at` (after downtime).
    missed: int
    following: datetime
    #: `slot` and `following` as the batch statement takes them.
    slot_text: str
    following_text: str


class _FireTimes:
    """Per-pass memo of the cron searches, keyed by what the answer depends on."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self._fires: dict[tuple[str, str, datetime], _Fire] = {}
        self._next: dict[tuple[str, str], datetime] = {}

    def fire(self, cron: str, timezone: str, due_since: datetime) -> _Fire:
        """The slot to run, the older slots missed since `due_since`, the next fire after now."""
        key = (cron, timezone, due_since)
        found = self._fires.get(key)
        if found is None:
            schedule = parse_schedule(cron, timezone)
            latest = latest_fire_at_or_before(schedule, self.now, due_since)
            # None: made due by hand between two fire times; the slot is when it was made due.
            slot, missed = (
                (due_since, 0) if latest is None else (latest, _count_fires(schedule, due_since, latest))
            )
            following = self._next.get(key[:2])
            if following is None:
                following = self._next[key[:2]] = next_fire(schedule, self.now)
            found = self._fires[key] = _Fire(slot, missed, following, slot.isoformat(), following.isoformat())
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

    A committed batch is sent on a helper thread while the next one is claimed, so Postgres and
    Redis work at once in a burst; `send` must therefore be thread-safe (`send_dispatches` is).
    `redis_client`, when given, receives the day's missed-slot count (see `app.services.stats`).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    now = now.astimezone(UTC)
    started_s = time.perf_counter()
    fire_times = _FireTimes(now)
    total = PassResult()
    with _Sender(send) as sender:
        while True:
            with session_factory.begin() as session:
                result, dispatches = _process_batch(session, fire_times, batch_size)
            total += result
            last = result.tasks_claimed < batch_size
            sender.send(dispatches, inline=last)
            if last:
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
    metrics.record_scheduling_pass(
        time.perf_counter() - started_s,
        queued=total.runs_queued,
        skipped=total.runs_skipped,
        missed=total.missed_slots,
    )
    return total


class _Sender:
    """Sends committed batches in order on one helper thread, at most MAX_BATCHES_IN_FLIGHT ahead.

    The thread is started only when a pass has more than one batch. Leaving the block waits for
    every send and re-raises the first error (the runs are committed either way; what was not
    sent, the reconciler sends).
    """

    def __init__(self, send: Callable[[Sequence[Dispatch]], object]) -> None:
        self._send = send
        self._executor: ThreadPoolExecutor | None = None
        self._pending: deque[Future[object]] = deque()

    def send(self, dispatches: Sequence[Dispatch], *, inline: bool) -> None:
        if not dispatches:
            return
        if inline and self._executor is None:
            self._send(dispatches)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scheduling-send")
        while len(self._pending) >= MAX_BATCHES_IN_FLIGHT:
            self._pending.popleft().result()
        self._pending.append(self._executor.submit(self._send, dispatches))

    def __enter__(self) -> _Sender:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._executor is None:
            return
        try:
            for future in self._pending:
                if exc_type is None:
                    future.result()
                elif future.exception() is not None:  # the pass's own error is the one raised
                    logger.error("sending a batch failed too", exc_info=future.exception())
        finally:
            self._executor.shutdown(wait=True)


def _process_batch(
    session: Session, fire_times: _FireTimes, batch_size: int
) -> tuple[PassResult, RecordedRuns]:
    now = fire_times.now
    groups: Sequence[_ClaimedGroup] = session.execute(_CLAIM_DUE, {"now": now, "limit": batch_size}).all()
    id_lists: list[str] = []
    group_numbers: list[str] = []
    slots: list[str] = []
    next_run_ats: list[str] = []
    claimed = missed = 0
    for cron, timezone, due_since, ids, count in groups:
        claimed += count
        try:
            fire = fire_times.fire(cron, timezone, due_since)
        except (InvalidInput, TypeError, ValueError) as exc:
            for task_id in ids.split(","):
                _stop_broken_schedule(session, uuid.UUID(task_id), cron, timezone, exc, now)
            continue
        slots.append(fire.slot_text)
        next_run_ats.append(fire.following_text)
        id_lists.append(ids)
        group_numbers.append(",".join([str(len(slots))] * count))  # arrays count from 1
        missed += fire.missed * count
    if not id_lists:
        return PassResult(0, 0, claimed, missed), RecordedRuns({}, 0)
    created: Sequence[_CreatedGroup] = session.execute(
        _CREATE_RUNS,
        {
            "task_ids": ",".join(id_lists),
            "groups": ",".join(group_numbers),
            "slots": ",".join(slots),
            "next_run_ats": ",".join(next_run_ats),
            "now": now,
            "overlap": json.dumps(OVERLAP_ERROR),
            "default_retries": DEFAULT_MAX_RETRIES,
            "default_timeout_ms": DEFAULT_TIMEOUT_MS,
        },
    ).all()
    queued: dict[str, str] = {}
    queued_count = skipped = 0
    for status, priority, count, runs, deliveries in created:
        if status == RunStatus.QUEUED.value:
            queued[priority] = runs or ""
            queued_count += count
            continue
        skipped += count
        for pair in deliveries.split(",") if deliveries else ():
            delivery_id, delivery_message_id = pair.split(" ")
            stash_row(session, uuid.UUID(delivery_id), delivery_message_id)
    return PassResult(queued_count, skipped, claimed, missed), RecordedRuns(queued, queued_count)


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
