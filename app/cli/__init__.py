"""`agentsched` command line: migrate, dev, test, status and the operator's admin commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from app.cli import health as health_commands
from app.cli import keys as keys_commands
from app.cli import runs as run_commands
from app.cli import webhooks as webhook_commands
from app.cli.servers import UNREACHABLE_ERRORS, reached_nothing, use_servers
from app.errors import AppError
from app.logging import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentsched", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("migrate", help="upgrade the database schema to the latest revision")
    dev = commands.add_parser("dev", help="run the whole system locally (embedded services if needed)")
    dev.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    dev.add_argument("--demo-email", default="demo@agentsched.local")
    test = commands.add_parser("test", help="run the test suite against real Postgres and Redis")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest")
    commands.add_parser("status", help="print the orchestrator status block")

    users = commands.add_parser("users", help="manage users").add_subparsers(dest="action", required=True)
    create = users.add_parser("create", help="create a user")
    create.add_argument("--email", required=True)
    create.add_argument("--plan", default="free", choices=["free", "pro", "enterprise"])
    create.add_argument("--credits", type=int, help="monthly credits (default: the plan's)")
    create.add_argument("--admin", action="store_true", help="may open the dashboard's operations page")
    users.add_parser("admin", help="let a user open the dashboard's operations page").add_argument(
        "--email", required=True
    )

    keys_commands.add_parser(commands)
    run_commands.add_parser(commands)
    health_commands.add_parser(commands)
    webhook_commands.add_parser(commands)

    credits = commands.add_parser("credits", help="credits").add_subparsers(dest="action", required=True)
    credits.add_parser("reset", help="set credits_used to 0").add_argument("--email", required=True)
    credits.add_parser(
        "audit", help="list users whose ledger does not sum to credits_used (exit 1 if any)"
    ).add_argument("--email")

    plan = commands.add_parser("plan", help="plans").add_subparsers(dest="action", required=True)
    plan_set = plan.add_parser("set", help="change a user's plan")
    plan_set.add_argument("--email", required=True)
    plan_set.add_argument("--plan", required=True, choices=["free", "pro", "enterprise"])
    plan_set.add_argument("--credits", type=int, help="monthly credits (default: the plan's)")
    plan_set.add_argument(
        "--concurrency",
        type=int,
        help="runs that may run at once (default: the plan's: free 1, pro 5, enterprise 20)",
    )

    tasks = commands.add_parser("tasks", help="tasks").add_subparsers(dest="action", required=True)
    tasks.add_parser("list", help="list tasks, newest first").add_argument("--email")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["test"]:
        # Everything after `test` belongs to pytest, options included (`agentsched test -k x`).
        from app.cli.testing import run_tests

        return run_tests(arguments[1:])
    args = build_parser().parse_args(arguments)
    try:
        if args.command == "dev":
            from app.cli.dev import run_dev

            return run_dev(args)
        if args.command == "test":
            from app.cli.testing import run_tests

            return run_tests(list(args.pytest_args))
        # Commands print their answers; logs (warnings unless LOG_LEVEL says) go to stderr.
        configure_logging(os.environ.get("LOG_LEVEL") or "WARNING")
        # Every other command uses a running `agentsched dev`'s servers, else the configured ones.
        servers = use_servers()
        try:
            if args.command == "keys":
                return keys_commands.run(args)
            if args.command == "health":
                return health_commands.run(args)
            if args.command == "webhooks":
                return webhook_commands.run(args)
            if args.command == "runs":
                return run_commands.run(args)
            from app.cli.admin import run_admin

            return run_admin(args)
        except UNREACHABLE_ERRORS as exc:
            print(f"agentsched: {reached_nothing(servers, exc)}", file=sys.stderr)
            return 2
    except AppError as exc:
        print(f"agentsched: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
