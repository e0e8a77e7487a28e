"""No 500s from input: hostile bodies and parameters answer 400 (or 413, or 2xx), naming the field."""

from __future__ import annotations

import json
import random
import uuid

import pytest

VALID = {"goal": "Check competitor pricing", "agentType": "research_agent", "async": True}
SCHEDULED = {
    "goal": "Daily report",
    "agentType": "writer_agent",
    "schedule": {"enabled": True, "cron": "0 9 * * *", "timezone": "UTC"},
}


def _raw(client, method, path, body: bytes, headers):
    return client.request(method, path, content=body, headers={**headers, "Content-Type": "application/json"})


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({**VALID, "goal": "a\u0000b"}, {"goal"}),
        ({**VALID, "title": "t\u0000"}, {"title"}),
        ({**VALID, "agentConfig": {"model": "gpt\u0000"}}, {"agentConfig.model"}),
        (
            {**VALID, "goal": "", "schedule": {"cron": "0 9 * * *", "timezone": "Mars/Base"}},
            {"goal", "schedule.timezone"},
        ),
        (
            {**VALID, "schedule": {"cron": "61 * * * *", "timezone": "Mars/Base"}},
            {"schedule.cron", "schedule.timezone"},
        ),
        (
            {**VALID, "goal": 5, "agentType": "x", "priority": 1, "async": "no", "extra": 1},
            {"goal", "agentType", "priority", "async", "extra"},
        ),
    ],
)
def test_execute_names_every_bad_field_at_once(client, make_account, body, fields):
    answer = client.post("/api/agent/execute", json=body, headers=make_account().headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_input"
    assert set(answer.json()["fields"]) == fields


def test_a_nul_in_a_patch_is_a_400_naming_the_field(client, make_account):
    account = make_account()
    task_id = client.post("/api/agent/execute", json=SCHEDULED, headers=account.headers).json()["taskId"]
    answer = client.patch(f"/api/tasks/{task_id}", json={"title": "x\u0000y"}, headers=account.headers)
    assert answer.status_code == 400
    assert set(answer.json()["fields"]) == {"title"}
    both = client.patch(
        f"/api/tasks/{task_id}",
        json={"schedule": {"cron": "0 9 * *", "timezone": "Nowhere/City"}},
        headers=account.headers,
    )
    assert set(both.json()["fields"]) == {"schedule.cron", "schedule.timezone"}


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[" * 1000 + b"]" * 1000, "64 levels"),
        (b'{"goal": ' + b"[" * 70 + b"]" * 70 + b"}", "64 levels"),
        (b'{"goal": "\\ud800", "agentType": "research_agent"}', "lone UTF-16 surrogate"),
        (b'{"goal": "\\udc00x"}', "lone UTF-16 surrogate"),
        (b'{"goal": "\\x"}', "invalid escape"),
        (b'{"goal": "a\x01b"}', "control characters"),
        (b'{"goal": "\xff\xfe"}', "UTF-8"),
        (b'{"goal": "x"', "ends before it is complete"),
        (b"", "empty"),
    ],
)
def test_a_malformed_body_says_what_is_wrong(client, make_account, body, says):
    answer = _raw(client, "POST", "/api/agent/execute", body, make_account().headers)
    assert answer.status_code == 400
    assert says in answer.json()["fields"]["body"]


@pytest.mark.parametrize("after", ["9999-12-31T23:59:00Z", "0001-01-01T00:00:00Z", "9000-01-01T00:00:00Z"])
def test_preview_outside_the_calendar_is_a_400_on_after(client, make_account, after):
    answer = client.get(
        "/api/schedules/preview",
        params={"cron": "* * * * *", "timezone": "UTC", "after": after},
        headers=make_account().headers,
    )
    assert answer.status_code == 400
    assert set(answer.json()["fields"]) == {"after"}


def test_preview_of_the_rarest_expression_near_the_end_still_answers(client, make_account):
    answer = client.get(
        "/api/schedules/preview",
        params={
            "cron": "0 0 29 2 *",
            "timezone": "Pacific/Kiritimati",
            "after": "8999-12-31T23:59:00Z",
            "count": 100,
        },
        headers=make_account().headers,
    )
    assert answer.status_code == 200
    assert len(answer.json()["runs"]) == 100


# -- the fuzzer: 2,000 hostile bodies over execute and PATCH, seeded so a failure replays

NASTY_STRINGS = [
    "",
    " ",
    "\u0000",
    "a\u0000",
    "\u0001\u001f\u007f",
    "\ud7ff\ue000\uffff",
    "\U0010ffff",
    "' OR 1=1 --",
    "'; DROP TABLE tasks; --",
    "\\x00",
    "%00",
    "* * * * *",
    "*/0 * * * *",
    "61 * * * *",
    "0 0 31 2 *",
    "SUN-SUN * * * *",
    "0 9 * * 5-0",
    "@reboot",
    "Mars/Base",
    "../../etc/passwd",
    "UTC\u0000",
    "x" * 20_001,
    "é" * 300,
    "\U0001d518\U0001d52b\U0001d526",  # mathematical letters (astral plane)
    "<script>alert(1)</script>",
    "${jndi:ldap://x}",
    "null",
    "true",
    "1e999",
]
NASTY_NUMBERS = [
    0,
    -1,
    1,
    999,
    1_000,
    3_600_000,
    3_600_001,
    2**31,
    2**63,
    2**64 + 1,
    10**30,
    1.5,
    1e308,
    -0.0,
    1000.0,
]
FIELDS = ["goal", "agentType", "title", "priority", "async", "schedule", "agentConfig", "webhook", "zz", ""]
NESTED = ["schedule", "agentConfig", "webhook"]
SUBFIELDS = ["enabled", "cron", "timezone", "timeout", "maxRetries", "model", "url", "events", "x"]


def _value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return rng.choice(NASTY_STRINGS)
    if kind == 1:
        return rng.choice(NASTY_NUMBERS)
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(rng.randrange(1, 40)))
    if kind == 4:
        return rng.choice(
            ["research_agent", "urgent", "0 9 * * *", "America/New_York", "http://127.0.0.1:1/x"]
        )
    if kind == 5:
        return []
    if kind == 6:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {rng.choice(SUBFIELDS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return {"a": _value(rng, depth + 1)}


def _object(rng: random.Random) -> dict[str, object]:
    body: dict[str, object] = dict(VALID) if rng.random() < 0.3 else {}
    for _ in range(rng.randrange(1, 5)):
        name = rng.choice(FIELDS)
        if name in NESTED and rng.random() < 0.6:
            body[name] = {rng.choice(SUBFIELDS): _value(rng) for _ in range(rng.randrange(1, 4))}
        else:
            body[name] = _value(rng)
    return body


def _hostile_body(rng: random.Random, index: int) -> bytes:
    shape = 4 if index % 100 == 0 else rng.choice([0, 1, 2, 3, 5, 6, 7, 8, 9])
    if shape == 0:  # deep nesting
        depth = rng.choice([63, 65, 200, 5_000])
        return b'{"goal": ' + b"[" * depth + b"]" * depth + b"}"
    if shape == 1:  # invalid UTF-8 and broken escapes inside an otherwise good body
        junk = rng.choice(
            [
                b"\xff",
                b"\xc3\x28",
                b"\xed\xa0\x80",
                b"\\ud800",
                b"\\udfff",
                b"\\u12",
                b"\\q",
                b"\x00",
                b"\x1b",
            ]
        )
        return b'{"goal": "pre' + junk + b'post", "agentType": "research_agent"}'
    if shape == 2:  # truncated or not JSON at all
        text = json.dumps(_object(rng)).encode()
        return text[: rng.randrange(len(text))]
    if shape == 3:  # top-level non-objects
        return json.dumps(rng.choice([[], [1], "goal", 1, None, True, [VALID]])).encode()
    if shape == 4:  # huge value (under the 10 MB body limit) or many keys; costly, so 1 in 100
        if rng.random() < 0.5:
            return json.dumps({**VALID, "goal": "g" * rng.choice([20_000, 20_001, 1_000_000])}).encode()
        return json.dumps({f"k{i}": i for i in range(20_000)}).encode()
    return json.dumps(_object(rng)).encode()


@pytest.fixture
def unlimited_client(settings):
    """The API without its per-key rate limit (2,000 requests in a few seconds are the point)."""
    from litestar.testing import TestClient

    from api.app import create_app

    with TestClient(create_app(settings.model_copy(update={"api_rate_limit": 0}))) as test_client:
        yield test_client


def test_two_thousand_hostile_bodies_never_get_a_5xx(unlimited_client, make_account):
    client = unlimited_client
    account = make_account()
    task_id = client.post("/api/agent/execute", json=SCHEDULED, headers=account.headers).json()["taskId"]
    rng = random.Random(20261201)
    statuses: dict[int, int] = {}
    for index in range(2_000):
        body = _hostile_body(rng, index)
        if index % 2:
            answer = _raw(client, "PATCH", f"/api/tasks/{task_id}", body, account.headers)
        else:
            answer = _raw(client, "POST", "/api/agent/execute", body, account.headers)
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        assert answer.status_code in (200, 201, 202, 400, 413), (index, body[:300], answer.text[:300])
        if answer.status_code == 400:
            error = answer.json()
            assert error["error"] == "invalid_input", error
            assert error["fields"], error
    assert statuses.get(400, 0) > 1_000, statuses  # mostly refused, as hostile input should be


def test_unknown_ids_and_bad_paths_are_404s_not_500s(client, make_account):
    headers = make_account().headers
    for path in (
        f"/api/tasks/{uuid.uuid4()}",
        f"/api/runs/{uuid.uuid4()}",
        "/api/tasks/not-a-uuid",
        "/api/tasks/%00",
    ):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 404, path
        assert answer.json()["error"] == "not_found"


def test_a_body_over_ten_megabytes_is_a_413_in_our_body(client, make_account):
    body = b'{"goal": "' + b"x" * 10_000_001 + b'", "agentType": "research_agent"}'
    answer = _raw(client, "POST", "/api/agent/execute", body, make_account().headers)
    assert answer.status_code == 413
    assert answer.json()["error"] == "payload_too_large"
