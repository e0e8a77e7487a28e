"""The token-budget arithmetic: estimates, whether a call may start, the room kept for the final."""

from __future__ import annotations

import pytest

from app.agents.budget import (
    FINDINGS_ROOM_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    MIN_ANSWER_TOKENS,
    RunBudget,
    cut_to_tokens,
    estimate_prompt,
    estimate_tokens,
    final_keep,
    plan_budget,
)
from app.services.credits import charge_for, token_budget, tokens_over_budget


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("x" * 4_000, 1_000)],
)
def test_a_prompt_is_estimated_from_its_length(text, tokens):
    assert estimate_tokens(text) == tokens


def test_each_message_adds_its_overhead():
    assert estimate_prompt(["abcd", "abcdefgh"]) == 1 + 2 + 2 * MESSAGE_OVERHEAD_TOKENS


def test_cutting_to_a_number_of_tokens_keeps_the_estimate_within_it():
    text = "y" * 1_001
    for tokens in (0, 1, 10, 250, 251, 400):
        assert estimate_tokens(cut_to_tokens(text, tokens)) <= tokens
    assert cut_to_tokens(text, 400) == text
    assert cut_to_tokens(text, -5) == ""


def test_the_final_call_keeps_its_prompt_its_findings_and_its_answer():
    assert final_keep(20_000, 150, 1_024) == 150 + FINDINGS_ROOM_TOKENS + 1_024
    # A small budget keeps a quarter for findings and a quarter for the answer.
    assert final_keep(1_000, 100, 1_024) == 100 + 250 + 250
    # Never less than the smallest answer.
    assert final_keep(100, 10, 1_024) == 10 + 25 + MIN_ANSWER_TOKENS


def test_a_step_may_not_eat_into_the_room_kept_for_the_final_call():
    budget = RunBudget(total=10_000, keep_for_final=3_000, max_answer_tokens=1_024)
    assert budget.max_tokens(0, 500, final=False) == 1_024
    # 10,000 - 6,000 spent - 500 prompt - 3,000 kept = 500 tokens of answer at most.
    assert budget.max_tokens(6_000, 500, final=False) == 500
    assert budget.max_tokens(6_436, 500, final=False) == MIN_ANSWER_TOKENS
    assert budget.max_tokens(6_437, 500, final=False) is None
    # The final call may use what was kept.
    assert budget.max_tokens(6_437, 500, final=True) == 1_024
    assert budget.max_tokens(9_000, 500, final=True) == 500


def test_no_call_starts_that_the_remaining_budget_cannot_cover():
    budget = RunBudget(total=1_000, keep_for_final=600, max_answer_tokens=1_024)
    for spent in range(0, 1_200, 37):
        for prompt in (0, 50, 300, 900):
            for final in (False, True):
                max_tokens = budget.max_tokens(spent, prompt, final=final)
                if max_tokens is not None:
                    kept = 0 if final else budget.keep_for_final
                    assert spent + prompt + max_tokens + kept <= budget.total
                    assert max_tokens >= MIN_ANSWER_TOKENS


def test_the_findings_are_given_what_leaves_the_final_answer_its_room():
    budget = plan_budget(2_000, ["s" * 200, "g" * 200], 1_024)
    skeleton = estimate_prompt(["s" * 200, "g" * 200])
    assert budget.keep_for_final == skeleton + 500 + 500
    room = budget.findings_room(800, skeleton)
    assert room == 2_000 - 800 - skeleton - 500
    answer = budget.max_tokens(800, skeleton + room, final=True)
    assert answer == 500
    assert budget.findings_room(1_990, skeleton) == 0


def test_a_runs_token_budget_shrinks_to_what_it_holds():
    assert token_budget(20, 20_000, 1_000) == 20_000
    assert token_budget(19, 20_000, 1_000) == 19_000
    assert token_budget(1, 20_000, 1_000) == 1_000
    assert token_budget(21, 20_500, 1_000) == 20_500


def test_a_charge_is_capped_at_the_reservation_and_the_excess_recorded():
    # The provider: 10,000 prompt tokens a call, two calls made on a 20-credit hold.
    assert charge_for(20_014, 1_000, 20) == 20
    assert tokens_over_budget(20_014, 20 * 1_000) == 14
    assert tokens_over_budget(19_999, 20 * 1_000) == 0
    assert charge_for(19_001, 1_000, 19) == 19
