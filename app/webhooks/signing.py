"""Signing secrets (`whsec_<base64 of 32 random bytes>`) and the `webhook-signature` header.

A signature is `v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">`, keyed
with the secret's decoded bytes (Standard Webhooks, symmetric scheme). After a rotation the
previous secret signs too, for `ROTATION_OVERLAP`: the header then carries two signatures,
space-separated, and a receiver that still has the old secret keeps verifying.

HMAC needs the secret itself, so a hash would not do: `users.webhook_secret` holds it encrypted
with WEBHOOK_SECRETS_KEY when that is set, else as is (`secret_store`). It is shown to its user
once, when created.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.models import User
from app.webhooks.secret_store import reveal, seal

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
#: After a rotation the old secret signs alongside the new one this long.
ROTATION_OVERLAP = timedelta(hours=24)


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret: its base64 part, decoded."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    digest = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(signing_secrets: Sequence[str], msg_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` value: one signature per secret, space-separated."""
    return " ".join(signature(secret, msg_id, timestamp, body) for secret in signing_secrets)


def rotate_secret(
    session: Session, user_id: uuid.UUID, now: datetime, *, key_setting: str | None = None
) -> str:
    """Create the user's secret, or replace it (the old one signs for 24 h more). Shown once.

    `key_setting` is WEBHOOK_SECRETS_KEY (`Settings.webhook_secrets_key_value`)."""
    user = session.scalar(select(User).where(User.id == user_id).with_for_update())
    if user is None:
        raise NotFound("user not found")
    secret = new_secret()
    if user.webhook_secret is not None:
        user.webhook_secret_previous = user.webhook_secret
        user.webhook_secret_previous_until = now + ROTATION_OVERLAP
    user.webhook_secret = seal(secret, key_setting)
    session.flush()
    return secret


def signing_secrets(
    current: str | None,
    previous: str | None,
    previous_until: datetime | None,
    now: datetime,
    *,
    key_setting: str | None = None,
) -> list[str]:
    """The secrets that sign a delivery at `now` (from their stored forms): the current one,
    and the previous one while its overlap lasts. `SecretUnavailable` when one cannot be opened."""
    found = [current] if current else []
    if previous and previous_until is not None and now < previous_until:
        found.append(previous)
    return [secret for secret in (reveal(stored, key_setting) for stored in found) if secret]
