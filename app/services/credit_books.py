"""The books of credits: operator resets and plan changes, and the audit that checks them.

The rule (CONTRACT "Money"): for every user, the ledger rows of the month `credits_used`
counts (`credits_period`) sum to `credits_used`, and no row counts in a later month. Runs keep
it by charging in the statement that settles them (app.services.runs); an operator's reset or
plan change keeps it by locking the user row first, starting a month that has ended at 0 (the
lazy monthly reset), and booking its change in that same month. `credits_reserved` equals the
sum of what the user's unfinished runs hold.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.models import CreditLedgerEntry, User
from app.models.enums import Plan
from app.services.credits import month_of


def lock_user(session: Session, user_id: uuid.UUID) -> User:
    """The user's row, locked until the transaction ends, as it is now (not as cached)."""
    user = session.scalar(
        select(User).where(User.id == user_id).with_for_update().execution_options(populate_existing=True)
    )
    assert user is not None, f"no user {user_id}"
    return user


def _roll_month(user: User, now: datetime) -> None:
    """Start the stored month again at 0 when `now` is in a later one (the lazy monthly reset)."""
    period = month_of(now)
    if user.credits_period < period:
        user.credits_used = 0
        user.credits_period = period


def _book(session: Session, user: User, kind: str, amount: int, note: str) -> None:
    session.add(
        CreditLedgerEntry(
            user_id=user.id,
            run_id=None,
            kind=kind,
            amount=amount,
            tokens=0,
            period=user.credits_period,
            note=note[:200],
        )
    )


def reset_credits(session: Session, user_id: uuid.UUID, *, now: datetime) -> int:
    """Set this month's `credits_used` to 0, booked as an adjustment; returns the credits undone.

    Credits held by runs in flight stay held; their charges count after the reset.
    """
    user = lock_user(session, user_id)
    _roll_month(user, now)
    undone = user.credits_used
    if undone:
        _book(session, user, "adjustment", -undone, "credits reset")
    user.credits_used = 0
    session.flush()
    return undone


def change_plan(
    session: Session, user_id: uuid.UUID, plan: Plan, monthly_credits: int, *, now: datetime
) -> User:
    """Put the user on `plan` with `monthly_credits`, booked as a zero-amount `plan` row.

    Lowering the allowance below what is used and held is allowed (see `overdrawn_by`): runs
    in flight are still charged, and no new run starts until used + held fit again.
    """
    user = lock_user(session, user_id)
    _roll_month(user, now)
    note = f"plan {user.plan} ({user.monthly_credits}/month) -> {plan.value} ({monthly_credits}/month)"
    user.plan = plan.value
    user.monthly_credits = monthly_credits
    _book(session, user, "plan", 0, note)
    session.flush()
    return user


def overdrawn_by(user: User, now: datetime) -> int:
    """Credits by which this month's use plus what runs hold exceed the allowance (0: none)."""
    used = user.credits_used if user.credits_period >= month_of(now) else 0
    return max(0, used + user.credits_reserved - user.monthly_credits)


@dataclass(frozen=True, slots=True)
class Imbalance:
    """A user whose books don't balance."""

    user_id: uuid.UUID
    email: str
    period: date
    credits_used: int
    #: Sum of the ledger rows of `period`.
    ledger: int
    #: Ledger rows booked in a month after `period` (there must be none).
    later_rows: int
    credits_reserved: int
    #: Sum of what the user's queued and running runs hold.
    held_by_runs: int

    def describe(self) -> str:
        problems = []
        if self.ledger != self.credits_used:
            problems.append(
                f"ledger for {self.period:%Y-%m} sums to {self.ledger}, credits_used is "
                f"{self.credits_used} (off by {self.ledger - self.credits_used:+d})"
            )
        if self.later_rows:
            problems.append(f"{self.later_rows} ledger row(s) booked after {self.period:%Y-%m}")
        if self.credits_reserved != self.held_by_runs:
            problems.append(
                f"credits_reserved is {self.credits_reserved}, its unfinished runs hold {self.held_by_runs}"
            )
        return f"{self.email} ({self.user_id}): " + "; ".join(problems)


_AUDIT = text(
    """
    SELECT u.id, u.email, u.credits_period, u.credits_used,
           COALESCE((SELECT sum(l.amount) FROM credit_ledger AS l
                      WHERE l.user_id = u.id AND l.period = u.credits_period), 0) AS ledger,
           (SELECT count(*) FROM credit_ledger AS l
             WHERE l.user_id = u.id AND l.period > u.credits_period) AS later_rows,
           u.credits_reserved,
           COALESCE((SELECT sum(r.credits_reserved) FROM task_runs AS r
                      WHERE r.user_id = u.id AND r.status IN ('queued', 'running')), 0) AS held
      FROM users AS u
     WHERE (CAST(:email AS text) IS NULL OR u.email = :email)
     ORDER BY u.email
    """
)


def audit(session: Session, email: str | None = None) -> tuple[int, list[Imbalance]]:
    """(users checked, those whose books don't balance), for every user or the one with `email`.

    One statement reads every user, so it sees one snapshot: a run settling meanwhile is seen
    wholly before or wholly after.
    """
    rows = session.execute(_AUDIT, {"email": email.strip().lower() if email else None}).all()
    found = [
        Imbalance(*row)  # type: ignore[arg-type]
        for row in rows
        if row.ledger != row.credits_used or row.later_rows or row.credits_reserved != row.held
    ]
    return len(rows), found
