"""Request and response shapes of `/api/keys` (typed, so OpenAPI documents them)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import msgspec

from app.models import ApiKey
from app.services.keys import KEY_NAME_MAX_CHARS

#: No control characters (NUL included): the same rule as `app.services.keys.check_key_name`.
KeyName = Annotated[
    str,
    msgspec.Meta(
        max_length=KEY_NAME_MAX_CHARS,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="a label for the key, e.g. 'laptop' or 'ci'",
        examples=["ci"],
    ),
]


class CreateKeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    name: KeyName = ""


class KeyView(msgspec.Struct, rename="camel"):
    """A key as its owner sees it later: never the key itself, only its first characters."""

    id: uuid.UUID
    prefix: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class CreatedKey(msgspec.Struct, rename="camel"):
    """A new key: `key` is shown this once and cannot be read again."""

    id: uuid.UUID
    key: str
    prefix: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class KeyList(msgspec.Struct, rename="camel"):
    items: list[KeyView]


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


def key_view(key: ApiKey) -> KeyView:
    return KeyView(
        id=key.id,
        prefix=key.prefix,
        name=key.name,
        created_at=key.created_at.astimezone(UTC),
        last_used_at=_utc(key.last_used_at),
        revoked_at=_utc(key.revoked_at),
    )


def created_key(key: ApiKey, secret: str) -> CreatedKey:
    view = key_view(key)
    return CreatedKey(
        id=view.id,
        key=secret,
        prefix=view.prefix,
        name=view.name,
        created_at=view.created_at,
        last_used_at=view.last_used_at,
        revoked_at=view.revoked_at,
    )
