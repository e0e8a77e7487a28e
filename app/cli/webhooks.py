"""`agentsched webhooks secret|deliveries`: a user's signing secret, a run's deliveries."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

from app.clock import SYSTEM_CLOCK
from app.db import make_engine, make_session_factory
from app.errors import InvalidInput
from app.services.accounts import get_user_by_email
from app.settings import get_settings
from app.webhooks.deliveries import delivery_view, list_deliveries
from app.webhooks.signing import rotate_secret


def add_parser(commands: Any) -> None:
    group = commands.add_parser("webhooks", help="webhook secrets and deliveries").add_subparsers(
        dest="action", required=True
    )
    group.add_parser(
        "secret", help="create or rotate a user's signing secret (shown once; the old one signs 24 h more)"
    ).add_argument("--email", required=True)
    group.add_parser("deliveries", help="a run's webhook deliveries").add_argument(
        "--run", required=True, help="the run's id"
    )


def run(args: argparse.Namespace) -> int:
    settings = get_settings()
    engine = make_engine(settings, pool_size=1)
    try:
        with make_session_factory(engine).begin() as session:
            if args.action == "secret":
                user = get_user_by_email(session, args.email)
                secret = rotate_secret(
                    session, user.id, SYSTEM_CLOCK.now(), key_setting=settings.webhook_secrets_key_value
                )
                print(f"webhook signing secret for {user.email} (shown once, store it now):")
                print(secret)
            else:
                _print_deliveries(
                    [delivery_view(d) for d in list_deliveries(session, _run_id(args.run), user_id=None)]
                )
    finally:
        engine.dispose()
    return 0


def _run_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidInput({"run": f"not a run id (a UUID): {text!r}"}) from None


def _print_deliveries(views: list[dict[str, Any]]) -> None:
    if not views:
        print("no webhook deliveries for this run")
        return
    columns = ("id", "event", "status", "attempts", "last code", "next attempt / delivered", "url")
    print("  ".join(columns))
    for view in views:
        when = view["deliveredAt"] or view["nextAttemptAt"] or "-"
        print(
            f"{view['id']}  {view['event']:13}  {view['status']:9}  {view['attempts']:8}  "
            f"{view['lastStatusCode'] or '-'!s:9}  {when:24}  {view['url']}"
        )
        if view["lastError"]:
            print(f"    last error: {view['lastError']}")
