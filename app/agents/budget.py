"""A run's token budget: whether a model call may start, and the room kept for the final call.

Rules (CONTRACT "Money", README "Money"):
- a call's cost is estimated before it starts: its prompt from its length (about four
  characters a token, plus a few tokens per message) plus the `max_tokens` it asks for;
- no call starts that the remaining budget can't cover;
- room for the final call is kept from the start: the plan and the steps may only spend what
  leaves `final_keep` tokens free (the final prompt without findings, room for the findings,
  and the final answer);
- the final call may use everything that is left; its findings are cut to fit.

A provider that counts more tokens than the estimate can still overrun the budget; the run
then fails `budget_exhausted` at its final call (see app.agents.runtime) and is charged at most
its reservation (app.services.credits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: The length-based estimate: characters per token, and the tokens each chat message adds.
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 4
#: No call starts that could answer in fewer tokens than this.
MIN_ANSWER_TOKENS = 64
#: The most tokens the final call's findings are given room for, from the start.
FINDINGS_ROOM_TOKENS = 2_000


def estimate_tokens(text: str) -> int:
    """Tokens in `text`, estimated from its length."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_prompt(messages: Sequence[str]) -> int:
    """Prompt tokens of a call whose messages have these contents."""
    return sum(estimate_tokens(content) + MESSAGE_OVERHEAD_TOKENS for content in messages)


def cut_to_tokens(text: str, tokens: int) -> str:
    """The longest prefix of `text` whose estimate is at most `tokens`."""
    return text[: max(0, tokens) * CHARS_PER_TOKEN]


def final_keep(total: int, final_skeleton_tokens: int, max_answer_tokens: int) -> int:
    """Tokens kept for the final call from the start of an attempt with `total` tokens.

    `final_skeleton_tokens` is the final prompt's estimate without any findings.
    """
    answer = min(max_answer_tokens, max(MIN_ANSWER_TOKENS, total // 4))
    findings = min(FINDINGS_ROOM_TOKENS, total // 4)
    return final_skeleton_tokens + findings + answer


@dataclass(frozen=True, slots=True)
class RunBudget:
    """The tokens an attempt may spend, and how much of them the final call keeps."""

    total: int
    keep_for_final: int
    max_answer_tokens: int

    def answer_room(self, spent: int, prompt_tokens: int, *, final: bool) -> int:
        """The largest `max_tokens` a call with this prompt may ask for, having spent `spent`."""
        left = self.total - spent - prompt_tokens - (0 if final else self.keep_for_final)
        return min(self.max_answer_tokens, left)

    def max_tokens(self, spent: int, prompt_tokens: int, *, final: bool) -> int | None:
        """`max_tokens` for the call, or None when the budget can't cover it (it must not start)."""
        room = self.answer_room(spent, prompt_tokens, final=final)
        return room if room >= MIN_ANSWER_TOKENS else None

    def findings_room(self, spent: int, skeleton_tokens: int) -> int:
        """Tokens the final call's findings may take so that its answer still has room."""
        answer = min(self.max_answer_tokens, max(MIN_ANSWER_TOKENS, self.total // 4))
        return max(0, self.total - spent - skeleton_tokens - answer)


def plan_budget(total: int, final_skeleton: Sequence[str], max_answer_tokens: int) -> RunBudget:
    """The budget of an attempt with `total` tokens whose final call, without findings, has
    these messages."""
    skeleton = estimate_prompt(final_skeleton)
    return RunBudget(total, final_keep(total, skeleton, max_answer_tokens), max_answer_tokens)
