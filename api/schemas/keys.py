"""Request and response shapes of `/api/keys` (typed, so OpenAPI documents them)."""

from __future__ import annotations

from typing import Annotated, TypedDict

from pydantic import Field, StringConstraints

from api.schemas.requests import RequestBody
from api.schemas.responses import Id, IsoTime
from app.models import ApiKey
from app.services.keys import KEY_NAME_MAX_CHARS
from app.wire import iso

#: No control characters (Unicode's Cc, NUL included): the rule of `app.services.keys.check_key_name`.
NO_CONTROL_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f]*$"

KeyName = Annotated[
    str,
    StringConstraints(max_length=KEY_NAME_MAX_CHARS, pattern=NO_CONTROL_PATTERN),
    Field(description="A label for the key, e.g. `laptop` or `ci` (default empty).", examples=["ci"]),
]


class CreateKeyBody(RequestBody):
    name: KeyName = ""


class KeyView(TypedDict):
    """A key as its owner sees it after its creation: its first characters, never the key."""

    id: Id
    prefix: str
    name: str
    createdAt: IsoTime
    lastUsedAt: IsoTime | None
    revokedAt: IsoTime | None


class CreatedKey(KeyView):
    """A new key: `key` is shown this once and can never be read again."""

    key: str


class KeyList(TypedDict):
    items: list[KeyView]


def key_view(key: ApiKey) -> KeyView:
    return KeyView(
        id=str(key.id),
        prefix=key.prefix,
        name=key.name,
        createdAt=iso(key.created_at),
        lastUsedAt=iso(key.last_used_at),
        revokedAt=iso(key.revoked_at),
    )


def created_key(key: ApiKey, secret: str) -> CreatedKey:
    return CreatedKey(**key_view(key), key=secret)
