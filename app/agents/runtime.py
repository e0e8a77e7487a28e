"""One attempt of an agent run: plan, execute the steps, write the final result.

Every model call is bounded by the run's deadline (the provider receives the time left) and is
preceded by a deadline check and a stop check (cancellation). Tokens are summed from what the
provider reports; the run stops planning more work once its token budget is spent.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from app.agents.registry import AgentType
from app.clock import Clock
from app.errors import ProviderError, RunCancelled, RunTimeout
from app.providers.base import ChatMessage, ModelProvider
from app.providers.offline import PLAN_MARKER

logger = logging.getLogger(__name__)

#: Most tokens a single model answer may have.
MAX_ANSWER_TOKENS = 1024
#: Below this many tokens left in the budget, no further step starts.
MIN_TOKENS_FOR_A_CALL = 64
STEP_OUTPUT_CHARS = 4_000


@dataclass(frozen=True, slots=True)
class Deadline:
    clock: Clock
    expires_at: float  # on clock.monotonic()

    @classmethod
    def after_ms(cls, clock: Clock, timeout_ms: int) -> Deadline:
        return cls(clock, clock.monotonic() + timeout_ms / 1000)

    def remaining_s(self) -> float:
        return self.expires_at - self.clock.monotonic()


def parse_plan(answer: str, max_steps: int) -> list[str]:
    """Steps from a planning answer: a JSON array of strings, possibly inside a code fence.

    An answer that is not valid JSON falls back to its non-empty lines (list markers removed),
    so a model that ignores the format still gets its plan executed; an empty answer gives one
    step, the goal itself.
    """
    body = answer.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", body, re.DOTALL)
    if fenced:
        body = fenced.group(1).strip()
    steps: list[str] = []
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, list):
        steps = [str(item).strip() for item in parsed if str(item).strip()]
    elif isinstance(parsed, dict) and isinstance(parsed.get("steps"), list):
        steps = [str(item).strip() for item in parsed["steps"] if str(item).strip()]
    else:
        for line in body.splitlines():
            cleaned = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip()
            if cleaned and cleaned not in "[]{}":
                steps.append(cleaned)
    return steps[:max_steps]


class AgentRun:
    """Runs one attempt; `tokens_used` stays readable when it raises."""

    def __init__(
        self,
        agent: AgentType,
        goal: str,
        *,
        provider: ModelProvider,
        deadline: Deadline,
        token_budget: int,
        model: str | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        log_prefix: str = "",
    ) -> None:
        self.agent = agent
        self.goal = goal
        self.provider = provider
        self.deadline = deadline
        self.token_budget = token_budget
        self.model = model
        self.should_stop = should_stop
        self.log_prefix = log_prefix
        self.tokens_used = 0
        self.calls = 0

    def run(self) -> str:
        plan_answer = self._call(
            f"Goal: {self.goal}\n\nPlan how to reach this goal. {PLAN_MARKER} "
            f"(at most {self.agent.max_steps} short strings), nothing else."
        )
        steps = parse_plan(plan_answer, self.agent.max_steps) or [self.goal]
        outputs: list[tuple[str, str]] = []
        for number, step in enumerate(steps, start=1):
            if self._tokens_left() < MIN_TOKENS_FOR_A_CALL * 2:
                logger.info(
                    "%stoken budget nearly spent; stopping after %d steps",
                    self.log_prefix,
                    number - 1,
                )
                break
            previous = "\n\n".join(f"Step {i}: {s}\nOutput: {o}" for i, (s, o) in enumerate(outputs, 1))
            answer = self._call(
                f"Goal: {self.goal}\n\n{previous}\n\nNow do step {number} of {len(steps)}: {step}"
            )
            outputs.append((step, answer[:STEP_OUTPUT_CHARS]))
        findings = "\n\n".join(f"Step {i}: {s}\nOutput: {o}" for i, (s, o) in enumerate(outputs, 1))
        final = self._call(
            f"Goal: {self.goal}\n\n{findings}\n\nWrite the final result for the goal from these steps."
        ).strip()
        return final or findings or "(the model returned an empty answer)"

    def _tokens_left(self) -> int:
        return self.token_budget - self.tokens_used

    def _call(self, prompt: str) -> str:
        if self.should_stop():
            raise RunCancelled("the run was cancelled")
        remaining = self.deadline.remaining_s()
        if remaining <= 0:
            raise RunTimeout("the run exceeded its timeout")
        max_tokens = max(1, min(MAX_ANSWER_TOKENS, self._tokens_left()))
        messages = [
            ChatMessage("system", self.agent.system_prompt),
            ChatMessage("user", prompt),
        ]
        completion = self.provider.complete(
            messages, model=self.model, max_tokens=max_tokens, timeout_s=remaining
        )
        self.calls += 1
        self.tokens_used += completion.total_tokens
        if completion.text is None:  # a provider that breaks its protocol
            raise ProviderError("the model returned no text")
        return completion.text
