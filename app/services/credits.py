"""Credits: the rate, reservations before a run's first model call, and the one charge after.

Rules (CONTRACT "Money"):
- a run costs ceil(tokens / TOKENS_PER_CREDIT) credits, at least 1 when it used any tokens;
- before its first model call a run holds min(the cost of its token budget, the credits left),
  at least 1 (else it fails `insufficient_credits`), in one locked statement, so concurrent runs
  can never take a user past `monthly_credits`; its token budget shrinks to what it holds;
- when the run ends the reservation is released and the actual cost (never more than the
  reservation) is charged once, as one `credit_ledger` row in the same transaction; tokens
  past the run's budget are recorded on the run (`tokens_over_budget`);
- `credits_used` counts the current UTC calendar month; the first write of a new month starts
  it again at 0 (the ledger keeps every month's rows); an operator's reset or plan change is
  booked in app.services.credit_books.
"""

from __future__ import annotations

import math
import uuid
from datetime import date, datetime

from sqlalchemy import text
from sqlalchemy.orm import Session


def cost_of(tokens: int, tokens_per_credit: int) -> int:
    """Credits for `tokens`: rounded up, at least 1 for any use, 0 for none."""
    if tokens <= 0:
        return 0
    return max(1, math.ceil(tokens / tokens_per_credit))


def month_of(now: datetime) -> date:
    """The UTC calendar month `now` falls in, as its first day."""
    return date(now.year, now.month, 1)


# The credit rules as SQL fragments over `users`, used by the statements below and by the run
# lifecycle's single-statement claim and finish (app/services/runs.py).

#: credits_used as of :period (0 when the stored month is an older one).
USED_NOW = "(CASE WHEN credits_period < :period THEN 0 ELSE credits_used END)"
#: Credits the user may still hold this month (negative when a plan change went below use).
CREDITS_LEFT = f"(monthly_credits - {USED_NOW} - credits_reserved)"
#: Move the stored month up to :period (the lazy monthly reset), as a SET clause.
PERIOD_SET = f"""credits_used = {USED_NOW},
           credits_period = GREATEST(credits_period, :period)"""


def hold_ctes(user_id_sql: str) -> str:
    """Two CTEs that hold min(:amount, the credits left) for the user `user_id_sql` selects.

    `room` locks the user row and computes the amount on its latest version; `held` adds it to
    `credits_reserved` when it is at least 1 and returns it (no row: nothing was held).
    """
    return f"""room AS (
        SELECT id, LEAST(:amount, {CREDITS_LEFT}) AS amount
          FROM users WHERE id = ({user_id_sql})
           FOR UPDATE
    ), held AS (
        UPDATE users SET {PERIOD_SET},
               credits_reserved = credits_reserved + (SELECT amount FROM room)
         WHERE id = (SELECT id FROM room WHERE amount >= 1)
        RETURNING (SELECT amount FROM room) AS amount
    )"""


def settle_set(charge_sql: str) -> str:
    """The SET clause that releases :reserved and charges `charge_sql` credits."""
    return f"""credits_used = {USED_NOW} + {charge_sql},
           credits_period = GREATEST(credits_period, :period),
           credits_reserved = GREATEST(credits_reserved - :reserved, 0)"""


#: The payer of the run `finished` returns, locked, and the month its charge counts in: the
#: stored month when that is later than :period (a worker whose clock is behind), so the charge
#: lands in the month `credits_used` counts.
PAYER_CTE = """payer AS (
        SELECT id, GREATEST(credits_period, :period) AS period
          FROM users WHERE id = (SELECT user_id FROM finished)
           FOR UPDATE
    )"""

#: The one charge of a run; the partial unique index makes a second one a no-op.
CHARGE_CONFLICT = "ON CONFLICT (run_id) WHERE kind = 'charge' DO NOTHING"

_RESERVE = text(f"WITH {hold_ctes(':user_id')} SELECT amount FROM held")

_SETTLE = text(f"UPDATE users SET {settle_set(':charge')} WHERE id = :user_id")

_CHARGE = text(
    f"""
    INSERT INTO credit_ledger (user_id, run_id, kind, amount, tokens, period)
    VALUES (:user_id, :run_id, 'charge', :charge, :tokens,
            (SELECT GREATEST(credits_period, :period) FROM users WHERE id = :user_id FOR UPDATE))
    {CHARGE_CONFLICT}
    RETURNING id
    """
)


def charge_for(tokens: int, tokens_per_credit: int, reserved: int) -> int:
    """What a run that used `tokens` pays: its cost, never more than it held (when it held any)."""
    charge = cost_of(tokens, tokens_per_credit)
    return min(charge, reserved) if reserved else charge


def reservation(token_budget: int, tokens_per_credit: int) -> int:
    """Credits a run asks to hold: the cost of its whole token budget (it gets at most what is left)."""
    return cost_of(token_budget, tokens_per_credit)


def token_budget(reserved: int, run_token_budget: int, tokens_per_credit: int) -> int:
    """Tokens a run holding `reserved` credits may spend: its budget, shrunk to what it holds."""
    return min(run_token_budget, reserved * tokens_per_credit)


def tokens_over_budget(tokens: int, budget: int) -> int:
    """Tokens a run spent past its budget (a provider counting more than estimated)."""
    return max(0, tokens - budget)


def reserve(session: Session, user_id: uuid.UUID, amount: int, now: datetime) -> int:
    """Hold min(`amount`, the credits left) for a run; 0 when less than 1 credit is left."""
    row = session.execute(_RESERVE, {"user_id": user_id, "amount": amount, "period": month_of(now)}).first()
    return int(row[0]) if row is not None else 0


def settle(
    session: Session,
    *,
    user_id: uuid.UUID,
    run_id: uuid.UUID,
    reserved: int,
    tokens: int,
    tokens_per_credit: int,
    now: datetime,
) -> int:
    """Release a run's reservation and charge what it used (capped at the reservation).

    Returns the credits charged. The ledger's partial unique index on the run makes a second
    charge impossible; callers also fence on the run's attempt, so this runs once per run.
    """
    charge = charge_for(tokens, tokens_per_credit, reserved)
    period = month_of(now)
    if charge:
        inserted = session.execute(
            _CHARGE,
            {
                "user_id": user_id,
                "run_id": run_id,
                "charge": charge,
                "tokens": tokens,
                "period": period,
            },
        ).first()
        if inserted is None:
            charge = 0
    if charge or reserved:
        session.execute(
            _SETTLE, {"user_id": user_id, "charge": charge, "reserved": reserved, "period": period}
        )
    return charge


def used_this_month(credits_used: int, credits_period: date, now: datetime) -> int:
    """`credits_used` as of now: a month that has ended counts as 0."""
    return credits_used if credits_period >= month_of(now) else 0
