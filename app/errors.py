"""Domain errors. `app/` never knows HTTP status codes; `api/errors.py` maps these in one place."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence


class AppError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(AppError):
    """A setting is present but wrong; the process must not start."""

    code = "configuration"


class InvalidInput(AppError):
    """Input that breaks a rule; `fields` maps each offending field to what is wrong."""

    code = "invalid_input"

    def __init__(self, fields: Mapping[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {problem}" for name, problem in fields.items()))
        self.fields = dict(fields)


class InvalidCronExpression(InvalidInput):
    code = "invalid_cron"


class InvalidTimezone(InvalidInput):
    code = "invalid_timezone"


class NotAuthenticated(AppError):
    code = "unauthorized"


class NotFound(AppError):
    code = "not_found"


class Conflict(AppError):
    code = "conflict"


class IdempotencyKeyReused(AppError):
    """An `Idempotency-Key` sent again with a different request."""

    code = "idempotency_key_reused"


class RunsNotSent(AppError):
    """Runs are saved and queued but their messages could not reach Redis. Nothing is lost: the
    reconciler sends them once Redis is back. `message` says so, and what the same request
    again would do (the caller knows: another run, or none)."""

    code = "unavailable"

    def __init__(self, run_ids: Sequence[uuid.UUID], message: str) -> None:
        super().__init__(message)
        self.run_ids = list(run_ids)


class RunNotSent(RunsNotSent):
    """The one new run of a request (a create, a run now) is saved and queued but its message
    could not reach Redis. The same request again would make another run."""

    def __init__(self, task_id: uuid.UUID, run_id: uuid.UUID, status: str) -> None:
        super().__init__(
            [run_id],
            f"Redis is unavailable: run {run_id} of task {task_id} is saved and queued, and starts "
            "once Redis is back; sending this request again makes another unless it carries the "
            "same Idempotency-Key",
        )
        self.task_id = task_id
        self.run_id = run_id
        self.status = status


class RateLimited(AppError):
    """Too many requests in the window; `retry_after_s` says when to try again."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})


class RunFailure(AppError):
    """An attempt of a run failed; `retryable` says whether another attempt may help."""

    retryable = True


class ProviderError(RunFailure):
    code = "provider_error"


class ProviderRateLimited(ProviderError):
    """The provider answered 429: wait `retry_after_s` (None: it did not say) and call again;
    `error_code` is the provider's (`insufficient_quota` means waiting will not help)."""

    def __init__(self, message: str, *, retry_after_s: float | None, error_code: str | None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.error_code = error_code


class ProviderQuota(RunFailure):
    """The provider account is out of quota (`insufficient_quota`): no retry helps."""

    code = "provider_quota"
    retryable = False


class RunTimeout(RunFailure):
    code = "timeout"


class InsufficientCredits(RunFailure):
    code = "insufficient_credits"
    retryable = False


class BudgetExhausted(RunFailure):
    """The run's token budget ran out before its final call (a provider counting more than
    estimated); its steps are kept, and it is charged at most its reservation."""

    code = "budget_exhausted"
    retryable = False


class UnknownAgent(RunFailure):
    code = "unknown_agent"
    retryable = False


class RunCancelled(RunFailure):
    code = "cancelled"
    retryable = False
