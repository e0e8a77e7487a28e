"""One attempt of an agent run: plan, execute the steps, write the final result.

A run is replayed from its journal: before each model call the runtime asks whether an earlier
attempt completed that step, and if so reuses its output (the prompts are rebuilt from the goal,
the agent type and earlier outputs, so they need not be stored). Resuming is therefore the
normal path, not a special case. Every model call that is made is bounded by the run's
deadline (the provider receives the time left), preceded by a stop check (cancellation), a
hand-back check (the worker is stopping), a deadline check and the `before_call` hooks, and
written to the journal when it starts and when it ends. Tokens are summed from what the
provider reports. The token budget (app.agents.budget) decides whether a call may start: the
plan and the steps leave room for the final call, which fails the run `budget_exhausted` when
even that room was spent (a provider counting more than estimated).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from app.agents.budget import cut_to_tokens, estimate_prompt, plan_budget
from app.agents.registry import AgentType
from app.agents.steps import (
    PLAN_INDEX,
    AttemptHandedBack,
    BeforeCall,
    MemoryJournal,
    ModelCall,
    StepJournal,
)
from app.clock import Clock
from app.errors import BudgetExhausted, ProviderError, RunCancelled, RunTimeout
from app.providers.base import ChatMessage, Completion, DeltaCallback, ModelProvider
from app.providers.offline import PLAN_MARKER

logger = logging.getLogger(__name__)

#: Most tokens a single model answer may have.
MAX_ANSWER_TOKENS = 1024
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
    """Runs one attempt; its token counts stay readable when it raises."""

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
        should_hand_back: Callable[[], bool] = lambda: False,
        journal: StepJournal | None = None,
        before_call: Sequence[BeforeCall] = (),
        on_delta: Callable[[ModelCall], DeltaCallback] | None = None,
        log_prefix: str = "",
    ) -> None:
        self.agent = agent
        self.goal = goal
        self.provider = provider
        self.deadline = deadline
        self.token_budget = token_budget
        self.model = model
        self.should_stop = should_stop
        self.should_hand_back = should_hand_back
        self.journal: StepJournal = journal if journal is not None else MemoryJournal()
        self.before_call = list(before_call)
        self.on_delta = on_delta
        self.log_prefix = log_prefix
        #: Tokens of this attempt's model calls (not of replayed steps).
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        #: Model calls made by this attempt, and steps reused from earlier attempts.
        self.calls = 0
        self.replayed = 0
        self.budget = plan_budget(
            token_budget, [agent.system_prompt, self._final_prompt("")], MAX_ANSWER_TOKENS
        )

    @property
    def tokens_used(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def run(self) -> str:
        recorded = self.journal.completed_outputs()
        plan_answer = self._step(
            recorded,
            PLAN_INDEX,
            "plan",
            "Plan",
            f"Goal: {self.goal}\n\nPlan how to reach this goal. {PLAN_MARKER} "
            f"(at most {self.agent.max_steps} short strings), nothing else.",
        )
        # No plan when the budget can't cover one: the final call answers the goal directly.
        steps = [] if plan_answer is None else parse_plan(plan_answer, self.agent.max_steps) or [self.goal]
        outputs: list[tuple[str, str]] = []
        for number, step in enumerate(steps, start=1):
            previous = "\n\n".join(f"Step {i}: {s}\nOutput: {o}" for i, (s, o) in enumerate(outputs, 1))
            answer = self._step(
                recorded,
                number,
                "step",
                step,
                f"Goal: {self.goal}\n\n{previous}\n\nNow do step {number} of {len(steps)}: {step}",
            )
            if answer is None:
                logger.info("%stoken budget spent; stopping after %d steps", self.log_prefix, number - 1)
                break
            outputs.append((step, answer[:STEP_OUTPUT_CHARS]))
        findings = "\n\n".join(f"Step {i}: {s}\nOutput: {o}" for i, (s, o) in enumerate(outputs, 1))
        if len(steps) + 1 not in recorded:  # the findings are cut to the room the budget left
            skeleton = estimate_prompt([self.agent.system_prompt, self._final_prompt("")])
            findings = cut_to_tokens(findings, self.budget.findings_room(self.tokens_used, skeleton))
        final = self._step(recorded, len(steps) + 1, "final", "Final result", self._final_prompt(findings))
        assert final is not None  # the final call raises BudgetExhausted instead
        return final.strip() or findings or "(the model returned an empty answer)"

    def _final_prompt(self, findings: str) -> str:
        return f"Goal: {self.goal}\n\n{findings}\n\nWrite the final result for the goal from these steps."

    def _step(
        self, recorded: Mapping[int, str], index: int, kind: str, title: str, prompt: str
    ) -> str | None:
        """The step's output: reused when an earlier attempt completed it, else a model call.

        None when the budget can't cover the call (it is not made); for the final call that
        fails the run `budget_exhausted`.
        """
        if index in recorded:
            self.replayed += 1
            return recorded[index]
        prompt_tokens = estimate_prompt([self.agent.system_prompt, prompt])
        max_tokens = self.budget.max_tokens(self.tokens_used, prompt_tokens, final=kind == "final")
        if max_tokens is None:
            if kind == "final":
                raise BudgetExhausted(
                    f"the token budget was spent before the final call ({self.tokens_used} of "
                    f"{self.token_budget} tokens used by this attempt, the final call needs about "
                    f"{prompt_tokens} for its prompt)"
                )
            return None
        return self._call(ModelCall(index, kind, title[:500], prompt, max_tokens, self.model))

    def _call(self, call: ModelCall) -> str:
        if self.should_stop():
            raise RunCancelled("the run was cancelled")
        if self.should_hand_back():
            raise AttemptHandedBack("the worker is stopping")
        if self.deadline.remaining_s() <= 0:
            raise RunTimeout("the run exceeded its timeout")
        # -- the place for checks that must pass before a model call (budget, rate limits) --
        for hook in self.before_call:
            hook(call)
        remaining = self.deadline.remaining_s()
        if remaining <= 0:
            raise RunTimeout("the run exceeded its timeout")
        messages = [
            ChatMessage("system", self.agent.system_prompt),
            ChatMessage("user", call.prompt),
        ]
        on_delta = self.on_delta
        self.journal.start(call)
        started = self.deadline.clock.monotonic()
        try:
            completion = self.provider.complete(
                messages,
                model=call.model,
                max_tokens=call.max_tokens,
                timeout_s=remaining,
                # the receiver of this call's pieces, asked for once its start is written
                on_delta=on_delta(call) if on_delta is not None else None,
            )
            if completion.text is None:  # a provider that breaks its protocol
                raise ProviderError("the model returned no text")
        except BaseException as exc:
            self._record_failure(call, exc, started)
            raise
        self.calls += 1
        self._count(completion)
        self.journal.complete(call, completion, self._elapsed_ms(started))
        return completion.text

    def _count(self, completion: Completion) -> None:
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens
        self.cached_tokens += min(completion.cached_tokens, completion.prompt_tokens)

    def _elapsed_ms(self, started: float) -> int:
        return max(0, int((self.deadline.clock.monotonic() - started) * 1000))

    def _record_failure(self, call: ModelCall, exc: BaseException, started: float) -> None:
        try:
            self.journal.fail(call, exc, self._elapsed_ms(started))
        except Exception:  # the call's own error matters more; the next attempt redoes the step
            logger.warning(
                "%scould not record that step %d failed", self.log_prefix, call.index, exc_info=True
            )
