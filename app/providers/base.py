"""What the agent runtime needs from a model: one chat completion with token usage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

#: Receives each piece of the answer as it streams in (may be called from the calling thread only).
DeltaCallback = Callable[[str], None]

#: When a server reports no usage, tokens are estimated at this many characters a token (the
#: usual figure for English text with OpenAI's tokenizers); the step then says `usageEstimated`.
CHARS_PER_ESTIMATED_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """The documented estimate: one token per `CHARS_PER_ESTIMATED_TOKEN` characters, rounded up."""
    return -(-len(text) // CHARS_PER_ESTIMATED_TOKEN)


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
    #: Prompt tokens served from the provider's cache; part of `prompt_tokens`, never extra.
    cached_tokens: int = 0
    #: True when the server reported no usage and the counts are `estimate_tokens` figures.
    usage_estimated: bool = False

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
        on_delta: DeltaCallback | None = None,
    ) -> Completion:
        """One chat completion that returns within `timeout_s` seconds.

        A provider that streams calls `on_delta` with each piece of the answer as it arrives;
        the returned `text` is the whole answer either way.

        Raises `ProviderError` (retryable unless the request itself is wrong) or
        `RunTimeout` when the time runs out, whatever the socket is doing.
        """
        ...
