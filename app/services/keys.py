"""API keys: issue (shown once, stored as a hash), list, revoke, verify.

Verification is what every authenticated request costs on a cache miss: one indexed read, and
at most once a minute per key a conditional write of `last_used_at`, so a busy key is not a
write per request. API processes trust a verified key for a few seconds (`api/state.py`), which
bounds how long a revoked key keeps working on another process.
"""

from __future__ import annotations

import secrets
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from app.errors import InvalidInput, NotAuthenticated, NotFound
from app.models import ApiKey
from app.services.accounts import API_KEY_PREFIX, hash_api_key

#: Characters of a key kept in clear (`prefix`), so its owner can tell keys apart.
SHOWN_PREFIX_CHARS = 10
KEY_NAME_MAX_CHARS = 100
#: `last_used_at` is written when it is older than this, so it is exact to about a minute.
LAST_USED_RESOLUTION = timedelta(seconds=60)
#: A user's list shows this many keys at most, newest first.
LIST_LIMIT = 200


@dataclass(frozen=True)
class IssuedKey:
    """A new key: `secret` is the only copy of the key itself; `record` is what is stored."""

    secret: str
    record: ApiKey


@dataclass(frozen=True)
class VerifiedKey:
    key_id: uuid.UUID
    user_id: uuid.UUID


def check_key_name(name: str) -> str:
    """The name stripped; `InvalidInput` naming `name` when too long or with control characters."""
    name = name.strip()
    if len(name) > KEY_NAME_MAX_CHARS:
        raise InvalidInput({"name": f"must be at most {KEY_NAME_MAX_CHARS} characters (got {len(name)})"})
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        raise InvalidInput({"name": "must not contain control characters"})
    return name


def issue_key(session: Session, user_id: uuid.UUID, name: str = "") -> IssuedKey:
    """Create a key for the user; the caller shows `secret` once, only its hash is kept."""
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        user_id=user_id,
        key_hash=hash_api_key(secret),
        prefix=secret[:SHOWN_PREFIX_CHARS],
        name=check_key_name(name),
    )
    session.add(record)
    session.flush()
    session.refresh(record)  # created_at, set by the database
    return IssuedKey(secret, record)


def list_keys(session: Session, user_id: uuid.UUID) -> list[ApiKey]:
    """The user's keys, revoked ones included, newest first."""
    query = (
        select(ApiKey)
        .where(ApiKey.user_id == user_id)
        .order_by(ApiKey.created_at.desc(), ApiKey.id)
        .limit(LIST_LIMIT)
    )
    return list(session.scalars(query))


def revoke_key(session: Session, key_id: uuid.UUID, *, user_id: uuid.UUID | None, now: datetime) -> ApiKey:
    """Revoke a key (again: keeps the first revocation time). `user_id` None: any user's (CLI).

    Another user's key is `NotFound`, exactly like a key that does not exist.
    """
    query = select(ApiKey).where(ApiKey.id == key_id).with_for_update()
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    key = session.scalar(query)
    if key is None:
        raise NotFound(f"no API key {key_id}")
    if key.revoked_at is None:
        key.revoked_at = now
        session.flush()
    return key


def verify_key(session: Session, key: str, now: datetime) -> VerifiedKey:
    """The live key `key` and its user, noting its use (the caller commits); else `NotAuthenticated`."""
    row = session.execute(
        select(ApiKey.id, ApiKey.user_id, ApiKey.last_used_at).where(
            ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None)
        )
    ).one_or_none()
    if row is None:
        raise NotAuthenticated("invalid API key")
    key_id, user_id, last_used_at = row
    if last_used_at is None or last_used_at < now - LAST_USED_RESOLUTION:
        # Conditional, so concurrent verifications in several processes write it once.
        session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key_id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < now - LAST_USED_RESOLUTION),
            )
            .values(last_used_at=now)
        )
    return VerifiedKey(key_id=key_id, user_id=user_id)
