"""Parse five-field cron text into lookup tables; the accepted syntax is defined here.

Syntax: ``minute hour day-of-month month day-of-week``; each field is a comma list of ``*``,
``N``, ``A-B``, ``*/S``, ``A-B/S`` or ``A/S`` (A to the field maximum). Months ``JAN``-``DEC``
and days ``SUN``-``SAT`` may be used by name (any case); 0 and 7 are both Sunday. As in Vixie
cron, a day-of-week range may end on Sunday written as 0 (``SAT-SUN`` and ``5-0`` mean 6-7 and
5-7), ``SUN-SUN`` is Sunday alone, and a range that wraps past Sunday (``FRI-MON``) is refused
with the two ranges to write instead. The macros
``@yearly @annually @monthly @weekly @daily @midnight @hourly`` stand for their usual five
fields. Day matching follows Vixie cron: if either day field starts with ``*`` a day must match
both fields, otherwise (both restricted) it matches when either matches, so ``0 0 1,15 * MON``
fires on the 1st, the 15th and every Monday. Anything else (seconds fields, ``@reboot``,
``L``/``W``/``#``/``?``, out-of-range values, expressions that can never fire) is rejected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from app.errors import InvalidCronExpression

MAX_EXPRESSION_LENGTH = 200
_CRON_FIELD = "schedule.cron"
_NUMBER = re.compile(r"[0-9]{1,4}")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_MONTH_NAMES = {name: i for i, name in enumerate(_MONTHS, 1)}
_DAY_NAMES = {name: i for i, name in enumerate(("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))}
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, low, high, names) in field order.
_FIELDS: tuple[tuple[str, int, int, Mapping[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, _MONTH_NAMES),
    ("day-of-week", 0, 7, _DAY_NAMES),
)
_MAX_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # index = month, leap February


def invalid_expression(message: str) -> InvalidCronExpression:
    """The error for a bad cron expression, keyed to the request field it came from."""
    return InvalidCronExpression({_CRON_FIELD: message})


def _next_table(values: frozenset[int], high: int) -> tuple[int, ...]:
    """``table[x]`` = smallest value >= x, or -1; indexes 0..high+1."""
    return tuple(min((v for v in values if v >= x), default=-1) for x in range(high + 2))


def _prev_table(values: frozenset[int], high: int) -> tuple[int, ...]:
    """``table[x]`` = largest value <= x, or -1; indexes 0..high."""
    return tuple(max((v for v in values if v <= x), default=-1) for x in range(high + 1))


@dataclass(frozen=True, slots=True)
class Spec:
    """A parsed expression as lookup tables, so searches skip by field instead of by minute."""

    next_minute: tuple[int, ...]
    prev_minute: tuple[int, ...]
    next_hour: tuple[int, ...]
    prev_hour: tuple[int, ...]
    next_month: tuple[int, ...]
    prev_month: tuple[int, ...]
    dom_mask: int
    dow_mask: int
    next_dom: tuple[int, ...]
    prev_dom: tuple[int, ...]
    days_and: bool  # Vixie: a day field starting with "*" makes the day test an AND
    dom_only: bool  # every weekday allowed under AND: the day-of-month tables decide
    every_hour: bool  # gap slots are absent rather than moved to the end of the gap


def _parse_value(token: str, name: str, low: int, high: int, names: Mapping[str, int]) -> int:
    if _NUMBER.fullmatch(token):
        value = int(token)
    elif token.upper() in names:
        return names[token.upper()]
    else:
        hint = f" (or a name such as {next(iter(names))})" if names else ""
        raise invalid_expression(f"{name} value '{token}' is not a number {low}-{high}{hint}")
    if not low <= value <= high:
        raise invalid_expression(f"{name} value {value} out of range {low}-{high}")
    return value


def _backwards(name: str, span: str, start: int, first: str, last: str) -> str:
    if name != "day-of-week":
        return f"{name} range '{span}' runs backwards"
    # Vixie cron rejects a range that wraps past Sunday too; say how to write it instead.
    saturday, sunday = ("6", "0") if _NUMBER.fullmatch(first) else ("SAT", "SUN")
    head = {7: "", 6: f"{first},"}.get(start, f"{first}-{saturday},")
    return (
        f"day-of-week range '{span}' wraps past Sunday, which cron does not allow; "
        f"write it as '{head}{sunday}-{last}'"
    )


def _parse_field(text: str, name: str, low: int, high: int, names: Mapping[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise invalid_expression(f"{name} field '{text}' has an empty list item")
        span, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text) or int(step_text) < 1:
                raise invalid_expression(f"{name} step '{step_text}' in '{part}' must be a whole number >= 1")
            step = int(step_text)
        if span == "*":
            start, end = low, high
        elif "-" in span:
            first, _, last = span.partition("-")
            start = _parse_value(first, name, low, high, names)
            end = _parse_value(last, name, low, high, names)
            if name == "day-of-week" and end == 0 and start > 0:
                end = 7  # as Vixie cron: a range may end on Sunday as 0 (FRI-SUN, 5-0 = 5-7)
            if start > end:
                raise invalid_expression(_backwards(name, span, start, first, last))
        else:
            start = _parse_value(span, name, low, high, names)
            end = high if slash else start
        values.update(range(start, end + 1, step))
    return frozenset(values)


def parse_spec(expr: str) -> Spec:
    """Validate ``expr`` (timezone aside) and build its lookup tables."""
    if not expr.strip():
        raise invalid_expression("cron expression is empty")
    if len(expr) > MAX_EXPRESSION_LENGTH:
        raise invalid_expression(f"cron expression is {len(expr)} characters, at most 200 allowed")
    text = expr.strip()
    if text.startswith("@"):
        if text.lower() == "@reboot":
            raise invalid_expression("@reboot is not supported; only time-based schedules are")
        if text.lower() not in _MACROS:
            raise invalid_expression(f"unknown macro '{text}'; known: {', '.join(_MACROS)}")
        text = _MACROS[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        extra = " (a seconds or year field is not supported)" if len(parts) in (6, 7) else ""
        raise invalid_expression(
            f"expected 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}{extra}"
        )
    minutes, hours, doms, months, dows = (
        _parse_field(part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)
    )
    dows = frozenset(d % 7 for d in dows)
    days_and = parts[2].startswith("*") or parts[4].startswith("*")
    # With AND days, a (month, day-of-month) pair must exist; every date then falls on every
    # weekday sooner or later. With OR days, any weekday in any month matches.
    if days_and and not any(d <= _MAX_DAYS[m] for m in months for d in doms):
        raise invalid_expression(
            f"expression never fires: day-of-month {','.join(map(str, sorted(doms)))} "
            f"does not occur in month {','.join(map(str, sorted(months)))}"
        )
    return Spec(
        next_minute=_next_table(minutes, 59),
        prev_minute=_prev_table(minutes, 59),
        next_hour=_next_table(hours, 23),
        prev_hour=_prev_table(hours, 23),
        next_month=_next_table(months, 12),
        prev_month=_prev_table(months, 12),
        dom_mask=sum(1 << d for d in doms),
        dow_mask=sum(1 << d for d in dows),
        next_dom=_next_table(doms, 31),
        prev_dom=_prev_table(doms, 31),
        days_and=days_and,
        dom_only=days_and and len(dows) == 7,
        every_hour=len(hours) == 24,
    )
