"""One delivery of a run's message: claim, hold credits, run the agent, record the outcome.

The agent resumes from the run's recorded steps (app.services.run_steps); while it runs, the
process's `LeaseKeeper` renews the run's lease. An attempt that finds its run claimed again
(`AttemptLost`) stops and writes nothing; one interrupted because the worker is stopping
(`AttemptHandedBack`) gives the run back for another worker to resume at once.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.agents.registry import AGENT_TYPES, get_agent
from app.agents.runtime import AgentRun, Deadline
from app.agents.steps import AttemptHandedBack, AttemptLost, BeforeCall
from app.clock import SYSTEM_CLOCK, Clock
from app.db import engine_of
from app.errors import InsufficientCredits, RunFailure, UnknownAgent
from app.providers.base import ModelProvider
from app.providers.metered import metered
from app.services import credits
from app.services.dispatch import Dispatch
from app.services.leases import LeaseKeeper, hand_back
from app.services.retry import backoff_ms
from app.services.run_deltas import DeltaPublisher
from app.services.run_steps import PostgresJournal
from app.services.runs import ClaimedRun, Outcome, claim_run, finish, retry_later
from app.settings import Settings

logger = logging.getLogger(__name__)

#: Pauses between tries to record an outcome while Postgres is unreachable (then Dramatiq retries).
RECORD_RETRY_PAUSES_S = (0.5, 1.0, 2.0, 4.0)


@dataclass
class RunEnvironment:
    """What executing a run needs; built once per worker process."""

    session_factory: sessionmaker[Session]
    provider: ModelProvider
    settings: Settings
    clock: Clock = field(default=SYSTEM_CLOCK)
    #: Renews the leases of this process's running runs (built from the settings when None).
    leases: LeaseKeeper = field(default=None)  # type: ignore[assignment]
    #: Checks made before every model call, in order (budget, provider rate limits, ...).
    before_call: list[BeforeCall] = field(default_factory=list)
    #: Receives the live pieces of each streamed answer (Redis); None: they are dropped.
    deltas: DeltaPublisher | None = None

    def __post_init__(self) -> None:
        if self.leases is None:
            self.leases = LeaseKeeper(
                self.session_factory,
                self.clock,
                lease_s=self.settings.run_lease_s,
                heartbeat_s=self.settings.run_heartbeat_s,
            )


def execute_run(env: RunEnvironment, run_id: uuid.UUID) -> Dispatch | None:
    """Execute one attempt of the run, if it is ours to execute.

    Returns the message to send (after this function's commits) when the run must be retried.
    A duplicate or late delivery finds nothing to claim and returns None at once.
    """
    claimed = _claim(env, run_id)
    if claimed is None:
        return None
    started_s = time.perf_counter()
    with env.leases.holding(claimed.run_id, claimed.attempt):
        try:
            outcome = _attempt(env, claimed)
        except AttemptLost:
            return None  # a newer attempt owns the run; this one writes nothing more
        except AttemptHandedBack:
            return _hand_back(env, claimed)
        finally:
            if env.deltas is not None:
                env.deltas.end_attempt(claimed.run_id)
    attempt_s = time.perf_counter() - started_s
    for pause_s in (*RECORD_RETRY_PAUSES_S, None):
        try:
            return _record(env, claimed, outcome, attempt_s)
        except (OperationalError, InterfaceError):
            if pause_s is None:
                raise  # Dramatiq redelivers; the claim waits for the lease to expire
            logger.warning("run %s: recording its outcome failed; trying again", run_id, exc_info=True)
            time.sleep(pause_s)
    return None


def _record(env: RunEnvironment, claimed: ClaimedRun, outcome: Outcome, attempt_s: float) -> Dispatch | None:
    """Write the attempt's outcome: a retry for later, or the run's end (counted once written)."""
    run_id = claimed.run_id
    now = env.clock.now()
    if outcome.error_code and outcome.retryable and claimed.attempt < claimed.max_attempts:
        delay = backoff_ms(
            claimed.attempt,
            min_ms=env.settings.retry_min_backoff_ms,
            max_ms=env.settings.retry_max_backoff_ms,
        )
        logger.info(
            "run %s attempt %d/%d failed (%s: %s); retrying in %d ms",
            run_id,
            claimed.attempt,
            claimed.max_attempts,
            outcome.error_code,
            outcome.error_message,
            delay,
        )
        with env.session_factory.begin() as session:
            retry = retry_later(session, claimed, outcome, delay_ms=delay, now=now)
        if retry is not None:
            metrics.record_attempt(outcome.error_code, attempt_s, agent_type=claimed.agent_type, retried=True)
        return retry
    # the end, in one statement of its own (its webhook's message goes out once it returns)
    if not finish(
        env.session_factory, claimed, outcome, tokens_per_credit=env.settings.tokens_per_credit, now=now
    ):
        logger.warning("run %s attempt %d lost its claim; outcome discarded", run_id, claimed.attempt)
    else:
        metrics.record_attempt(outcome.error_code, attempt_s, agent_type=claimed.agent_type, retried=False)
        ended_as = outcome.error_code or "completed"
        logger.debug("run %s %s after %d attempt(s)", run_id, ended_as, claimed.attempt)
    return None


def _fail_now(session: Session, env: RunEnvironment, claimed: ClaimedRun, code: str, message: str) -> None:
    logger.info("run %s failed without retry: %s", claimed.run_id, message)
    metrics.record_run_ended(code, claimed.agent_type)
    finish(
        session,
        claimed,
        Outcome(tokens=0, error_code=code, error_message=message),
        tokens_per_credit=env.settings.tokens_per_credit,
        now=env.clock.now(),
    )


def _claim(env: RunEnvironment, run_id: uuid.UUID) -> ClaimedRun | None:
    now = env.clock.now()
    reservation = credits.reservation(env.settings.run_token_budget, env.settings.tokens_per_credit)
    claimed = claim_run(
        engine_of(env.session_factory),
        run_id,
        now=now,
        lease_ms=int(env.settings.run_lease_s * 1000),
        reservation=reservation,
    )
    if claimed is None:
        logger.debug("run %s: nothing to claim (duplicate or late delivery)", run_id)
        return None
    if claimed.attempt == 1 and claimed.scheduled_for is not None:
        metrics.record_lateness((now - claimed.scheduled_for).total_seconds())
    failure = _cannot_start(claimed)
    if failure is None:
        return claimed
    # A claimed run that cannot start ends at once (a crash before this leaves it to its lease).
    with env.session_factory.begin() as session:
        _fail_now(session, env, claimed, *failure)
    return None


def _cannot_start(claimed: ClaimedRun) -> tuple[str, str] | None:
    """(code, message) of why a claimed run must end without an attempt, if it must."""
    if claimed.cancel_requested:
        return "cancelled", "the task was cancelled"
    if claimed.attempt > claimed.max_attempts:
        return "worker_lost", "its worker stopped and no attempts were left"
    if claimed.agent_type not in AGENT_TYPES:
        return UnknownAgent.code, f"unknown agent type {claimed.agent_type!r}"
    if not claimed.reserved:
        return (
            InsufficientCredits.code,
            "less than 1 credit is left this month (credits used and held by running runs "
            "reach the plan's allowance)",
        )
    return None


def _hand_back(env: RunEnvironment, claimed: ClaimedRun) -> Dispatch | None:
    """Give the run back (lease released, attempt not used up) and return its new message."""
    for pause_s in (*RECORD_RETRY_PAUSES_S[:2], None):
        try:
            with env.session_factory.begin() as session:
                dispatch = hand_back(session, claimed.run_id, claimed.attempt, env.clock.now())
        except (OperationalError, InterfaceError):
            if pause_s is None:
                logger.warning("run %s: could not hand it back; its lease will lapse", claimed.run_id)
                return None
            time.sleep(pause_s)
            continue
        logger.info("run %s: handed back for another worker (this one is stopping)", claimed.run_id)
        return dispatch
    return None


def _attempt(env: RunEnvironment, claimed: ClaimedRun) -> Outcome:
    deltas = env.deltas
    journal = PostgresJournal(
        env.session_factory,
        claimed.run_id,
        claimed.attempt,
        env.clock,
        before_end=(lambda: deltas.flush(claimed.run_id)) if deltas is not None else None,
        resuming=claimed.steps_completed > 0,
    )
    agent_run = AgentRun(
        get_agent(claimed.agent_type),
        claimed.goal,
        provider=metered(env.provider),
        deadline=Deadline.after_ms(env.clock, claimed.timeout_ms),
        token_budget=max(
            0,
            credits.token_budget(
                claimed.reserved, env.settings.run_token_budget, env.settings.tokens_per_credit
            )
            - claimed.tokens_before,
        ),
        model=claimed.model,
        should_hand_back=env.leases.stopping.is_set,
        journal=journal,
        before_call=env.before_call,
        on_delta=(
            (
                lambda call: functools.partial(
                    deltas.publish,
                    claimed.run_id,
                    journal.start_seqs.get(call.index),
                    call,
                    live=call.index in journal.watched,
                )
            )
            if deltas is not None
            else None
        ),
        log_prefix=f"run {claimed.run_id}: ",
    )
    try:
        result = agent_run.run()
    except (AttemptLost, AttemptHandedBack):
        raise
    except RunFailure as exc:
        if exc.retryable and env.leases.stopping.is_set():
            raise AttemptHandedBack("the worker stopped during a model call") from exc
        return Outcome(
            tokens=agent_run.tokens_used,
            error_code=exc.code,
            error_message=exc.message,
            retryable=exc.retryable,
        )
    except Exception as exc:
        logger.exception("run %s: unexpected error", claimed.run_id)
        return Outcome(
            tokens=agent_run.tokens_used,
            error_code="internal",
            error_message=f"{type(exc).__name__}: {exc}",
            retryable=True,
        )
    return Outcome(tokens=agent_run.tokens_used, result=result)
