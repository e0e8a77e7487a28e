"""A deterministic provider that needs no network, for local runs and tests.

It says what it is in every answer, so nobody mistakes its output for a model's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from app.providers.base import ChatMessage, Completion, DeltaCallback

OFFLINE_MODEL = "offline-deterministic-v1"
PLAN_MARKER = "Respond with a JSON array of steps"


def _count_tokens(text: str) -> int:
    """A rough, deterministic token count: about four characters a token."""
    return max(1, (len(text) + 3) // 4)


def _line_after(text: str, marker: str) -> str | None:
    """The rest of the first line of `text` that starts with `marker`, if any."""
    for line in text.splitlines():
        if line.startswith(marker):
            return line[len(marker) :].strip()
    return None


class OfflineProvider:
    name = "offline"

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None,
        max_tokens: int,
        timeout_s: float,
        on_delta: DeltaCallback | None = None,
    ) -> Completion:
        prompt = "\n".join(message.content for message in messages)
        last = messages[-1].content if messages else ""
        tag = f"[offline provider {hashlib.sha256(prompt.encode()).hexdigest()[:8]}: no model was called]"
        goal = _line_after(last, "Goal:") or "(no goal)"
        if PLAN_MARKER in prompt:
            text = json.dumps(
                [
                    "Restate the goal and what a good answer contains",
                    "Work through the goal and note the findings",
                ]
            )
        elif (step := _line_after(last, "Now do step")) is not None:
            text = f"{tag} Notes for step {step}"
        elif "Write the final result" in last:
            steps = [
                line.removeprefix("Step ").strip() for line in last.splitlines() if line.startswith("Step ")
            ]
            done = "; ".join(steps) if steps else "no steps"
            text = f'{tag} Result for the goal "{goal[:200]}". Steps worked through: {done}.'
        else:
            text = f"{tag} {last.strip()[:160] or '(empty prompt)'}"
        words = text.split()[: max(1, max_tokens)]
        text = " ".join(words)
        if on_delta is not None:  # streams its words one by one, as a model would
            for number, word in enumerate(words):
                on_delta(word if number == 0 else " " + word)
        return Completion(
            text=text,
            prompt_tokens=_count_tokens(prompt),
            completion_tokens=_count_tokens(text),
            model=OFFLINE_MODEL,
        )
