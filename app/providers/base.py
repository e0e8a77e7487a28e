"""What the agent runtime needs from a model: one chat completion with token usage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ModelProvider(Protocol):
    name: str

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None,
        max_tokens: int,
        timeout_s: float,
    ) -> Completion:
        """One chat completion that returns within `timeout_s` seconds.

        Raises `ProviderError` (retryable unless the request itself is wrong) or
        `RunTimeout` when the time runs out, whatever the socket is doing.
        """
        ...
