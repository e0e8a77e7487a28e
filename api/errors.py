"""The one place where domain errors become HTTP answers."""

from __future__ import annotations

import logging
from typing import Any

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
)

from app.errors import (
    AppError,
    Conflict,
    IdempotencyKeyReused,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    RateLimited,
)

logger = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[AppError], int] = {
    InvalidInput: HTTP_400_BAD_REQUEST,
    NotAuthenticated: HTTP_401_UNAUTHORIZED,
    NotFound: HTTP_404_NOT_FOUND,
    Conflict: HTTP_409_CONFLICT,
    IdempotencyKeyReused: HTTP_422_UNPROCESSABLE_ENTITY,
    RateLimited: HTTP_429_TOO_MANY_REQUESTS,
}


def _status_for(exc: AppError) -> int:
    for error_type, status in STATUS_BY_ERROR.items():
        if isinstance(exc, error_type):
            return status
    return HTTP_500_INTERNAL_SERVER_ERROR


def app_error_handler(_: Request[Any, Any, Any], exc: AppError) -> Response[dict[str, object]]:
    status = _status_for(exc)
    body: dict[str, object] = {"error": exc.code, "message": exc.message}
    if isinstance(exc, InvalidInput):
        body["fields"] = exc.fields
    headers = {"WWW-Authenticate": "Bearer"} if status == HTTP_401_UNAUTHORIZED else None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after_s), **exc.headers}
    if status == HTTP_500_INTERNAL_SERVER_ERROR:
        logger.error("unmapped domain error: %s", exc)
    return Response(body, status_code=status, headers=headers)


def validation_error_handler(
    _: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, object]]:
    """Litestar's own parameter validation (query strings, path ids), in our error shape."""
    fields: dict[str, str] = {}
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            fields[str(item.get("key") or "request")] = str(item.get("message") or "is invalid")
    return Response(
        {
            "error": "invalid_input",
            "message": exc.detail,
            "fields": fields or {"request": exc.detail},
        },
        status_code=HTTP_400_BAD_REQUEST,
    )


def http_error_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, object]]:
    return Response(
        {"error": "http_error", "message": exc.detail},
        status_code=exc.status_code,
        headers=exc.headers,
    )


EXCEPTION_HANDLERS = {
    AppError: app_error_handler,
    ValidationException: validation_error_handler,
    HTTPException: http_error_handler,
}
