"""Cases generated from the live OpenAPI document (schemathesis' pytest plugin), checked against
the document: statuses, bodies, content types, headers, no 5xx.

Bounded to a few examples per operation so it finishes in well under a minute; the full run
(`schemathesis run --checks all`, thousands of cases) is in benchmarks/README.md.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

import tests.support.schemathesis_hooks  # noqa: F401  (formats and the webhook-URL hook)
from tests.e2e.conftest import free_port, wait_until

CRON_SECRET = "schemathesis-cron-secret"
CRON_PATHS = ("/api/cron/", "/api/queue/")

pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def live_api(spawn, make_account):
    """uvicorn on a free port with a real worker; yields (base URL, API key)."""
    port = free_port()
    env = {
        "CRON_SECRET": CRON_SECRET,
        "API_RATE_LIMIT": "0",
        "CRON_RATE_LIMIT": "0",
        "WEBHOOK_ALLOW_PRIVATE": "true",
    }
    api = spawn("api", "-m", "uvicorn", "api.app:app", "--port", str(port), "--log-level", "warning", env=env)
    spawn("worker", "-m", "dramatiq", "actors", "--processes", "1", "--threads", "2", env=env)
    base_url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert api.popen.poll() is None, api.log()
        try:
            return httpx.get(f"{base_url}/api/health", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, timeout_s=60, what="API start", logs=api.log)
    return base_url, make_account().key


@pytest.fixture
def api_schema(live_api, request):
    base_url, _ = live_api
    # schemathesis 4.32's lazy loader reads `node._nodeid`, which pytest 9 no longer has.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    return schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case, live_api):
    _, key = live_api
    secret = CRON_SECRET if case.path.startswith(CRON_PATHS) else key
    case.call_and_validate(headers={"Authorization": f"Bearer {secret}"}, timeout=70)
