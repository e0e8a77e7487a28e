"""Reading JSON bodies ourselves, so every malformed body is a 400 that says what is wrong.

`ApiRequest` is the application's request class: Litestar decodes a handler's `data` through
`Request.json()`, so every JSON body (typed or not) is read here, once.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.datastructures import State
from litestar.types import Empty

from app.errors import InvalidInput

#: Deepest nesting of arrays and objects a body may have (`{"a": [1]}` is 2 deep).
MAX_JSON_DEPTH = 64

_LONE_SURROGATE = re.compile(
    rb"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(?<![0-9a-fA-F]{2}\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether `value` nests arrays/objects more than `limit` levels deep (stops early)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _explain(body: bytes, exc: msgspec.DecodeError) -> str:
    """msgspec's message, made precise where it misleads (a lone surrogate reads as 'truncated')."""
    surrogate = _LONE_SURROGATE.search(body)
    if surrogate is not None:
        escape = surrogate.group().decode()[-6:]
        return (
            f"malformed JSON: {escape} at byte {surrogate.start()} is a lone UTF-16 surrogate; "
            "a \\ud800-\\udbff escape must be followed by a \\udc00-\\udfff one"
        )
    text = str(exc)
    if "invalid character" in text and "escape" not in text:
        text += " (control characters in strings must be escaped, e.g. \\n or \\u0001)"
    elif text == "Input data was truncated":
        text = "the JSON text ends before it is complete"
    return f"malformed JSON: {text.removeprefix('JSON is malformed: ')}"


def decode_json_body(body: bytes) -> Any:
    """Decode a request body; raise `InvalidInput` naming `body` for anything but sane JSON."""
    if not body.strip():
        raise InvalidInput({"body": "is empty; send a JSON object"})
    try:
        value = msgspec.json.decode(body)
    except RecursionError:
        raise InvalidInput(
            {"body": f"nests arrays or objects more than {MAX_JSON_DEPTH} levels deep"}
        ) from None
    except msgspec.DecodeError as exc:
        raise InvalidInput({"body": _explain(body, exc)}) from None
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise InvalidInput({"body": f"nests arrays or objects more than {MAX_JSON_DEPTH} levels deep"})
    return value


async def read_json(request: Request[Any, Any, State]) -> Any:
    """The request's JSON body (for handlers that read it themselves)."""
    return decode_json_body(await request.body())


class ApiRequest(Request[Any, Any, State]):
    """The app's request class: `json()` is `decode_json_body`, cached as Litestar caches it."""

    async def json(self) -> Any:
        if self._json is Empty:
            cached = self._connection_state.json
            if cached is Empty:
                cached = self._connection_state.json = decode_json_body(await self.body())
            self._json = cached
        return self._json
