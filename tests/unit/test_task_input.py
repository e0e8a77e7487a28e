"""Validation of task requests and the agent plan parser."""

from __future__ import annotations

import pytest

from app.agents.runtime import parse_plan
from app.errors import InvalidInput
from app.services.task_input import parse_execute_request


def test_defaults_are_applied():
    request = parse_execute_request(
        {"goal": " Check pricing ", "agentType": "research_agent"}, default_timezone="UTC"
    )
    assert request.goal == "Check pricing"
    assert request.title == "Check pricing"
    assert request.priority == "medium"
    assert request.wait is True
    assert request.agent_config == {"timeout": 300_000, "maxRetries": 3}
    assert request.schedule is None


def test_a_schedule_without_timezone_takes_the_default():
    request = parse_execute_request(
        {"goal": "g", "agentType": "research_agent", "schedule": {"cron": "0 9 * * *"}},
        default_timezone="Europe/Paris",
    )
    assert request.schedule is not None
    assert request.schedule.timezone == "Europe/Paris"
    assert request.schedule.enabled is True


def test_a_bad_cron_expression_names_the_schedule_field():
    with pytest.raises(InvalidInput) as caught:
        parse_execute_request(
            {
                "goal": "g",
                "agentType": "research_agent",
                "schedule": {"cron": "61 * * * *", "timezone": "UTC"},
            },
            default_timezone="UTC",
        )
    assert set(caught.value.fields) == {"schedule.cron"}


def test_a_bad_timezone_names_the_schedule_field():
    with pytest.raises(InvalidInput) as caught:
        parse_execute_request(
            {
                "goal": "g",
                "agentType": "research_agent",
                "schedule": {"cron": "0 9 * * *", "timezone": "Mars/Base"},
            },
            default_timezone="UTC",
        )
    assert set(caught.value.fields) == {"schedule.timezone"}


@pytest.mark.parametrize(
    ("answer", "steps"),
    [
        ('["a", "b"]', ["a", "b"]),
        ('```json\n["a", "b"]\n```', ["a", "b"]),
        ('{"steps": ["x"]}', ["x"]),
        ("1. first\n2. second\n", ["first", "second"]),
        ("- only one", ["only one"]),
        ("", []),
        ("[1, 2, 3, 4, 5, 6, 7]", ["1", "2", "3", "4", "5"]),
    ],
)
def test_a_plan_is_read_from_json_or_falls_back_to_lines(answer, steps):
    assert parse_plan(answer, max_steps=5) == steps


def test_a_waiting_request_waits_for_its_timeout_but_never_more_than_a_minute():
    def wait_for(timeout_ms: int) -> float:
        body = {"goal": "g", "agentType": "research_agent", "agentConfig": {"timeout": timeout_ms}}
        return parse_execute_request(body, default_timezone="UTC").wait_s

    assert wait_for(5_000) == 5.0
    assert wait_for(3_600_000) == 60.0
