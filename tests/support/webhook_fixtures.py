"""Fixtures of the webhook tests: settings that allow loopback receivers, a receiver, a client."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from litestar.testing import TestClient

from app.settings import Settings, load_settings
from tests.support.webhook_receiver import Receiver, serve


def webhook_settings(**overrides: object) -> Settings:
    """Test settings; receivers listen on 127.0.0.1, so private addresses are allowed unless a
    test says otherwise. Backoff is short so retries happen within a test."""
    values: dict[str, object] = {
        "webhook_allow_private": True,
        "webhook_min_backoff_ms": 300,
        "webhook_max_backoff_ms": 5_000,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def hook_settings() -> Settings:
    return webhook_settings()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from serve(Receiver())


@pytest.fixture
def hook_client(hook_settings: Settings) -> Iterator[TestClient]:  # type: ignore[type-arg]
    from api.app import create_app

    with TestClient(create_app(hook_settings)) as test_client:
        yield test_client


@pytest.fixture
def use_delivery_environment() -> Iterator[Callable[..., None]]:
    """Swap this process's delivery environment (timeout, resolver) for one test."""
    from actors.webhooks import set_delivery_environment

    yield set_delivery_environment
    set_delivery_environment(None)
