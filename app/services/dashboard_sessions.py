"""Dashboard sign-in: an API key becomes a server-side session; the browser holds a random token.

Only the token's SHA-256 is stored (like API keys). A session lives `SESSION_TTL` at most, ends on
sign-out, and ends with its key: every request resolves the session through its key, so a key
revoked anywhere (dashboard, API, CLI) signs its sessions out at their next request, and revoking
from the dashboard deletes them at once.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from app.errors import NotAuthenticated
from app.models import ApiKey, DashboardSession
from app.services.accounts import hash_api_key

#: How long a dashboard session lasts after sign-in.
SESSION_TTL = timedelta(hours=12)


@dataclass(frozen=True, slots=True)
class SignedIn:
    """Who a dashboard request comes from."""

    user_id: uuid.UUID
    email: str
    is_admin: bool
    api_key_id: uuid.UUID


def sign_in(session: Session, api_key: str, now: datetime) -> tuple[str, SignedIn]:
    """A new session for a live key: (the cookie token, who it is). `NotAuthenticated` otherwise."""
    key = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_api_key(api_key.strip()), ApiKey.revoked_at.is_(None))
    )
    if key is None:
        raise NotAuthenticated("that API key is not valid (or has been revoked)")
    purge_expired(session, now)  # sign-ins are rare: they also sweep sessions that have expired
    token = secrets.token_urlsafe(32)
    session.add(
        DashboardSession(
            token_hash=hash_api_key(token),
            user_id=key.user_id,
            api_key_id=key.id,
            created_at=now,
            expires_at=now + SESSION_TTL,
        )
    )
    session.flush()
    signed_in = resolve(session, token, now)
    assert signed_in is not None
    return token, signed_in


_RESOLVE = text(
    """
    SELECT u.id, u.email, u.is_admin, k.id
      FROM dashboard_sessions AS s
      JOIN api_keys AS k ON k.id = s.api_key_id AND k.revoked_at IS NULL
      JOIN users AS u ON u.id = s.user_id
     WHERE s.token_hash = :token_hash AND s.expires_at > :now
    """
)


def resolve(session: Session, token: str, now: datetime) -> SignedIn | None:
    """Who holds this token, in one statement; None when signed out, expired or the key revoked."""
    row = session.execute(_RESOLVE, {"token_hash": hash_api_key(token), "now": now}).first()
    if row is None:
        return None
    return SignedIn(row[0], row[1], bool(row[2]), row[3])


def sign_out(session: Session, token: str) -> None:
    session.execute(delete(DashboardSession).where(DashboardSession.token_hash == hash_api_key(token)))


def end_sessions_of_key(session: Session, api_key_id: uuid.UUID) -> int:
    """Sign out every browser that signed in with this key (when it is revoked)."""
    result = session.execute(delete(DashboardSession).where(DashboardSession.api_key_id == api_key_id))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def purge_expired(session: Session, now: datetime) -> int:
    """Delete sessions that have expired or whose key has been revoked."""
    result = session.execute(
        text(
            """
            DELETE FROM dashboard_sessions AS s USING api_keys AS k
             WHERE k.id = s.api_key_id AND (s.expires_at <= :now OR k.revoked_at IS NOT NULL)
            """
        ),
        {"now": now},
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
