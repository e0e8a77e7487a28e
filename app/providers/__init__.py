"""Model providers: `openai` (any OpenAI-compatible Chat Completions endpoint) and `offline`."""

from __future__ import annotations

import logging

from app.providers.base import ChatMessage, Completion, ModelProvider
from app.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["ChatMessage", "Completion", "ModelProvider", "make_provider"]


def make_provider(settings: Settings) -> ModelProvider:
    """The provider the settings name; logs which one, so an operator can tell at start."""
    if settings.provider_name == "openai":
        from app.providers.openai import OpenAIProvider

        provider: ModelProvider = OpenAIProvider(
            base_url=settings.provider_base_url,
            api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
            default_model=settings.llm_model,
            stream=settings.llm_stream,
        )
        logger.info(
            "model provider: openai-compatible at %s, model %s",
            settings.provider_base_url,
            settings.llm_model,
        )
    else:
        from app.providers.offline import OfflineProvider

        provider = OfflineProvider()
        logger.info(
            "model provider: offline (deterministic, no network; "
            "set LLM_API_KEY or LLM_BASE_URL for a real model)"
        )
    from app.providers.ratelimit import rate_limited

    if settings.llm_rpm or settings.llm_tpm:
        logger.info(
            "provider budget: LLM_RPM=%s LLM_TPM=%s, shared through Redis", settings.llm_rpm, settings.llm_tpm
        )
    return rate_limited(provider, rpm=settings.llm_rpm, tpm=settings.llm_tpm, redis_url=settings.broker_url)
