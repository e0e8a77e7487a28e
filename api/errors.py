"""The one place where errors become HTTP answers, all in our body `{error, message, fields}`.

- Domain errors (`app.errors`) map to their status below.
- Validation (pydantic request bodies, Litestar's query and path parameters) is a 400 whose
  `fields` names every offending field at once.
- Postgres or Redis unreachable: 503 `unavailable` with `Retry-After`, never a traceback.
- Anything else: 500 `internal`, with its traceback in the log.

Logging: a 4xx is one line (method, path, status, error code); a 5xx keeps its traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
import redis.exceptions
import sqlalchemy.exc
from dramatiq.errors import BrokerConnectionError
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from api.schemas.fields import PATTERN_PROBLEMS
from app.errors import (
    AppError,
    Conflict,
    IdempotencyKeyReused,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    RateLimited,
    RunsNotSent,
)

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[AppError], int] = {
    InvalidInput: HTTP_400_BAD_REQUEST,
    NotAuthenticated: HTTP_401_UNAUTHORIZED,
    NotFound: HTTP_404_NOT_FOUND,
    Conflict: HTTP_409_CONFLICT,
    IdempotencyKeyReused: HTTP_422_UNPROCESSABLE_ENTITY,
    RateLimited: HTTP_429_TOO_MANY_REQUESTS,
    RunsNotSent: HTTP_503_SERVICE_UNAVAILABLE,
}

#: Errors that mean Postgres or Redis cannot be reached (or is restarting) right now.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection came free: the database is not answering
    psycopg.OperationalError,
    psycopg.InterfaceError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    BrokerConnectionError,
)
#: What a client should wait before trying again after a 503 (seconds).
RETRY_AFTER_S = 5

#: Error codes of Litestar's own HTTP errors (unknown route, wrong method, body too large, ...).
HTTP_ERROR_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _answer(
    request: Request[Any, Any, Any],
    status: int,
    body: dict[str, object],
    headers: Mapping[str, str] | None = None,
) -> Response[dict[str, object]]:
    if status < 500:
        logger.info("%s %s %s %s", request.method, request.url.path, status, body["error"])
    return Response(body, status_code=status, headers=dict(headers or {}) or None)


def _status_for(exc: AppError) -> int:
    for error_type, status in STATUS_BY_ERROR.items():
        if isinstance(exc, error_type):
            return status
    return HTTP_500_INTERNAL_SERVER_ERROR


def app_error_handler(request: Request[Any, Any, Any], exc: AppError) -> Response[dict[str, object]]:
    status = _status_for(exc)
    body: dict[str, object] = {"error": exc.code, "message": exc.message}
    if isinstance(exc, InvalidInput):
        body["fields"] = exc.fields
    headers: dict[str, str] = {}
    if status == HTTP_401_UNAUTHORIZED:
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after_s), **exc.headers}
    if isinstance(exc, RunsNotSent):  # the runs are saved; Redis is down, as for `unavailable_handler`
        logger.warning("%s %s 503 unavailable: %s", request.method, request.url.path, exc.message)
        headers["Retry-After"] = str(RETRY_AFTER_S)
    if status == HTTP_500_INTERNAL_SERVER_ERROR:
        logger.error("unmapped domain error on %s %s", request.method, request.url.path, exc_info=exc)
    return _answer(request, status, body, headers)


# -- validation: pydantic's report (bodies) and Litestar's (query, path) in our words


def _field_name(location: Sequence[Any]) -> str:
    name = ".".join(str(part) for part in location)
    return "body" if name in ("", "data") else name.removeprefix("data.")


def _pydantic_problem(error: Mapping[str, Any]) -> str:
    kind = error.get("type")
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    problems: dict[str, str] = {
        "missing": "is required",
        "extra_forbidden": "unknown field",
        "string_type": "must be a string",
        "int_type": "must be an integer",
        "bool_type": "must be true or false",
        "model_type": "must be a JSON object",
        "model_attributes_type": "must be a JSON object",
        "dict_type": "must be a JSON object",
        "list_type": "must be a JSON array",
    }
    if kind in problems:
        return problems[kind]
    if kind == "string_too_short":
        return (
            "must not be empty"
            if ctx.get("min_length") == 1
            else f"must be at least {ctx['min_length']} characters"
        )
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']:,} characters"
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']:,}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']:,}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}"
    if kind == "string_pattern_mismatch":
        return PATTERN_PROBLEMS.get(str(ctx.get("pattern")), "has an invalid format")
    return str(error.get("msg", "is invalid"))


def _validation_fields(exc: ValidationException) -> dict[str, str]:
    fields: dict[str, str] = {}
    pydantic_errors = getattr(exc.__cause__, "errors", None)
    if isinstance(pydantic_errors, list):
        for error in pydantic_errors:
            fields.setdefault(_field_name(error.get("loc", ())), _pydantic_problem(error))
        return fields
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            key = str(item.get("key") or "")
            name = _field_name(key.split(".")) if key else "request"
            message = str(item.get("message") or "is invalid").replace("`", "")
            if name == "body":  # the only body error Litestar reports itself: no body at all
                message = "is empty; send a JSON object"
            fields.setdefault(name, message)
    return fields


def validation_error_handler(
    request: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, object]]:
    fields = _validation_fields(exc) or {"request": exc.detail}
    message = "; ".join(f"{name}: {problem}" for name, problem in fields.items())
    return _answer(
        request, HTTP_400_BAD_REQUEST, {"error": "invalid_input", "message": message, "fields": fields}
    )


# -- everything else


def http_error_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, object]]:
    status = exc.status_code
    if status >= 500:
        logger.error("%s %s answered %s", request.method, request.url.path, status, exc_info=exc)
    code = HTTP_ERROR_CODES.get(status, "http_error" if status < 500 else "internal")
    return _answer(request, status, {"error": code, "message": exc.detail}, exc.headers)


def unavailable_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, object]]:
    """Postgres or Redis is down or restarting: a 503 to retry, one log line, no traceback."""
    logger.warning(
        "%s %s 503 unavailable: %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
        str(exc).splitlines()[0] if str(exc) else "",
    )
    which = (
        "Redis" if isinstance(exc, redis.exceptions.RedisError | BrokerConnectionError) else "the database"
    )
    return Response(
        {"error": "unavailable", "message": f"{which} is unavailable; try again shortly"},
        status_code=HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, object]]:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return Response(
        {"error": "internal", "message": "internal server error"},
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
    )


EXCEPTION_HANDLERS: dict[type[BaseException], Any] = {
    AppError: app_error_handler,
    ValidationException: validation_error_handler,
    HTTPException: http_error_handler,
    **dict.fromkeys(UNAVAILABLE_ERRORS, unavailable_handler),
    Exception: internal_error_handler,
}
