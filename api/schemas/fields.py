"""Field types of the request schemas: each carries its rule into validation and into OpenAPI.

Text fields forbid NUL (`\\u0000`: Postgres cannot store it) through their pattern, so the rule
is in the document and a violation is named with every other bad field. Use these types for new
text fields too. A cron expression and a timezone are checked by the domain (`app.cron`); their
schemas say what they are (`format: cron`, an `enum` of IANA names).
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

from app.agents.registry import AGENT_TYPES, agent_names
from app.cron import known_timezones, parse_schedule, validate_timezone
from app.errors import InvalidInput
from app.services.task_input import GOAL_MAX_CHARS, MODEL_MAX_CHARS, TITLE_MAX_CHARS

#: Every character Python's `str.strip()` removes, listed so that each regex engine (Python's,
#: the Rust one pydantic uses, a client's ECMA one) reads "blank" the same way.
WHITESPACE = "".join(ch for ch in map(chr, range(sys.maxunicode + 1)) if ch.isspace())
#: Any text without NUL.
NO_NUL_PATTERN = "^[^\\x00]*$"
#: Text without NUL with at least one character that is not whitespace.
NOT_BLANK_PATTERN = f"^[^\\x00]*[^\\x00{WHITESPACE}][^\\x00]*$"
#: What a pattern mismatch means, for the error body.
PATTERN_PROBLEMS = {
    NO_NUL_PATTERN: "must not contain NUL (\\u0000) characters",
    NOT_BLANK_PATTERN: "must not be blank or contain NUL (\\u0000) characters",
}
CRON_MAX_CHARS = 200


def _domain_check(check: Any, value: str) -> str:
    """Run an `app` validator; its `InvalidInput` message becomes this field's error."""
    try:
        check(value)
    except InvalidInput as exc:
        message = "; ".join(exc.fields.values())
        raise PydanticCustomError("domain_rule", message) from None
    return value


def _check_cron(value: str) -> str:
    # The expression alone (its timezone is another field, checked on its own).
    return _domain_check(lambda text: parse_schedule(text.strip(), "UTC"), value)


def _check_timezone(value: str) -> str:
    return _domain_check(validate_timezone, value)


def _check_agent_type(value: str) -> str:
    if value not in AGENT_TYPES:
        raise PydanticCustomError("domain_rule", f"unknown agent type; valid: {', '.join(agent_names())}")
    return value


def _whole_number(value: Any) -> Any:
    # JSON Schema's `integer` includes 1540.0; strict validation would call it a float.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer, written as JSON writes it (`3` or `3.0`); booleans and fractions are refused.
WholeNumber = Annotated[int, BeforeValidator(_whole_number)]

GoalText = Annotated[
    str,
    StringConstraints(min_length=1, max_length=GOAL_MAX_CHARS, pattern=NOT_BLANK_PATTERN),
    Field(description="What the agent should do."),
]
OptionalTitleText = Annotated[
    str,
    StringConstraints(max_length=TITLE_MAX_CHARS, pattern=NO_NUL_PATTERN),
    Field(description="Defaults to the goal's first line when absent or blank."),
]
TitleText = Annotated[
    str, StringConstraints(min_length=1, max_length=TITLE_MAX_CHARS, pattern=NOT_BLANK_PATTERN)
]
ModelName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MODEL_MAX_CHARS, pattern=NOT_BLANK_PATTERN),
    Field(description="The provider's model name for this task's runs (default LLM_MODEL)."),
]
AgentTypeName = Annotated[
    str,
    AfterValidator(_check_agent_type),
    Field(json_schema_extra={"enum": list(agent_names())}),
]
CronExpression = Annotated[
    str,
    StringConstraints(min_length=1, max_length=CRON_MAX_CHARS),
    AfterValidator(_check_cron),
    Field(
        description="Five fields: minute hour day-of-month month day-of-week, e.g. `0 9 * * 1-5`.",
        json_schema_extra={"format": "cron", "examples": ["0 9 * * *"]},
    ),
]
TimezoneName = Annotated[
    str,
    AfterValidator(_check_timezone),
    Field(
        description="An IANA timezone name (default DEFAULT_TIMEZONE).",
        json_schema_extra={"enum": sorted(known_timezones())},
    ),
]
