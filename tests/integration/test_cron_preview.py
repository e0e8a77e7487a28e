"""Day-of-week ranges through the API: the preview and a task's schedule name the same days."""

from __future__ import annotations

from datetime import datetime

import pytest

WEEKEND = {"Sat", "Sun"}


def _days(runs: list[str]) -> list[str]:
    return [datetime.fromisoformat(run.replace("Z", "+00:00")).strftime("%a") for run in runs]


@pytest.mark.parametrize(
    ("dow", "days"),
    [
        ("SUN-SUN", {"Sun"}),
        ("0-SUN", {"Sun"}),
        ("7-7", {"Sun"}),
        ("SAT-SUN", WEEKEND),
        ("5-0", {"Fri", *WEEKEND}),
    ],
)
def test_the_preview_fires_only_on_the_days_a_range_names(client, make_account, dow, days):
    response = client.get(
        "/api/schedules/preview",
        params={"cron": f"0 9 * * {dow}", "timezone": "UTC", "count": 9, "after": "2026-01-05T00:00:00Z"},
        headers=make_account().headers,
    )
    assert response.status_code == 200, response.text
    assert set(_days(response.json()["runs"])) == days


def test_a_range_that_wraps_past_sunday_is_a_400_that_says_so(client, make_account):
    headers = make_account().headers
    response = client.get(
        "/api/schedules/preview", params={"cron": "0 9 * * FRI-MON", "timezone": "UTC"}, headers=headers
    )
    assert response.status_code == 400
    assert "wraps past Sunday" in response.json()["fields"]["cron"]
    assert "'FRI-SAT,SUN-MON'" in response.json()["fields"]["cron"]

    created = client.post(
        "/api/agent/execute",
        json={
            "goal": "Weekend report",
            "agentType": "writer_agent",
            "schedule": {"enabled": True, "cron": "0 9 * * FRI-MON", "timezone": "UTC"},
        },
        headers=headers,
    )
    assert created.status_code == 400
    assert "wraps past Sunday" in created.json()["fields"]["schedule.cron"]


def test_a_task_on_sat_sun_is_next_due_on_a_weekend(client, make_account):
    created = client.post(
        "/api/agent/execute",
        json={
            "goal": "Weekend report",
            "agentType": "writer_agent",
            "schedule": {"enabled": True, "cron": "0 9 * * SAT-SUN", "timezone": "UTC"},
        },
        headers=make_account().headers,
    )
    assert created.status_code == 201, created.text
    assert _days([created.json()["nextRunAt"]]) in (["Sat"], ["Sun"])
