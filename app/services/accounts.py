"""Users, plans and API keys (keys are stored as SHA-256 hashes and shown once)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.clock import SYSTEM_CLOCK
from app.errors import InvalidInput, NotAuthenticated, NotFound
from app.models import ApiKey, User
from app.models.enums import PLAN_CONCURRENCY, PLAN_CREDITS, Plan

API_KEY_PREFIX = "ask_"


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_plan(plan: str) -> Plan:
    try:
        return Plan(plan)
    except ValueError:
        valid = ", ".join(p.value for p in Plan)
        raise InvalidInput({"plan": f"must be one of {valid}"}) from None


def create_user(
    session: Session, *, email: str, plan: str = "free", monthly_credits: int | None = None
) -> User:
    email = email.strip().lower()
    if "@" not in email:
        raise InvalidInput({"email": "must be an email address"})
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise InvalidInput({"email": f"a user with email {email} exists"})
    chosen = parse_plan(plan)
    user = User(
        email=email,
        plan=chosen.value,
        monthly_credits=PLAN_CREDITS[chosen] if monthly_credits is None else monthly_credits,
        max_concurrent_runs=PLAN_CONCURRENCY[chosen],
        credits_used=0,
        credits_reserved=0,
    )
    session.add(user)
    session.flush()
    return user


def get_user_by_email(session: Session, email: str) -> User:
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no user with email {email}")
    return user


def issue_api_key(session: Session, user: User) -> str:
    """Create a key for `user` and return it; only its hash is kept."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(user_id=user.id, key_hash=hash_api_key(key), prefix=key[:10]))
    session.flush()
    return key


def authenticate(session: Session, key: str) -> uuid.UUID:
    """The id of the user a live key belongs to; `NotAuthenticated` otherwise."""
    user_id = session.scalar(
        select(ApiKey.user_id).where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
    )
    if user_id is None:
        raise NotAuthenticated("invalid API key")
    return user_id


def set_plan(
    session: Session,
    user: User,
    plan: str,
    monthly_credits: int | None = None,
    *,
    now: datetime | None = None,
) -> User:
    """Change the plan with the user row locked, booked in the ledger (app.services.credit_books);
    `credit_books.overdrawn_by` tells whether the new allowance is below what is used and held."""
    from app.services.credit_books import change_plan

    chosen = parse_plan(plan)
    credits = PLAN_CREDITS[chosen] if monthly_credits is None else monthly_credits
    if credits < 0:
        raise InvalidInput({"credits": "must be 0 or more"})
    return change_plan(session, user.id, chosen, credits, now=now or SYSTEM_CLOCK.now())


def reset_credits(session: Session, user: User, *, now: datetime | None = None) -> int:
    """Set this month's credits_used to 0 with the user row locked, booked as an adjustment of
    this month's use; returns the credits undone."""
    from app.services.credit_books import reset_credits as reset

    undone = reset(session, user.id, now=now or SYSTEM_CLOCK.now())
    session.refresh(user)
    return undone
