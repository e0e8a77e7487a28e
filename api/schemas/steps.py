"""The step view (CONTRACT "Run steps and live events") and the shapes of the steps endpoints."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

from app.models import RunStep
from app.wire import iso


class StepView(TypedDict):
    index: int
    kind: Literal["plan", "step", "final"]
    title: str
    status: Literal["running", "completed", "failed"]
    attempt: int
    model: str | None
    promptTokens: int
    completionTokens: int
    #: Prompt tokens served from the provider's cache (part of promptTokens).
    cachedTokens: int
    #: True when the server reported no usage and the tokens are estimated (4 characters a token).
    usageEstimated: bool
    latencyMs: int | None
    #: Time the call waited before it was made: the provider budget (LLM_RPM/LLM_TPM) or a 429.
    waitedMs: int
    startedAt: str
    finishedAt: str | None
    output: str | None
    error: dict[str, Any] | None


class StepsPage(TypedDict):
    items: list[StepView]


def step_view(step: RunStep) -> StepView:
    return {
        "index": step.index,
        "kind": step.kind,  # type: ignore[typeddict-item]
        "title": step.title,
        "status": step.status,  # type: ignore[typeddict-item]
        "attempt": step.attempt,
        "model": step.model,
        "promptTokens": step.prompt_tokens,
        "completionTokens": step.completion_tokens,
        "cachedTokens": step.cached_tokens,
        "usageEstimated": step.usage_estimated,
        "latencyMs": step.latency_ms,
        "waitedMs": step.waited_ms,
        "startedAt": iso(step.started_at),
        "finishedAt": iso(step.finished_at),
        "output": step.output,
        "error": step.error,
    }
