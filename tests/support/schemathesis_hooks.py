"""Schemathesis hooks: strategies for the string formats our OpenAPI document names.

`format: cron` and webhook `format: uri` values are checked by the domain (a cron that
parses, a URL whose host may receive webhooks), which no
JSON Schema keyword can say; these strategies generate values of that kind, so schemathesis'
positive cases are valid and its negative cases come from the rest of the schema.

Load with `SCHEMATHESIS_HOOKS=tests.support.schemathesis_hooks` (CLI) or import (pytest).
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

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


def register() -> None:
    schemathesis.openapi.format("cron", cron_expressions)
    schemathesis.openapi.format("uri", webhook_urls)


register()
