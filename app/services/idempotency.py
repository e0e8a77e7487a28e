"""Idempotency keys: the first request with a key is answered, later ones get that answer again.

A key is (user, `Idempotency-Key`), kept 24 h with the fingerprint of the request that brought
it and the status and body it was answered with. The first request *takes* the key (one
INSERT; a concurrent one finds the row and waits); while it works the row has no status yet and
a lease (`locked_until`) after which it is taken for dead. Only successful answers are kept: a
request that fails (invalid input, an error) gives the key back, so a corrected retry may use it.

Each step is one autocommit statement; nothing holds a connection between them, so a request
waiting for another one's answer costs no connection while it waits (it sleeps on the process's
LISTEN connection, `app.services.run_events.RunWaiter`, woken by `pg_notify` on the same channel).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.errors import IdempotencyKeyReused, InvalidInput
from app.services.runs import RUN_FINISHED_CHANNEL

HEADER = "Idempotency-Key"
KEY_MAX_LENGTH = 255
#: How long a key and its answer are kept.
KEY_TTL = timedelta(hours=24)
#: A first request still unanswered after this long is taken for dead (the longest answer is a
#: sync execute: up to 60 s of waiting for its run).
LEASE = timedelta(seconds=90)
#: Expired keys deleted per cleanup statement.
CLEANUP_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    status_code: int
    body: Any


def check_key(value: str) -> str:
    """The header's value if it is 1..255 visible ASCII characters; InvalidInput otherwise."""
    if not 1 <= len(value) <= KEY_MAX_LENGTH or not all("\x21" <= ch <= "\x7e" for ch in value):
        raise InvalidInput({HEADER: f"must be 1..{KEY_MAX_LENGTH} visible ASCII characters"})
    return value


def fingerprint(method: str, path: str, body: bytes) -> str:
    """SHA-256 of the request; a JSON body counts by its content (key order and spacing aside)."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = body
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def wake_token(user_id: uuid.UUID, key: str) -> str:
    """What waiters on a key listen for (on the run-finished channel; run ids never look so)."""
    return f"idem:{user_id}:{key}"


# Take the key: a new row, or one that has expired or whose first request died.
_TAKE = text(
    """
    INSERT INTO idempotency_keys (user_id, key, fingerprint, created_at, expires_at, locked_until)
    VALUES (:user_id, :key, :fingerprint, :now, :expires_at, :locked_until)
    ON CONFLICT (user_id, key) DO UPDATE
       SET fingerprint = EXCLUDED.fingerprint, status_code = NULL, response = NULL,
           created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at,
           locked_until = EXCLUDED.locked_until
     WHERE idempotency_keys.expires_at <= :now
        OR (idempotency_keys.status_code IS NULL AND idempotency_keys.locked_until <= :now)
    RETURNING 1
    """
)

_READ = text(
    """
    SELECT fingerprint, status_code, response FROM idempotency_keys
     WHERE user_id = :user_id AND key = :key AND expires_at > :now
    """
)

_STORE = text(
    """
    WITH stored AS (
        UPDATE idempotency_keys SET status_code = :status_code, response = CAST(:response AS jsonb),
                                    locked_until = NULL
         WHERE user_id = :user_id AND key = :key AND fingerprint = :fingerprint
           AND status_code IS NULL
        RETURNING 1
    )
    SELECT pg_notify(:channel, :token)
    """
)

_RELEASE = text(
    """
    WITH released AS (
        DELETE FROM idempotency_keys
         WHERE user_id = :user_id AND key = :key AND fingerprint = :fingerprint
           AND status_code IS NULL
        RETURNING 1
    )
    SELECT pg_notify(:channel, :token)
    """
)

_CLEANUP = text(
    """
    DELETE FROM idempotency_keys
     WHERE ctid = ANY (ARRAY(SELECT ctid FROM idempotency_keys WHERE expires_at <= :now
                              LIMIT :batch))
    """
)


def take(session: Session, user_id: uuid.UUID, key: str, print_: str, now: datetime) -> bool:
    """True when this request now owns the key (and must `store` or `release` it)."""
    row = session.execute(
        _TAKE,
        {
            "user_id": user_id,
            "key": key,
            "fingerprint": print_,
            "now": now,
            "expires_at": now + KEY_TTL,
            "locked_until": now + LEASE,
        },
    ).first()
    return row is not None


def lookup(session: Session, user_id: uuid.UUID, key: str, print_: str, now: datetime) -> StoredAnswer | None:
    """The stored answer; None while the first request is still at work (or gave the key back).

    Raises IdempotencyKeyReused when the key came with another request.
    """
    row = session.execute(_READ, {"user_id": user_id, "key": key, "now": now}).first()
    if row is None:
        return None
    stored_print: str = row.fingerprint
    status_code: int | None = row.status_code
    response: Any = row.response
    if stored_print != print_:
        raise IdempotencyKeyReused(f"this {HEADER} was used with a different request in the last 24 hours")
    if status_code is None:
        return None
    return StoredAnswer(int(status_code), response)


def is_settled(session: Session, user_id: uuid.UUID, key: str, now: datetime) -> bool:
    """Whether a waiter should look again: the key is answered, gone, or its owner died."""
    row = session.execute(
        text(
            "SELECT status_code IS NOT NULL OR locked_until <= :now FROM idempotency_keys"
            " WHERE user_id = :user_id AND key = :key AND expires_at > :now"
        ),
        {"user_id": user_id, "key": key, "now": now},
    ).first()
    return row is None or bool(row[0])


def store(session: Session, user_id: uuid.UUID, key: str, print_: str, answer: StoredAnswer) -> None:
    """Keep the answer for replays and wake whoever waits for it."""
    session.execute(
        _STORE,
        {
            "user_id": user_id,
            "key": key,
            "fingerprint": print_,
            "status_code": answer.status_code,
            "response": json.dumps(answer.body),
            "channel": RUN_FINISHED_CHANNEL,
            "token": wake_token(user_id, key),
        },
    )


def release(session: Session, user_id: uuid.UUID, key: str, print_: str) -> None:
    """Give the key back (the request failed); a waiter then takes it itself."""
    session.execute(
        _RELEASE,
        {
            "user_id": user_id,
            "key": key,
            "fingerprint": print_,
            "channel": RUN_FINISHED_CHANNEL,
            "token": wake_token(user_id, key),
        },
    )


def delete_expired(session: Session, now: datetime, batch: int = CLEANUP_BATCH) -> int:
    """Delete keys past their 24 h, a batch per statement; returns how many went."""
    total = 0
    while True:
        deleted = session.execute(_CLEANUP, {"now": now, "batch": batch}).rowcount  # type: ignore[attr-defined]
        total += int(deleted or 0)
        if not deleted or deleted < batch:
            return total
