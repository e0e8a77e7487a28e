"""Cron time maths against the shared vector file (tests/data/cron-vectors.json)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from tests.support.cron import fires, utc, utcs


def _vector_file() -> Path | None:
    # tests/data/cron-vectors.json is the contract's vector file, copied in; CRON_VECTORS may name another.
    candidates = [
        os.environ.get("CRON_VECTORS", ""),
        str(Path(__file__).resolve().parents[1] / "data" / "cron-vectors.json"),
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def _vector_cases() -> list[Any]:
    path = _vector_file()
    if path is None:
        return [pytest.param(None, id="vectors-missing")]
    cases = json.loads(path.read_text())
    return [pytest.param(case, id=f"{case['id']}-{case['expr']}-{case['tz']}") for case in cases]


def _accepted_readings(case: dict[str, Any]) -> list[list[datetime]]:
    """`next`; for a case marked `contested`, also either day-field reading (OR and AND)."""
    readings = [utcs(*case["next"])]
    if case.get("contested"):
        zone = ZoneInfo(case["tz"])
        for day_or in (True, False):
            it = croniter(case["expr"], utc(case["start_utc"]).astimezone(zone), day_or=day_or)
            readings.append([it.get_next(datetime).astimezone(UTC) for _ in case["next"]])
    return readings


@pytest.mark.parametrize("case", _vector_cases())
def test_shared_vector(case: dict[str, Any] | None) -> None:
    if case is None:
        pytest.fail("tests/data/cron-vectors.json is missing")
    got = fires(case["expr"], case["tz"], case["start_utc"], len(case["next"]))
    assert got in _accepted_readings(case)
