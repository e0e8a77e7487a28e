"""Tasks: the list (status filter, search, pages), creating one, a task's page and its actions."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery
from litestar.response import Redirect, Template
from sqlalchemy.orm import Session

from api.dashboard.render import is_fragment_request, page
from api.dashboard.web import BASE_PATH, signed_in
from api.state import ApiState, ensure_sent, state_of
from app.errors import InvalidInput
from app.services import dashboard, task_control
from app.services.dashboard_sessions import SignedIn
from app.services.task_input import TaskUpdate, parse_execute_request
from app.services.tasks import create_task

USER = {"user": Provide(signed_in, sync_to_thread=True)}

#: Form field -> the request field whose errors it shows.
FORM_FIELDS = {
    "goal": "goal",
    "agentType": "agent_type",
    "title": "title",
    "priority": "priority",
    "schedule": "cron",
    "schedule.cron": "cron",
    "schedule.timezone": "timezone",
    "schedule.enabled": "cron",
    "agentConfig.timeout": "timeout_s",
    "agentConfig.maxRetries": "max_retries",
    "agentConfig.model": "model",
}


@get(f"{BASE_PATH}/tasks", dependencies=USER, sync_to_thread=True, include_in_schema=False)
def tasks_list(
    request: Request[Any, Any, State],
    user: NamedDependency[SignedIn],
    status: FromQuery[str | None] = None,
    q: FromQuery[str | None] = None,
    cursor: FromQuery[str | None] = None,
) -> Template:
    """The user's tasks; the `#task-list` fragment for htmx filtering and paging."""
    state = state_of(request)
    status = status or None
    with state.session_factory() as session:
        tasks = dashboard.tasks_page(session, user.user_id, status=status, search=q, cursor=cursor)
    context = {"user": user, "page": tasks, "status": status or "", "q": q or "", "cursor": cursor}
    if is_fragment_request(request, "task-list"):
        return page("_task_list.html", context, push_url=str(request.url.path) + _query(request))
    return page("tasks.html", context)


def _query(request: Request[Any, Any, State]) -> str:
    query = request.url.query
    return f"?{query}" if query else ""


def _new_form_context(
    user: SignedIn, state_tz: str, values: Mapping[str, str], errors: Mapping[str, str]
) -> dict[str, Any]:
    return {"user": user, "values": values, "errors": errors, "default_timezone": state_tz}


@get(f"{BASE_PATH}/tasks/new", dependencies=USER, include_in_schema=False)
async def new_task_form(request: Request[Any, Any, State], user: NamedDependency[SignedIn]) -> Template:
    state = state_of(request)
    values = {
        "priority": "medium",
        "agent_type": "research_agent",
        "timezone": "",
        "max_retries": "3",
        "timeout_s": "300",
    }
    return page("task_new.html", _new_form_context(user, state.settings.default_timezone, values, {}))


@get(f"{BASE_PATH}/schedule-preview", dependencies=USER, include_in_schema=False)
async def schedule_preview(
    request: Request[Any, Any, State],
    user: NamedDependency[SignedIn],
    cron: FromQuery[str | None] = None,
    timezone: FromQuery[str | None] = None,
) -> Template:
    """The next five fire times of an expression (the `#schedule-preview` fragment)."""
    state = state_of(request)
    zone = (timezone or "").strip() or state.settings.default_timezone
    expr = (cron or "").strip()
    fires, problems = [], {}
    if expr:
        try:
            fires = dashboard.upcoming_fires(expr, zone, state.clock.now())
        except InvalidInput as exc:
            problems = {FORM_FIELDS.get(name, name): text for name, text in exc.fields.items()}
    return page(
        "_schedule_preview.html", {"fires": fires, "problems": problems, "cron": expr, "timezone": zone}
    )


def _form_payload(form: Mapping[str, str], errors: dict[str, str]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for field, key, scale in (("timeout_s", "timeout", 1000), ("max_retries", "maxRetries", 1)):
        raw = form.get(field, "").strip()
        if raw:
            try:
                config[key] = int(raw) * scale
            except ValueError:
                errors[field] = "must be a whole number"
    if form.get("model", "").strip():
        config["model"] = form["model"].strip()
    payload: dict[str, Any] = {
        "goal": form.get("goal", ""),
        "agentType": form.get("agent_type", ""),
        "priority": form.get("priority") or "medium",
        "async": True,
        "agentConfig": config,
    }
    if form.get("title", "").strip():
        payload["title"] = form["title"]
    if form.get("scheduled") == "on":
        payload["schedule"] = {"enabled": True, "cron": form.get("cron", "")}
        if form.get("timezone", "").strip():
            payload["schedule"]["timezone"] = form["timezone"].strip()
    return payload


@post(f"{BASE_PATH}/tasks", dependencies=USER, include_in_schema=False)
async def create_task_from_form(
    request: Request[Any, Any, State], user: NamedDependency[SignedIn]
) -> Template | Redirect:
    """Create a task from the form: run it now, or schedule it; the form again with its errors.

    A run whose message Redis refused is saved and queued all the same (the reconciler sends it):
    the dashboard's 503 page says so, as the API's 503 does (`ensure_sent`).
    """
    state = state_of(request)
    form = {name: str(value) for name, value in (await request.form()).items()}
    errors: dict[str, str] = {}
    payload = _form_payload(form, errors)
    try:
        parsed = parse_execute_request(payload, default_timezone=state.settings.default_timezone)
    except InvalidInput as exc:
        errors.update({FORM_FIELDS.get(name, name): text for name, text in exc.fields.items()})
        schedule = payload.get("schedule")
        # The expression is checked only once the rest is right; name its faults at once too.
        if schedule and "cron" not in errors and "timezone" not in errors:
            zone = schedule.get("timezone") or state.settings.default_timezone
            try:
                dashboard.upcoming_fires(str(schedule["cron"]), zone, state.clock.now(), count=1)
            except InvalidInput as cron_exc:
                errors.update({FORM_FIELDS.get(name, name): text for name, text in cron_exc.fields.items()})
    if errors:
        context = _new_form_context(user, state.settings.default_timezone, form, errors)
        return page("task_new.html", context, status_code=400)

    def store() -> uuid.UUID:
        with state.session_factory.begin() as session:
            created = create_task(session, user.user_id, parsed, state.clock.now())
        sent = state.send_recorded(created.dispatches)  # after commit: the row exists before its message
        ensure_sent(created.dispatches, sent, created.task_id, created.status)
        return created.task_id

    task_id = await anyio.to_thread.run_sync(store)
    return Redirect(f"{BASE_PATH}/tasks/{task_id}", status_code=303)


@get(f"{BASE_PATH}/tasks/{{task_id:uuid}}", dependencies=USER, sync_to_thread=True, include_in_schema=False)
def task_page(
    request: Request[Any, Any, State],
    user: NamedDependency[SignedIn],
    task_id: FromPath[uuid.UUID],
    cursor: FromQuery[str | None] = None,
) -> Template:
    """A task: schedule, next fires, runs, actions; the `#task-runs` fragment for paging."""
    state = state_of(request)
    with state.session_factory() as session:
        detail = dashboard.task_detail(session, user.user_id, task_id, now=state.clock.now(), cursor=cursor)
    context = {
        "user": user,
        "detail": detail,
        "task": detail.task,
        "runs": detail.runs,
        "errors": {},
        "notice": None,
    }
    if is_fragment_request(request, "task-runs"):
        return page("_runs_table.html", context)
    return page("task.html", context)


#: A task action, done in one transaction: (session, state, user, task id) -> its result. Run
#: now's result is (run, dispatch), its message sent after the commit; Redis refusing it shows
#: the 503 page, as the API's run now answers 503 (the run is saved; the reconciler sends it).
Action = Callable[[Session, ApiState, SignedIn, uuid.UUID], Any]


def _task_action(
    request: Request[Any, Any, State], user: SignedIn, task_id: uuid.UUID, act: Action
) -> Redirect:
    state = state_of(request)
    with state.session_factory.begin() as session:
        result = act(session, state, user, task_id)
    if isinstance(result, tuple):  # run now: (run, dispatch), sent after the commit
        run, dispatch = result
        ensure_sent([dispatch], state.send([dispatch]), task_id, run.status)
    return Redirect(f"{BASE_PATH}/tasks/{task_id}", status_code=303)


def _update(schedule: dict[str, Any]) -> Action:
    update = TaskUpdate(title=None, priority=None, schedule=schedule)

    def act(session: Session, state: ApiState, user: SignedIn, task_id: uuid.UUID) -> Any:
        return task_control.update_task(
            session, user.user_id, task_id, update, settings=state.settings, now=state.clock.now()
        )

    return act


def _run_now(session: Session, state: ApiState, user: SignedIn, task_id: uuid.UUID) -> Any:
    return task_control.run_now(session, user.user_id, task_id, now=state.clock.now())


def _cancel(session: Session, state: ApiState, user: SignedIn, task_id: uuid.UUID) -> Any:
    return task_control.cancel_task(
        session, user.user_id, task_id, settings=state.settings, now=state.clock.now()
    )


def _action_route(name: str, act: Action) -> HTTPRouteHandler:
    """`POST /dashboard/tasks/{id}/<name>`: `act`, then back to the task's page."""

    @post(
        f"{BASE_PATH}/tasks/{{task_id:uuid}}/{name}",
        dependencies=USER,
        sync_to_thread=True,
        include_in_schema=False,
    )
    def task_action(
        request: Request[Any, Any, State], user: NamedDependency[SignedIn], task_id: FromPath[uuid.UUID]
    ) -> Redirect:
        return _task_action(request, user, task_id, act)

    return task_action


pause_task = _action_route("pause", _update({"enabled": False}))
resume_task = _action_route("resume", _update({"enabled": True}))
run_task = _action_route("run", _run_now)
cancel_task = _action_route("cancel", _cancel)


@post(f"{BASE_PATH}/tasks/{{task_id:uuid}}/schedule", dependencies=USER, include_in_schema=False)
async def edit_schedule(
    request: Request[Any, Any, State], user: NamedDependency[SignedIn], task_id: FromPath[uuid.UUID]
) -> Template | Redirect:
    """Change the expression and timezone (and so `nextRunAt`); the page with the errors if wrong."""
    state = state_of(request)
    form = await request.form()
    schedule: dict[str, Any] = {"cron": str(form.get("cron") or "").strip()}
    if str(form.get("timezone") or "").strip():
        schedule["timezone"] = str(form.get("timezone")).strip()
    try:
        if not schedule["cron"]:
            raise InvalidInput({"schedule.cron": 'is required, e.g. "0 9 * * *"'})
        return await anyio.to_thread.run_sync(_task_action, request, user, task_id, _update(schedule))
    except InvalidInput as exc:
        errors = {FORM_FIELDS.get(name, name): text for name, text in exc.fields.items()}

    def reread() -> Template:
        with state.session_factory() as session:
            detail = dashboard.task_detail(session, user.user_id, task_id, now=state.clock.now())
        context = {
            "user": user,
            "detail": detail,
            "task": detail.task,
            "runs": detail.runs,
            "errors": errors,
            "notice": None,
            "values": schedule,
        }
        return page("task.html", context, status_code=400)

    return await anyio.to_thread.run_sync(reread)
