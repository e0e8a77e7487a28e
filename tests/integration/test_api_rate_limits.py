"""Our API's rate limits: one Redis budget across API processes, 429 with Retry-After and RateLimit-*."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from api.rate_limit import budget_for


@pytest.fixture
def two_apis(settings) -> Iterator[tuple[TestClient, TestClient]]:  # type: ignore[type-arg]
    """Two API instances (as two processes would be) on the same Redis, with small budgets."""
    from api.app import create_app

    limited = settings.model_copy(update={"api_rate_limit": 5, "cron_rate_limit": 3})
    with TestClient(create_app(limited)) as one, TestClient(create_app(limited)) as two:
        yield one, two


def _cron(settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {settings.cron_secret.get_secret_value()}"}


def test_an_api_key_has_one_budget_across_two_api_instances(two_apis, make_account):
    one, two = two_apis
    account = make_account()
    answers = [(one if i % 2 else two).get("/api/me", headers=account.headers) for i in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert [a.headers["RateLimit-Remaining"] for a in answers] == ["4", "3", "2", "1", "0"]
    assert answers[0].headers["RateLimit-Limit"] == "5"
    assert answers[0].headers["RateLimit-Policy"] == "5;w=60"
    over = one.get("/api/me", headers=account.headers)
    assert over.status_code == 429
    assert over.json()["error"] == "rate_limited"
    assert 1 <= int(over.headers["Retry-After"]) <= 60
    assert over.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(over.headers["RateLimit-Reset"]) <= 60
    assert two.get("/api/me", headers=account.headers).status_code == 429
    # Another key has its own budget.
    assert two.get("/api/me", headers=make_account().headers).status_code == 200


def test_the_cron_and_queue_endpoints_are_limited_per_client_address(two_apis, settings):
    one, two = two_apis
    statuses = [
        one.get("/api/cron/check-scheduled-tasks", headers=_cron(settings)).status_code,
        two.get("/api/queue/stats", headers=_cron(settings)).status_code,
        one.post("/api/cron/check-scheduled-tasks", headers=_cron(settings)).status_code,
        two.get("/api/queue/stats", headers=_cron(settings)).status_code,
    ]
    assert statuses == [200, 200, 200, 429]
    # Without the secret too: an attacker guessing it is limited the same way.
    assert one.get("/api/cron/check-scheduled-tasks").status_code == 429


def test_health_and_metrics_are_exempt(two_apis):
    one, two = two_apis
    for client in (one, two) * 5:
        response = client.get("/api/health")
        assert response.status_code in (200, 503)
        assert "RateLimit-Limit" not in response.headers
    assert all(one.get("/metrics").status_code == 200 for _ in range(8))


def test_which_budget_a_request_counts_against(settings):
    def scope(path: str, token: str | None = None) -> dict[str, object]:
        headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
        return {"type": "http", "path": path, "client": ("10.0.0.7", 5555), "headers": headers}

    assert budget_for(scope("/api/health"), settings) is None  # type: ignore[arg-type]
    assert budget_for(scope("/metrics"), settings) is None  # type: ignore[arg-type]
    cron = budget_for(scope("/api/cron/check-scheduled-tasks", "s"), settings)  # type: ignore[arg-type]
    assert cron is not None
    assert (cron.group, cron.identity, cron.limit) == ("cron", "10.0.0.7", 60)
    keyed = budget_for(scope("/api/tasks", "ask_abc"), settings)  # type: ignore[arg-type]
    assert keyed is not None
    assert keyed.group == "key"
    assert keyed.limit == 600
    assert "ask_abc" not in keyed.identity
    anonymous = budget_for(scope("/api/tasks"), settings)  # type: ignore[arg-type]
    assert anonymous is not None
    assert (anonymous.group, anonymous.identity) == ("addr", "10.0.0.7")
    off = settings.model_copy(update={"api_rate_limit": 0})
    assert budget_for(scope("/api/tasks", "k"), off) is None  # type: ignore[arg-type]
