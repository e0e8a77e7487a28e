"""Reading Postgres plans (EXPLAIN (FORMAT JSON)) in tests of what the planner chooses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def scans(plan: Any) -> Iterator[dict[str, Any]]:
    """Every scan node of a relation in the plan, at any depth."""
    if isinstance(plan, dict):
        if "Relation Name" in plan and "Scan" in plan["Node Type"]:
            yield plan
        for value in plan.values():
            yield from scans(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from scans(item)
