"""`agentsched keys create|list|revoke`: a user's API keys (a key is shown once, at creation)."""

from __future__ import annotations

import argparse
import uuid
from datetime import UTC, datetime
from typing import Any

from app.clock import SYSTEM_CLOCK
from app.db import make_engine, make_session_factory
from app.errors import InvalidInput
from app.services import keys
from app.services.accounts import get_user_by_email
from app.settings import get_settings


def add_parser(commands: Any) -> None:
    group = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    create = group.add_parser("create", help="issue an API key (shown once)")
    create.add_argument("--email", required=True)
    create.add_argument("--name", default="", help="a label for the key, e.g. laptop or ci")
    group.add_parser("list", help="a user's keys, newest first").add_argument("--email", required=True)
    group.add_parser("revoke", help="revoke a key (every API process refuses it within 10 s)").add_argument(
        "--id", required=True, help="the key's id, as `keys list` shows it"
    )


def run(args: argparse.Namespace) -> int:
    engine = make_engine(get_settings(), pool_size=1)
    try:
        with make_session_factory(engine).begin() as session:
            if args.action == "create":
                user = get_user_by_email(session, args.email)
                issued = keys.issue_key(session, user.id, args.name)
                label = f" named {issued.record.name!r}" if issued.record.name else ""
                print(f"API key{label} for {user.email}, id {issued.record.id} (shown once, store it now):")
                print(issued.secret)
            elif args.action == "list":
                user = get_user_by_email(session, args.email)
                _print_keys(keys.list_keys(session, user.id))
            else:
                key = keys.revoke_key(session, _key_id(args.id), user_id=None, now=SYSTEM_CLOCK.now())
                print(f"revoked key {key.id} ({key.prefix}...) at {_when(key.revoked_at)}")
    finally:
        engine.dispose()
    return 0


def _key_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise InvalidInput({"id": f"not a key id (a UUID, as `keys list` shows): {text!r}"}) from None


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _print_keys(rows: list[Any]) -> None:
    columns = ("id", "prefix", "created (UTC)", "last used", "revoked", "name")
    widths = (36, 13, 19, 19, 19, 0)
    print("  ".join(f"{name:{width}}" for name, width in zip(columns, widths, strict=True)).rstrip())
    for key in rows:
        print(
            f"{key.id!s:36}  {key.prefix + '...':13}  {_when(key.created_at):19}  "
            f"{_when(key.last_used_at):19}  {_when(key.revoked_at):19}  {key.name}".rstrip()
        )
