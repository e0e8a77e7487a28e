"""Logging, configured once per entry point."""

from __future__ import annotations

import logging
import os

LOG_FORMAT = "%(asctime)s %(levelname)s [%(processName)s %(threadName)s] %(name)s: %(message)s"


def configure_logging(level: str | None = None) -> None:
    # An empty LOG_LEVEL (compose passes an unset `${LOG_LEVEL:-}` so) counts as unset.
    logging.basicConfig(level=(level or os.environ.get("LOG_LEVEL") or "INFO").upper(), format=LOG_FORMAT)
