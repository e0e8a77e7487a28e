"""The `Idempotency-Key` header on the create endpoints (rules in app.services.idempotency)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
from litestar import Request, Response
from litestar.datastructures import State
from litestar.params import HeaderParameter

from api.state import ApiState, state_of
from app.errors import RunNotSent
from app.services import idempotency
from app.services.idempotency import StoredAnswer

Answer = Callable[[], Awaitable[Response[Any]]]
#: The header as a handler declares it, so OpenAPI documents it and its rule; the value is checked
#: by `idempotency.check_key` (a bad key is our 400 naming the header, like every bad input).
IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name=idempotency.HEADER,
        required=False,
        description=(
            "1..255 visible ASCII characters. A repeat from the same user within 24 h answers the "
            "first answer again and creates nothing; with a different body, 422."
        ),
        schema_extra={
            "oneOf": None,
            "type": "string",
            "minLength": 1,
            "maxLength": idempotency.KEY_MAX_LENGTH,
            "pattern": "^[!-~]+$",
        },
    ),
]
#: A request waits for a concurrent one with the same key at most this long (then 409s would be
#: the alternative; the first request's lease is shorter, so this is a backstop).
MAX_WAIT_S = idempotency.LEASE.total_seconds() + 10


async def idempotent(
    request: Request[Any, Any, State], user_id: uuid.UUID, raw: str | None, answer: Answer
) -> Response[Any]:
    """Answer once per key (`raw`, the header's value): replay a stored answer, wait for a
    concurrent one, or answer and keep it. Without the header, just answer."""
    if raw is None:
        return await answer()
    key = idempotency.check_key(raw)
    state = state_of(request)
    print_ = idempotency.fingerprint(request.method, request.url.path, await request.body())
    deadline = time.monotonic() + MAX_WAIT_S

    def take_or_lookup() -> tuple[bool, StoredAnswer | None]:
        with state.autocommit_sessions() as session:
            now = state.clock.now()
            if idempotency.take(session, user_id, key, print_, now):
                return True, None
            return False, idempotency.lookup(session, user_id, key, print_, now)

    def settled() -> bool:
        with state.autocommit_sessions() as session:
            return idempotency.is_settled(session, user_id, key, state.clock.now())

    async def is_settled() -> bool:
        return await anyio.to_thread.run_sync(settled)

    while True:
        taken, stored = await anyio.to_thread.run_sync(take_or_lookup)
        if taken:
            break
        if stored is not None:
            return Response(
                stored.body, status_code=stored.status_code, headers={"Idempotent-Replayed": "true"}
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the first request with this idempotency key did not finish")
        # No connection is held here: the process's one LISTEN connection wakes us.
        await state.waiter.wait(idempotency.wake_token(user_id, key), remaining, is_settled)
    return await _answer_and_keep(state, user_id, key, print_, answer)


async def _answer_and_keep(
    state: ApiState, user_id: uuid.UUID, key: str, print_: str, answer: Answer
) -> Response[Any]:
    def release() -> None:
        with state.autocommit_sessions() as session:
            idempotency.release(session, user_id, key, print_)

    def keep(stored: StoredAnswer) -> None:
        with state.autocommit_sessions() as session:
            idempotency.store(session, user_id, key, print_, stored)

    try:
        response = await answer()
    except RunNotSent as exc:
        # The run exists (the 503 says so): a repeat must not make another, so the key keeps
        # the answer the run has, queued.
        queued = {"taskId": str(exc.task_id), "runId": str(exc.run_id), "status": exc.status}
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(keep, StoredAnswer(202, queued))
        raise
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(release)
        raise
    status_code = response.status_code or 200
    if not 200 <= status_code < 300:
        await anyio.to_thread.run_sync(release)
        return response
    await anyio.to_thread.run_sync(keep, StoredAnswer(status_code, response.content))
    return response
