"""Query parameters checked by the domain, as types Litestar validates with every other one.

A parameter typed `CronParam` (or `TimezoneParam`, `AfterParam`) is decoded by
`PARAM_DECODERS`; a bad value fails like a bad integer does, so one 400 names every offending
parameter at once (a bad cron and a bad timezone and a bad count).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.cron import parse_schedule, validate_timezone
from app.errors import InvalidInput
from app.services.schedules import parse_preview_after


class CronParam(str):
    """A cron expression that `app.cron` parses."""

    __slots__ = ()


class TimezoneParam(str):
    """An IANA timezone name."""

    __slots__ = ()


class AfterParam(str):
    """An ISO 8601 instant within the preview bounds."""

    __slots__ = ()


def _checked(kind: type[str], check: Callable[[str], object]) -> Callable[[Any, Any], str]:
    def decode(_: Any, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError("must be a string")
        try:
            check(value)
        except InvalidInput as exc:
            # msgspec reports a decoder's ValueError under the parameter's name; Litestar keeps
            # the text before " - ", so the message must not contain one.
            raise ValueError("; ".join(exc.fields.values()).replace(" - ", ", ")) from None
        return kind(value)

    return decode


PARAM_DECODERS: list[tuple[Callable[[Any], bool], Callable[[Any, Any], Any]]] = [
    (lambda kind: kind is CronParam, _checked(CronParam, lambda text: parse_schedule(text.strip(), "UTC"))),
    (lambda kind: kind is TimezoneParam, _checked(TimezoneParam, validate_timezone)),
    (lambda kind: kind is AfterParam, _checked(AfterParam, parse_preview_after)),
]
