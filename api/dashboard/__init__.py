"""The dashboard: server-rendered pages at /dashboard (Jinja2 + htmx), served by the API itself.

Assets (htmx, its SSE extension, our CSS and one small script) ship in `api/dashboard/static`
and templates in `api/dashboard/templates`; nothing is fetched from elsewhere at run time.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router
from litestar.datastructures import State
from litestar.exceptions import HTTPException, PermissionDeniedException, ValidationException
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.plugins.htmx import ClientRedirect, HTMXRequest
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router

from api import errors as api_errors
from api.dashboard import account_pages, ops_pages, run_pages, session_pages, task_pages
from api.dashboard.render import STATIC, template_config
from api.dashboard.web import (
    BASE_PATH,
    SECURITY_HEADERS,
    AdminRequired,
    SecurityHeadersMiddleware,
    SignInRequired,
    csrf_config,
    expired_session_cookie,
)
from app.errors import AppError, Conflict, InvalidInput, NotAuthenticated, NotFound, RunsNotSent
from app.settings import Settings

__all__ = ["dashboard_router", "template_config"]

HANDLERS = [
    session_pages.dashboard_root,
    session_pages.sign_in_form,
    session_pages.sign_in,
    session_pages.sign_out,
    task_pages.tasks_list,
    task_pages.new_task_form,
    task_pages.schedule_preview,
    task_pages.create_task_from_form,
    task_pages.task_page,
    task_pages.pause_task,
    task_pages.resume_task,
    task_pages.run_task,
    task_pages.cancel_task,
    task_pages.edit_schedule,
    run_pages.run_page,
    run_pages.run_body,
    run_pages.run_events,
    run_pages.retry_run,
    run_pages.cancel_run,
    account_pages.account_page,
    account_pages.create_key,
    account_pages.revoke_key,
    account_pages.rotate_webhook_secret,
    ops_pages.operations_page,
    ops_pages.bulk_retry,
    ops_pages.bulk_cancel,
]

_TITLES = {
    400: "That did not work",
    403: "Not allowed",
    404: "Not found",
    409: "Not now",
    500: "Something broke",
    503: "Briefly unavailable",
}


def _error_page(
    request: Request[Any, Any, State], status: int, message: str, link: tuple[str, str] | None = None
) -> Response[Any]:
    """The error page; `link` (path, text), when given, leads to what the message is about."""
    signed_in = request.cookies.get("agentsched_session") is not None
    context = {
        "status": status,
        "title": _TITLES.get(status, "Error"),
        "message": message,
        "signed_in": signed_in,
        "link": link,
    }
    return Template(template_name="error.html", context=context, status_code=status, headers=SECURITY_HEADERS)


def _unavailable(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    """Postgres or Redis down: the API's 503 (its log line, Retry-After), as a page."""
    answer = api_errors.unavailable_handler(request, exc)
    page = _error_page(request, 503, "The service is briefly unavailable. Try again in a few seconds.")
    page.headers.update(answer.headers)
    return page


def _not_sent(request: Request[Any, Any, State], exc: RunsNotSent) -> Response[Any]:
    """Redis refused the messages of runs just saved: the API's 503 (its log line, Retry-After),
    as the unavailable page. Not "try again", which would queue more runs: the page says they
    are saved and start by themselves (the reconciler sends them), and leads to the run."""
    answer = api_errors.app_error_handler(request, exc)
    count = len(exc.run_ids)
    if count == 1:
        saved = "The run is saved and queued, and starts by itself"
        again, link = "another run", (f"{BASE_PATH}/runs/{exc.run_ids[0]}", "See the saved run")
    else:
        saved = f"The {count} runs are saved and queued, and start by themselves"
        again, link = "more runs", None
    message = f"Redis is briefly unavailable. {saved} once it is back; submitting again would queue {again}."
    page = _error_page(request, 503, message, link)
    page.headers.update(answer.headers)
    return page


def _internal(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    api_errors.internal_error_handler(request, exc)  # logs it with its traceback
    return _error_page(request, 500, "Something went wrong on our side.")


def _sign_in_required(request: Request[Any, Any, State], exc: SignInRequired) -> Response[Any]:
    ended = "?ended=revoked" if request.cookies.get("agentsched_session") else ""
    target = f"{BASE_PATH}/sign-in{ended}"
    if not ended and request.method == "GET":
        target = f"{BASE_PATH}/sign-in?next={request.url.path}"
    if request.headers.get("hx-request") == "true":
        response: Response[Any] = ClientRedirect(target)
    elif request.headers.get("accept", "").startswith("text/event-stream"):
        response = Response("sign in again", status_code=401, media_type="text/plain")
    else:
        response = Redirect(target, status_code=303)
    response.set_cookie(expired_session_cookie())
    return response


def _handle(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
    if isinstance(exc, SignInRequired):
        return _sign_in_required(request, exc)
    if isinstance(exc, RunsNotSent):
        return _not_sent(request, exc)
    if isinstance(exc, NotFound):
        return _error_page(request, 404, "There is nothing here, or it is not yours.")
    if isinstance(exc, AdminRequired):
        return _error_page(request, 403, exc.message)
    if isinstance(exc, PermissionDeniedException):  # CSRF
        return _error_page(
            request, 403, "This form has expired or did not come from this dashboard. Reload and try again."
        )
    if isinstance(exc, InvalidInput | ValidationException):
        message = exc.message if isinstance(exc, InvalidInput) else str(exc.detail)
        return _error_page(request, 400, message)
    if isinstance(exc, Conflict | NotAuthenticated):
        return _error_page(request, 409 if isinstance(exc, Conflict) else 403, exc.message)
    if isinstance(exc, HTTPException):
        return _error_page(request, exc.status_code, str(exc.detail))
    if isinstance(exc, AppError):
        return _error_page(request, 500, "Something went wrong on our side.")
    raise exc


def dashboard_router(settings: Settings) -> Router:
    """Every dashboard route, with its session, CSRF, security headers and HTML error pages."""
    static = create_static_files_router(
        path=f"{BASE_PATH}/static", directories=[STATIC], name="dashboard-static", include_in_schema=False
    )
    handlers: dict[Any, Any] = {
        AppError: _handle,
        HTTPException: _handle,
        **dict.fromkeys(api_errors.UNAVAILABLE_ERRORS, _unavailable),
        Exception: _internal,
    }
    return Router(
        path="/",
        route_handlers=[*HANDLERS, static],
        middleware=[
            SecurityHeadersMiddleware,
            DefineMiddleware(CSRFMiddleware, config=csrf_config(settings)),
        ],
        request_class=HTMXRequest,
        exception_handlers=handlers,
        include_in_schema=False,
    )
