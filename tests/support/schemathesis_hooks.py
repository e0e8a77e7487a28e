"""Schemathesis hooks for what no JSON Schema keyword can say.

- `format: cron`: an expression must parse (app.cron); the strategy generates ones that do.
- A webhook URL's host must resolve (and, unless WEBHOOK_ALLOW_PRIVATE, to a public address):
  generated host names do not resolve, so a URL that the schema accepts is pointed at a
  loopback receiver before it is sent (the server under test runs with
  WEBHOOK_ALLOW_PRIVATE=true). URLs the schema refuses are sent as generated.
- An `Idempotency-Key` sent again with another body is a documented 422: a key the schema
  accepts is made unique to its case, so a valid case is never refused for a key an earlier
  case used. Keys the schema refuses are sent as generated.

Positive cases are therefore valid, and negative cases still come from the rest of the schema.

Load with `SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks` (CLI) or import (pytest).
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import schemathesis
from hypothesis import strategies as st

from api.schemas.requests import WEBHOOK_URL_MAX_CHARS, WEBHOOK_URL_PATTERN

RECEIVER = "127.0.0.1:9"

MINUTES = ("*", "0", "30", "*/15", "0-59/5", "5,35", "59")
HOURS = ("*", "0", "9", "9-17", "*/6", "23")
DAYS = ("*", "1", "15", "1-7", "28", "31")
MONTHS = ("*", "1", "*/3", "JAN-JUN", "12", "FEB")
WEEKDAYS = ("*", "1-5", "MON", "0", "SAT,SUN", "7", "SUN-SAT")

cron_expressions = st.builds(
    lambda *fields: " ".join(fields),
    st.sampled_from(MINUTES),
    st.sampled_from(HOURS),
    st.sampled_from(DAYS),
    st.sampled_from(MONTHS),
    st.sampled_from(WEEKDAYS),
).filter(lambda expr: not (" 31 " in expr and (" FEB " in expr or " */3 " in expr)))

#: Webhook receivers on the loopback: the server under test runs with WEBHOOK_ALLOW_PRIVATE=true.
webhook_urls = st.builds(lambda n: f"http://127.0.0.1:9/hooks/{n}", st.integers(0, 10_000))


def _resolvable(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return urlunsplit(parts._replace(netloc=RECEIVER))


#: A key the schema accepts (1..255 visible ASCII characters).
IDEMPOTENCY_KEY = re.compile(r"[!-~]{1,255}")


def _unique_key(key: str) -> str:
    suffix = f"-{uuid.uuid4().hex}"
    return key[: 255 - len(suffix)] + suffix


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: Any) -> None:
    for name, value in list((case.headers or {}).items()):
        if name.lower() == "idempotency-key" and isinstance(value, str) and IDEMPOTENCY_KEY.fullmatch(value):
            case.headers[name] = _unique_key(value)
    webhook = case.body.get("webhook") if isinstance(case.body, dict) else None
    url = webhook.get("url") if isinstance(webhook, dict) else None
    if isinstance(url, str) and len(url) <= WEBHOOK_URL_MAX_CHARS and re.search(WEBHOOK_URL_PATTERN, url):
        webhook["url"] = _resolvable(url)


def register() -> None:
    schemathesis.openapi.format("cron", cron_expressions)
    schemathesis.openapi.format("uri", webhook_urls)


register()
