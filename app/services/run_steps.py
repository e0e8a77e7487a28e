"""A run's steps in Postgres: the journal an attempt writes and resumes from, and the step views.

Each write is one short autocommit statement; none is held across a model call. Every write is
fenced on the attempt: it bumps the run's `event_seq` only while the run is `running` under this
attempt number, in the same statement (the UPDATE waits for a concurrent claim's row lock, then
re-checks), so a worker that comes back from a pause cannot overwrite a newer attempt's steps.
The write takes the run's next event number, stores it on the step (`seq`), and, while someone
watches the run (`watched_until`, set by the API's event stream), notifies the run-events
channel, which the API's one listener fans out to live event streams. Only watched runs notify:
Postgres serializes the commits of every transaction that sent a NOTIFY (a global lock held
through the commit's WAL flush), so a notification per step of every run would cap the whole
system's step writes at one commit at a time.

A step's tokens are added to the run's and the task's totals in the statement that completes it,
so a run resumed after a crash (or retried) already carries what its completed steps cost.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, NoReturn

from sqlalchemy import TextClause, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.agents.steps import AttemptLost, ModelCall
from app.clock import Clock
from app.db import engine_of, execute_one
from app.errors import RunCancelled, RunFailure
from app.models import RunStep
from app.models.enums import StepStatus
from app.providers.base import Completion
from app.services.run_rows import status_is
from app.services.runs import RUN_EVENTS_CHANNEL

logger = logging.getLogger(__name__)


_COMPLETED_OUTPUTS = text(
    "SELECT index, output FROM run_steps WHERE run_id = :run_id AND status = 'completed'"
)

_RUNNING = status_is("running")

# A step's start, unless the run was asked to stop: then nothing is written (`cancel_requested`
# comes back true, and the attempt stops before the model call it was about to make).
_START = text(
    f"""
    WITH run AS (
        UPDATE task_runs SET event_seq = event_seq + CASE WHEN cancel_requested THEN 0 ELSE 1 END
         WHERE id = :run_id AND {_RUNNING} AND attempts = :attempt
        RETURNING id, event_seq, cancel_requested,
                  (watched_until IS NOT NULL AND watched_until > :now) AS watched
    ), step AS (
        INSERT INTO run_steps (run_id, index, kind, title, status, attempt, model, started_at,
                               seq, start_seq)
        SELECT id, :index, :kind, :title, 'running', :attempt, :model, :now, event_seq, event_seq
          FROM run WHERE NOT cancel_requested
        ON CONFLICT (run_id, index) DO UPDATE
           SET kind = EXCLUDED.kind, title = EXCLUDED.title, status = 'running',
               attempt = EXCLUDED.attempt, model = EXCLUDED.model, prompt_tokens = 0,
               completion_tokens = 0, cached_tokens = 0, usage_estimated = false,
               latency_ms = NULL, started_at = EXCLUDED.started_at, finished_at = NULL,
               output = NULL, error = NULL, seq = EXCLUDED.seq, start_seq = EXCLUDED.start_seq
         WHERE run_steps.status <> 'completed'
        RETURNING run_id, seq
    )
    SELECT (SELECT seq FROM step),
           CASE WHEN watched AND NOT cancel_requested THEN pg_notify(:channel, CAST(id AS text)) END,
           cancel_requested,
           watched
      FROM run
    """
)

_END = text(
    f"""
    WITH run AS (
        UPDATE task_runs
           SET event_seq = event_seq + 1,
               prompt_tokens = prompt_tokens + :prompt_tokens,
               completion_tokens = completion_tokens + :completion_tokens,
               cached_tokens = cached_tokens + :cached_tokens,
               tokens_used = tokens_used + :prompt_tokens + :completion_tokens,
               step_count = step_count + CASE WHEN :status = 'completed' THEN 1 ELSE 0 END
         WHERE id = :run_id AND {_RUNNING} AND attempts = :attempt
        RETURNING id, task_id, event_seq, (watched_until IS NOT NULL AND watched_until > :now) AS watched
    ), task_totals AS (
        UPDATE tasks
           SET prompt_tokens = prompt_tokens + :prompt_tokens,
               completion_tokens = completion_tokens + :completion_tokens,
               cached_tokens = cached_tokens + :cached_tokens,
               tokens_used = tokens_used + :prompt_tokens + :completion_tokens
         -- (not the sum of the two: psycopg sends a small int as smallint, and 30,000 + 3,000 overflows it)
         WHERE id = (SELECT task_id FROM run) AND (:prompt_tokens > 0 OR :completion_tokens > 0)
    ), step AS (
        UPDATE run_steps AS s
           SET status = :status, model = COALESCE(:model, s.model),
               prompt_tokens = :prompt_tokens, completion_tokens = :completion_tokens,
               cached_tokens = :cached_tokens, usage_estimated = :usage_estimated,
               latency_ms = :latency_ms, waited_ms = :waited_ms, finished_at = :now, output = :output,
               error = CAST(:error AS jsonb), seq = run.event_seq
          FROM run
         -- the key from the parameters, not from `run`: joined on run.id, the planner (with
         -- statistics from when run_steps was small) scanned the whole primary key for `index`
         WHERE s.run_id = :run_id AND s.index = :index AND s.attempt = :attempt
        RETURNING s.run_id, s.seq
    )
    SELECT seq, CASE WHEN watched THEN pg_notify(:channel, CAST(run_id AS text)) END FROM step, run
    """
)


def error_body(error: BaseException) -> dict[str, str]:
    """The `{code, message}` a failed step records."""
    if isinstance(error, RunFailure):
        return {"code": error.code, "message": error.message}
    return {"code": "internal", "message": f"{type(error).__name__}: {error}"}


class PostgresJournal:
    """The steps of one attempt of one run; see the module docstring."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        run_id: uuid.UUID,
        attempt: int,
        clock: Clock,
        *,
        before_end: Callable[[], None] | None = None,
        resuming: bool = True,
    ) -> None:
        self.engine = engine_of(session_factory)
        #: False when the claim said no earlier attempt completed a step (nothing to read).
        self.resuming = resuming
        #: Called as a step ends, before its end is written (the live deltas are flushed first).
        self.before_end = before_end
        self.run_id = run_id
        self.attempt = attempt
        self.clock = clock
        #: Event number of each running step's start (its live deltas are numbered after it).
        self.start_seqs: dict[int, int] = {}
        #: The running steps whose run someone watched as they started (their deltas go live).
        self.watched: set[int] = set()

    def completed_outputs(self) -> Mapping[int, str]:
        if not self.resuming:
            return {}
        with self.engine.connect() as connection:
            rows = connection.execute(_COMPLETED_OUTPUTS, {"run_id": self.run_id}).all()
        return {int(row[0]): str(row[1] or "") for row in rows}

    def start(self, call: ModelCall) -> None:
        """Write the step's start; `RunCancelled` (nothing written) when the run was asked to stop,
        so a cancellation is seen at the next model call without a statement of its own."""
        row = self._write(
            _START,
            {
                "index": call.index,
                "kind": call.kind,
                "title": call.title,
                "model": call.model,
            },
        )
        if row[2]:
            raise RunCancelled("the run was cancelled")
        self.start_seqs[call.index] = self._seq(row)
        if row[3]:
            self.watched.add(call.index)
        else:
            self.watched.discard(call.index)

    def complete(self, call: ModelCall, completion: Completion, latency_ms: int) -> None:
        self._end(
            call,
            StepStatus.COMPLETED,
            latency_ms,
            output=completion.text,
            model=completion.model,
            tokens=(completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens),
            usage_estimated=completion.usage_estimated,
        )

    def fail(self, call: ModelCall, error: BaseException, latency_ms: int) -> None:
        if isinstance(error, AttemptLost):
            return
        self._end(call, StepStatus.FAILED, latency_ms, error=error_body(error))

    def _end(
        self,
        call: ModelCall,
        status: StepStatus,
        latency_ms: int,
        *,
        output: str | None = None,
        model: str | None = None,
        tokens: tuple[int, int, int] = (0, 0, 0),
        usage_estimated: bool = False,
        error: dict[str, str] | None = None,
    ) -> None:
        prompt_tokens, completion_tokens, cached_tokens = tokens
        if self.before_end is not None:
            self.before_end()
        self._write(
            _END,
            {
                "index": call.index,
                "status": status.value,
                "model": model,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cached_tokens": min(cached_tokens, prompt_tokens),
                "usage_estimated": usage_estimated,
                # the wait before the call (app.providers.ratelimit) is not the model's latency
                "latency_ms": max(0, latency_ms - call.waited_ms),
                "waited_ms": call.waited_ms,
                "output": output,
                "error": json.dumps(error) if error is not None else None,
            },
        )
        self.start_seqs.pop(call.index, None)

    def _write(self, statement: TextClause, params: dict[str, Any]) -> tuple[Any, ...]:
        """The statement's row; `AttemptLost` when it wrote nothing (the run is not ours now)."""
        row = execute_one(
            self.engine,
            statement,
            {
                **params,
                "run_id": self.run_id,
                "attempt": self.attempt,
                "now": self.clock.now(),
                "channel": RUN_EVENTS_CHANNEL,
            },
        )
        if row is None:
            self._lost()
        return row

    def _seq(self, row: tuple[Any, ...]) -> int:
        """The event number the write took (None: the step was not ours to write)."""
        if row[0] is None:
            self._lost()
        return int(row[0])

    def _lost(self) -> NoReturn:
        logger.warning("run %s attempt %d lost its claim; stopping", self.run_id, self.attempt)
        raise AttemptLost(f"run {self.run_id} attempt {self.attempt} was claimed again")


def list_steps(session: Session, run_id: uuid.UUID) -> Sequence[RunStep]:
    """A run's steps in order (plan, steps, final)."""
    return session.scalars(select(RunStep).where(RunStep.run_id == run_id).order_by(RunStep.index)).all()


def steps_after(session: Session, run_id: uuid.UUID, seq: int) -> Sequence[RunStep]:
    """The run's steps written after event number `seq`, in the order they were written."""
    return session.scalars(
        select(RunStep).where(RunStep.run_id == run_id, RunStep.seq > seq).order_by(RunStep.seq)
    ).all()


#: A live event stream marks its run watched this far ahead, and again once less than half is left
#: (a stream re-reads its run at least every keep-alive, 15 s): the run's writes notify meanwhile.
WATCH_S = 60

_WATCH = text(
    """
    UPDATE task_runs SET watched_until = :until
     WHERE id = :run_id AND user_id = :user_id
       AND (watched_until IS NULL OR watched_until < :refresh_after)
    """
)


def watch_run(session: Session, user_id: uuid.UUID, run_id: uuid.UUID, now: datetime) -> None:
    """Ask the run's writes to notify for the next `WATCH_S` seconds (a no-op most of the time)."""
    session.execute(
        _WATCH,
        {
            "run_id": run_id,
            "user_id": user_id,
            "until": now + timedelta(seconds=WATCH_S),
            "refresh_after": now + timedelta(seconds=WATCH_S / 2),
        },
    )
