"""Reading JSON bodies ourselves, so malformed JSON is a 400 that names the body."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.datastructures import State

from app.errors import InvalidInput


async def read_json(request: Request[Any, Any, State]) -> Any:
    body = await request.body()
    if not body:
        raise InvalidInput({"body": "is empty; send a JSON object"})
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidInput({"body": f"malformed JSON: {exc}"}) from None
