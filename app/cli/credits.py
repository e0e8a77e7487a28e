"""`agentsched credits reset | audit` and `plan set`: the operator's money commands."""

from __future__ import annotations

import argparse

from sqlalchemy.orm import Session

from app.clock import SYSTEM_CLOCK
from app.services import accounts, credit_books
from app.services.concurrency import plan_concurrency, set_limit


def reset(session: Session, args: argparse.Namespace) -> int:
    user = accounts.get_user_by_email(session, args.email)
    undone = accounts.reset_credits(session, user, now=SYSTEM_CLOCK.now())
    print(
        f"credits_used for {user.email} is now 0 of {user.monthly_credits} "
        f"({undone} credit(s) of this month undone, booked as an adjustment)"
    )
    return 0


def plan_set(session: Session, args: argparse.Namespace) -> int:
    user = accounts.get_user_by_email(session, args.email)
    now = SYSTEM_CLOCK.now()
    accounts.set_plan(session, user, args.plan, args.credits, now=now)
    limit = plan_concurrency(user.plan) if getattr(args, "concurrency", None) is None else args.concurrency
    set_limit(session, user.id, limit)
    print(f"{user.email} is now on {user.plan} with {user.monthly_credits} credits/month")
    print(f"{user.email} may run {limit} run(s) at once")
    over = credit_books.overdrawn_by(user, now)
    if over:
        print(
            f"warning: {user.email} has used {user.credits_used} and holds {user.credits_reserved} "
            f"credit(s) this month, {over} more than the new allowance of {user.monthly_credits}; "
            "runs in flight are still charged, and no new run of this user starts until what is "
            "used and held fits in the allowance again"
        )
    return 0


def audit(session: Session, args: argparse.Namespace) -> int:
    """Print every user whose books don't balance; exit 1 when there is any."""
    checked, imbalances = credit_books.audit(session, args.email)
    for imbalance in imbalances:
        print(imbalance.describe())
    if args.email and not checked:
        print(f"no user with email {args.email}")
        return 2
    if imbalances:
        print(f"{len(imbalances)} of {checked} user(s) out of balance")
        return 1
    print(f"the books balance for {checked} user(s)")
    return 0
