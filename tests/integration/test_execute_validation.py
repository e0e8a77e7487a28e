"""Bad input to POST /api/agent/execute: 400 naming each offending field, nothing written."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.models import Task, TaskRun

VALID = {
    "goal": "Check competitor pricing and send report",
    "agentType": "research_agent",
    "async": True,
}


def _with(**changes: object) -> dict[str, object]:
    body = dict(VALID)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return body


_DROP = object()

CASES = [
    ("missing goal", _with(goal=_DROP), {"goal"}),
    ("empty goal", _with(goal="   "), {"goal"}),
    ("oversize goal", _with(goal="x" * 20_001), {"goal"}),
    ("goal not a string", _with(goal=42), {"goal"}),
    ("unknown agent type", _with(agentType="wizard_agent"), {"agentType"}),
    ("missing agent type", _with(agentType=_DROP), {"agentType"}),
    ("bad priority", _with(priority="critical"), {"priority"}),
    ("priority wrong type", _with(priority=1), {"priority"}),
    ("async not a bool", _with(**{"async": "yes"}), {"async"}),
    ("timeout too small", _with(agentConfig={"timeout": 999}), {"agentConfig.timeout"}),
    ("timeout too large", _with(agentConfig={"timeout": 3_600_001}), {"agentConfig.timeout"}),
    ("timeout a string", _with(agentConfig={"timeout": "300000"}), {"agentConfig.timeout"}),
    ("maxRetries negative", _with(agentConfig={"maxRetries": -1}), {"agentConfig.maxRetries"}),
    ("maxRetries too many", _with(agentConfig={"maxRetries": 11}), {"agentConfig.maxRetries"}),
    ("maxRetries a bool", _with(agentConfig={"maxRetries": True}), {"agentConfig.maxRetries"}),
    ("agentConfig not an object", _with(agentConfig=[1]), {"agentConfig"}),
    ("unknown top-level field", _with(goals="typo"), {"goals"}),
    ("unknown agentConfig field", _with(agentConfig={"retries": 2}), {"agentConfig.retries"}),
    ("schedule not an object", _with(schedule="daily"), {"schedule"}),
    (
        "schedule unknown field",
        _with(schedule={"cron": "0 9 * * *", "every": 1}),
        {"schedule.every"},
    ),
    (
        "several fields at once",
        {"goal": "", "agentType": "nope", "priority": "x", "agentConfig": {"timeout": 1}},
        {"goal", "agentType", "priority", "agentConfig.timeout"},
    ),
]


def _counts(session_factory: sessionmaker[Session]) -> tuple[int, int]:
    with session_factory() as session:
        return (
            session.scalar(select(func.count()).select_from(Task)) or 0,
            session.scalar(select(func.count()).select_from(TaskRun)) or 0,
        )


@pytest.mark.parametrize(("name", "body", "fields"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_answers_400_naming_each_field_and_writes_nothing(
    client, make_account, session_factory, name, body, fields
):
    account = make_account()
    response = client.post("/api/agent/execute", json=body, headers=account.headers)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert set(answer["fields"]) == fields
    assert _counts(session_factory) == (0, 0)


def test_unknown_agent_type_message_lists_the_valid_ones(client, make_account):
    response = client.post(
        "/api/agent/execute", json=_with(agentType="wizard"), headers=make_account().headers
    )
    message = response.json()["fields"]["agentType"]
    for name in ("research_agent", "writer_agent", "data_agent"):
        assert name in message


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b'{"goal": "x", "agentType": "research_agent",}',
        b"[1, 2]",
        b'"just a string"',
        b"",
    ],
)
def test_malformed_or_non_object_json_is_a_400_naming_the_body(client, make_account, session_factory, raw):
    response = client.post(
        "/api/agent/execute",
        content=raw,
        headers={**make_account().headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert "body" in response.json()["fields"]
    assert _counts(session_factory) == (0, 0)


def test_no_or_wrong_api_key_is_401_and_writes_nothing(client, make_account, session_factory):
    make_account()
    assert client.post("/api/agent/execute", json=VALID).status_code == 401
    wrong = client.post("/api/agent/execute", json=VALID, headers={"Authorization": "Bearer ask_wrong"})
    assert wrong.status_code == 401
    assert _counts(session_factory) == (0, 0)


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [
        ("POST", "/api/agent/execute", b"{not json"),
        ("POST", "/api/agent/execute", b""),
        ("PATCH", "/api/tasks/00000000-0000-0000-0000-000000000000", b"[1,"),
        ("POST", "/api/keys", b"{"),
        ("GET", "/api/tasks?limit=0&status=bogus", None),
        ("GET", "/api/schedules/preview?cron=nonsense", None),
    ],
)
@pytest.mark.parametrize("authorization", [None, "Bearer ask_wrong"])
def test_credentials_are_checked_before_the_input(
    client, session_factory, method, path, content, authorization
):
    """CONTRACT "HTTP API": missing or wrong credentials are a 401 even when the input is bad too."""
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = client.request(method, path, content=content, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert _counts(session_factory) == (0, 0)
