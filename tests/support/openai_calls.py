"""Calling OpenAIProvider in the unit tests: the messages, a provider on a base URL, one call."""

from __future__ import annotations

from app.providers.base import ChatMessage, Completion
from app.providers.openai import OpenAIProvider

MESSAGES = [ChatMessage("system", "You are terse."), ChatMessage("user", "Say hello to the tests")]

#: Added to an expected duration: what 8 test runs at once on 2 cores may cost a thread in wake-ups.
BUSY_MACHINE_SLACK_S = 2.0


def make_provider(base_url: str, api_key: str | None = None) -> OpenAIProvider:
    return OpenAIProvider(base_url=base_url, api_key=api_key, default_model="default-model")


def complete(provider: OpenAIProvider, *, model: str | None = "m", timeout_s: float = 5.0) -> Completion:
    return provider.complete(MESSAGES, model=model, max_tokens=64, timeout_s=timeout_s)
