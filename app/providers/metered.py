"""One wrapper that counts and times every model call, whatever the provider."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from app.errors import RunTimeout
from app.metrics import record_model_call
from app.providers.base import ChatMessage, Completion, ModelProvider


class MeteredProvider:
    """Records agentsched_model_calls_total, the call's latency and its tokens, then answers.

    Outcome ``ok``, ``timeout`` (:class:`RunTimeout`) or ``error`` (anything else raised).
    Every other attribute is the wrapped provider's.
    """

    def __init__(self, inner: ModelProvider) -> None:
        self.inner = inner
        self.name = inner.name

    def complete(self, messages: Sequence[ChatMessage], *args: Any, **kwargs: Any) -> Completion:
        started = time.perf_counter()
        try:
            completion = self.inner.complete(messages, *args, **kwargs)
        except RunTimeout:
            record_model_call("timeout", time.perf_counter() - started)
            raise
        except Exception:
            record_model_call("error", time.perf_counter() - started)
            raise
        record_model_call(
            "ok",
            time.perf_counter() - started,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            cached_tokens=getattr(completion, "cached_tokens", 0),
        )
        return completion

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def metered(provider: ModelProvider) -> ModelProvider:
    """`provider`, wrapped once (wrapping a wrapped provider returns it unchanged)."""
    return provider if isinstance(provider, MeteredProvider) else MeteredProvider(provider)
