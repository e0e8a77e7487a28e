"""A deterministic provider that needs no network, for local runs and tests.

It says what it is in every answer, so nobody mistakes its output for a model's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from app.providers.base import ChatMessage, Completion

OFFLINE_MODEL = "offline-deterministic-v1"
PLAN_MARKER = "Respond with a JSON array of steps"


def _count_tokens(text: str) -> int:
    """A rough, deterministic token count: about four characters a token."""
    return max(1, (len(text) + 3) // 4)


class OfflineProvider:
    name = "offline"

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None,
        max_tokens: int,
        timeout_s: float,
    ) -> Completion:
        prompt = "\n".join(message.content for message in messages)
        last = messages[-1].content if messages else ""
        digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
        if PLAN_MARKER in prompt:
            text = json.dumps(
                [
                    "Restate the goal and what a good answer contains",
                    "Work through the goal and note the findings",
                ]
            )
        else:
            subject = last.strip().splitlines()[0][:160] if last.strip() else "(empty)"
            text = f"[offline provider {digest}: no model was called] {subject}"
        words = text.split()
        text = " ".join(words[: max(1, max_tokens)])
        return Completion(
            text=text,
            prompt_tokens=_count_tokens(prompt),
            completion_tokens=_count_tokens(text),
            model=OFFLINE_MODEL,
        )
