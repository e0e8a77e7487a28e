"""Response shapes of the webhook endpoints (documented in OpenAPI)."""

from __future__ import annotations

from typing import Literal, TypedDict


class WebhookSecret(TypedDict):
    #: `whsec_<base64 of 32 random bytes>`, shown this once.
    secret: str


class DeliveryView(TypedDict):
    id: str
    event: Literal["run.completed", "run.failed", "run.cancelled", "run.skipped"]
    url: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    lastStatusCode: int | None
    lastError: str | None
    nextAttemptAt: str | None
    deliveredAt: str | None


class DeliveryList(TypedDict):
    items: list[DeliveryView]
