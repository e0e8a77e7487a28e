"""Credit arithmetic and retry backoff: pure rules."""

from __future__ import annotations

import random
from datetime import UTC, date, datetime

import pytest

from app.services.credits import cost_of, month_of, used_this_month
from app.services.retry import backoff_ms


@pytest.mark.parametrize(
    ("tokens", "rate", "credits"),
    [
        (0, 1000, 0),
        (1, 1000, 1),
        (999, 1000, 1),
        (1000, 1000, 1),
        (1001, 1000, 2),
        (20_000, 1000, 20),
        (7, 3, 3),
    ],
)
def test_cost_is_tokens_over_rate_rounded_up_and_at_least_one(tokens, rate, credits):
    assert cost_of(tokens, rate) == credits


def test_credits_used_counts_only_the_current_utc_month():
    now = datetime(2026, 3, 1, 0, 0, 1, tzinfo=UTC)
    assert month_of(now) == date(2026, 3, 1)
    assert used_this_month(40, date(2026, 2, 1), now) == 0
    assert used_this_month(40, date(2026, 3, 1), now) == 40


def test_backoff_grows_exponentially_with_jitter_and_stops_at_the_cap():
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(60_000, 1_000 * 2 ** (attempt - 1))
        delays = [backoff_ms(attempt, min_ms=1_000, max_ms=60_000, rng=rng) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 50  # jittered, not a constant
    assert backoff_ms(50, min_ms=1_000, max_ms=60_000) <= 60_000
