"""The operator's commands (the seed's admin SQL as commands)."""

from __future__ import annotations

import argparse

from sqlalchemy import select

from app.cli import credits as credit_commands
from app.db import make_engine, make_session_factory
from app.migrate import upgrade_to_head
from app.models import Task, User
from app.services import accounts
from app.settings import get_settings


def run_admin(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.command == "migrate":
        upgrade_to_head(settings.database_url)
        print("database is at the latest revision")
        return 0
    if args.command == "status":
        from app.cli.status import print_status

        return int(print_status(settings))
    engine = make_engine(settings, pool_size=1)
    try:
        with make_session_factory(engine).begin() as session:
            return _run(session, args)
    finally:
        engine.dispose()


def _run(session: object, args: argparse.Namespace) -> int:
    from sqlalchemy.orm import Session

    assert isinstance(session, Session)
    action = (args.command, getattr(args, "action", None))
    if action == ("users", "create"):
        user = accounts.create_user(session, email=args.email, plan=args.plan, monthly_credits=args.credits)
        user.is_admin = bool(getattr(args, "admin", False))
        role = ", admin" if user.is_admin else ""
        allowance = f"{user.monthly_credits} credits/month{role}"
        print(f"created user {user.email} ({user.plan}, {allowance}) id={user.id}")
    elif action == ("users", "admin"):
        user = accounts.get_user_by_email(session, args.email)
        user.is_admin = True
        print(f"{user.email} is now an admin: the dashboard's operations page is open to them")
    elif action == ("credits", "reset"):
        return credit_commands.reset(session, args)
    elif action == ("credits", "audit"):
        return credit_commands.audit(session, args)
    elif action == ("plan", "set"):
        return credit_commands.plan_set(session, args)
    elif action == ("tasks", "list"):
        query = select(Task, User.email).join(User, User.id == Task.user_id)
        if args.email:
            query = query.where(User.email == args.email.strip().lower())
        rows = session.execute(query.order_by(Task.created_at.desc()).limit(200)).all()
        columns = ("id", "status", "priority", "agent", "next run (UTC)", "email")
        widths = (36, 9, 8, 14, 20, 24)
        print("  ".join(f"{name:{width}}" for name, width in zip(columns, widths, strict=True)) + "  title")
        for task, email in rows:
            next_run = task.next_run_at.strftime("%Y-%m-%d %H:%M:%S") if task.next_run_at else "-"
            print(
                f"{task.id!s:36}  {task.status:9}  {task.priority:8}  {task.agent_type:14}  "
                f"{next_run:20}  {email:24}  {task.title}"
            )
    else:
        raise SystemExit(f"unknown command {action}")
    return 0
