"""Fixtures of the unit tests: the OpenAI-protocol stub on 127.0.0.1 and a provider for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.providers.openai import OpenAIProvider
from tests.support.openai_calls import make_provider
from tests.support.openai_stub import OpenAIStub


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as running:
        yield running


@pytest.fixture
def provider(stub: OpenAIStub) -> Iterator[OpenAIProvider]:
    with make_provider(stub.base_url) as client:
        yield client
