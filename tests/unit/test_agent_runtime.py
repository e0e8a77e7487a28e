"""The agent runtime: plan, steps, result; tokens, budget, deadline and cancellation."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from app.agents.registry import AGENT_TYPES, get_agent
from app.agents.runtime import AgentRun, Deadline
from app.agents.steps import MemoryJournal, ModelCall
from app.clock import SYSTEM_CLOCK, FrozenClock
from app.errors import RunCancelled, RunTimeout, UnknownAgent
from app.providers.base import ChatMessage, Completion
from app.providers.offline import OfflineProvider


class ScriptedProvider:
    """Answers from a list, reporting fixed token counts; optionally moves a clock per call."""

    name = "scripted"

    def __init__(self, answers: Sequence[str], tokens: int = 10, clock: FrozenClock | None = None) -> None:
        self.answers = list(answers)
        self.tokens = tokens
        self.clock = clock
        self.prompts: list[str] = []
        self.max_tokens: list[int] = []

    def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        model: str | None,
        max_tokens: int,
        timeout_s: float,
        on_delta: object = None,
    ) -> Completion:
        self.prompts.append(messages[-1].content)
        self.max_tokens.append(max_tokens)
        if self.clock is not None:
            self.clock.advance(1.0)
        answer = self.answers.pop(0) if self.answers else "done"
        return Completion(
            text=answer, prompt_tokens=self.tokens, completion_tokens=self.tokens, model="scripted"
        )


def _run(
    provider: object, *, budget: int = 20_000, deadline_s: float = 60, clock=SYSTEM_CLOCK, stop=lambda: False
) -> AgentRun:
    return AgentRun(
        get_agent("research_agent"),
        "Compare three vendors",
        provider=provider,  # type: ignore[arg-type]
        deadline=Deadline.after_ms(clock, int(deadline_s * 1000)),
        token_budget=budget,
        should_stop=stop,
    )


def test_at_least_three_agent_types_with_distinct_prompts():
    assert len(AGENT_TYPES) >= 3
    assert len({agent.system_prompt for agent in AGENT_TYPES.values()}) == len(AGENT_TYPES)
    with pytest.raises(UnknownAgent):
        get_agent("nope")


def test_a_run_plans_executes_each_step_with_previous_outputs_and_sums_tokens():
    provider = ScriptedProvider(
        ['["find prices", "compare"]', "prices found", "comparison made", "final answer"]
    )
    run = _run(provider)
    assert run.run() == "final answer"
    assert run.calls == 4
    assert run.tokens_used == 4 * 20
    assert "prices found" in provider.prompts[2]  # step 2 sees step 1's output
    assert "comparison made" in provider.prompts[3]


def test_a_plan_that_is_not_json_still_runs_and_an_empty_result_is_not_a_crash():
    provider = ScriptedProvider(["I would first look around.", "looked", ""])
    run = _run(provider)
    result = run.run()
    assert "looked" in result  # the findings stand in for an empty final answer
    assert run.calls == 3


def test_the_token_budget_stops_further_steps():
    provider = ScriptedProvider(['["a", "b", "c", "d", "e"]'], tokens=100)
    run = _run(provider, budget=500)
    run.run()
    assert run.tokens_used <= 500 + 200  # the final call may finish what was started
    assert run.calls < 7


def test_the_deadline_is_checked_before_each_call():
    clock = FrozenClock(datetime(2026, 1, 1, tzinfo=UTC))
    provider = ScriptedProvider(['["a", "b", "c"]', "x", "y", "z", "final"], clock=clock)
    run = _run(provider, deadline_s=2.5, clock=clock)
    with pytest.raises(RunTimeout):
        run.run()
    assert run.calls == 3
    assert run.tokens_used == 60  # what was spent stays known for the charge


def test_a_stop_request_cancels_before_the_next_call():
    calls = []
    provider = ScriptedProvider(['["a", "b"]', "x", "y", "z"])
    run = _run(provider, stop=lambda: len(calls.append(1) or calls) > 2)
    with pytest.raises(RunCancelled):
        run.run()
    assert run.calls == 2


def test_the_offline_provider_is_deterministic_and_says_it_called_no_model():
    first, second = _run(OfflineProvider()), _run(OfflineProvider())
    result = first.run()
    assert result == second.run()
    assert "offline provider" in result
    assert "no model was called" in result
    assert first.tokens_used == second.tokens_used > 0


def test_a_resumed_run_reuses_every_completed_step_and_calls_only_for_the_rest():
    journal = MemoryJournal(outputs={0: '["a", "b", "c"]', 1: "out a", 2: "out b"})
    provider = ScriptedProvider(["out c", "final"])
    run = AgentRun(
        get_agent("research_agent"),
        "Compare three vendors",
        provider=provider,  # type: ignore[arg-type]
        deadline=Deadline.after_ms(SYSTEM_CLOCK, 60_000),
        token_budget=20_000,
        journal=journal,
    )
    assert run.run() == "final"
    assert (run.calls, run.replayed) == (2, 3)
    assert journal.started == [3, 4]  # step c (index 3), then the final call (index 4)
    assert "Now do step 3 of 3: c" in provider.prompts[0]
    assert "out a" in provider.prompts[0]  # earlier outputs are fed on
    assert "out b" in provider.prompts[0]
    assert "out c" in provider.prompts[1]
    assert run.tokens_used == 2 * 20  # replayed steps were paid for by the attempt that made them


def test_before_call_hooks_see_each_call_and_can_stop_the_attempt():
    seen: list[tuple[int, str, int]] = []

    def hook(call: ModelCall) -> None:
        seen.append((call.index, call.kind, call.max_tokens))
        if call.kind == "final":
            raise RunTimeout("no room left")

    provider = ScriptedProvider(['["a"]', "x", "never"])
    run = AgentRun(
        get_agent("research_agent"),
        "goal",
        provider=provider,  # type: ignore[arg-type]
        deadline=Deadline.after_ms(SYSTEM_CLOCK, 60_000),
        token_budget=20_000,
        before_call=[hook],
    )
    with pytest.raises(RunTimeout):
        run.run()
    assert [(i, k) for i, k, _ in seen] == [(0, "plan"), (1, "step"), (2, "final")]
    assert run.calls == 2


def test_the_offline_provider_streams_its_answer_word_by_word():
    pieces: list[str] = []
    completion = OfflineProvider().complete(
        [ChatMessage("user", "Goal: x\n\nNow do step 1 of 1: look")],
        model=None,
        max_tokens=100,
        timeout_s=5,
        on_delta=pieces.append,
    )
    assert len(pieces) > 3
    assert "".join(pieces) == completion.text
