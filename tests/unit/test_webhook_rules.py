"""Webhook rules without services: addresses, signatures (against `standardwebhooks`), payloads."""

from __future__ import annotations

import base64
import ipaddress
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from app.models import TaskRun
from app.webhooks.addresses import (
    ForbiddenAddress,
    is_forbidden_ip,
    parse_webhook,
    resolve_target,
)
from app.webhooks.payload import RESULT_MAX_BYTES, event_body, truncate_utf8
from app.webhooks.signing import ROTATION_OVERLAP, new_secret, signature_header, signing_secrets


@pytest.mark.parametrize(
    ("address", "forbidden"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),  # cloud metadata
        ("169.254.10.10", True),  # link-local
        ("fe80::1", True),
        ("fd00:ec2::254", True),
        ("100.64.0.1", True),  # carrier-grade NAT
        ("0.0.0.0", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped loopback
        ("224.0.0.1", True),
        ("93.184.216.34", False),
        ("8.8.8.8", False),
        ("2606:4700:4700::1111", False),
    ],
)
def test_which_addresses_webhooks_may_not_reach(address, forbidden):
    assert is_forbidden_ip(ipaddress.ip_address(address)) is forbidden


def fixed(*ips: str):
    return lambda host, port: list(ips)


def test_a_name_that_resolves_to_loopback_is_refused_and_allowed_with_the_setting():
    with pytest.raises(ForbiddenAddress):
        resolve_target("https://hooks.example.com/x", allow_private=False, resolver=fixed("127.0.0.1"))
    # one private answer among public ones is enough to refuse
    with pytest.raises(ForbiddenAddress):
        resolve_target(
            "https://hooks.example.com/x", allow_private=False, resolver=fixed("8.8.8.8", "10.0.0.1")
        )
    target = resolve_target(
        "https://hooks.example.com:8443/x?a=1", allow_private=True, resolver=fixed("127.0.0.1")
    )
    assert (target.ip, target.port, target.host, target.target) == (
        "127.0.0.1",
        8443,
        "hooks.example.com",
        "/x?a=1",
    )
    public = resolve_target("http://hooks.example.com", allow_private=False, resolver=fixed("93.184.216.34"))
    assert (public.ip, public.port, public.target) == ("93.184.216.34", 80, "/")


def test_localhost_is_refused_by_the_system_resolver():
    _, problems = parse_webhook({"url": "http://localhost:9/hook"}, allow_private=False)
    assert "127.0.0.1" in problems["webhook.url"] or "::1" in problems["webhook.url"]


@pytest.mark.parametrize(
    ("value", "field", "fragment"),
    [
        ({"url": "ftp://93.184.216.34/x"}, "webhook.url", "http:// or https://"),
        ({"url": "http://93.184.216.34/" + "a" * 2000}, "webhook.url", "at most 2,000"),
        ({"url": ""}, "webhook.url", "required"),
        ({}, "webhook.url", "required"),
        ({"url": "http://user:pw@93.184.216.34/"}, "webhook.url", "credentials"),
        ({"url": "http://127.0.0.1:8080/"}, "webhook.url", "loopback"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "webhook.url", "metadata"),
        ({"url": "http://93.184.216.34/", "events": ["run.done"]}, "webhook.events", "run.done"),
        ({"url": "http://93.184.216.34/", "events": []}, "webhook.events", "non-empty"),
        ({"url": "http://93.184.216.34/", "events": "run.failed"}, "webhook.events", "list"),
        ({"url": "http://93.184.216.34/", "secret": "x"}, "webhook.secret", "unknown"),
        ("http://93.184.216.34/", "webhook", "object"),
    ],
)
def test_invalid_webhooks_name_the_field(value, field, fragment):
    config, problems = parse_webhook(value, allow_private=False)
    assert config is None
    assert fragment in problems[field]


def test_a_valid_webhook_defaults_to_completed_and_failed():
    config, problems = parse_webhook({"url": " https://93.184.216.34/h "}, allow_private=False)
    assert problems == {}
    assert config is not None
    assert config.url == "https://93.184.216.34/h"
    assert config.events == ("run.completed", "run.failed")
    config, _ = parse_webhook({"url": "http://127.0.0.1/", "events": ["run.skipped"]}, allow_private=True)
    assert config is not None
    assert config.events == ("run.skipped",)


def test_our_signature_verifies_with_the_standardwebhooks_library():
    secret = new_secret()
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    msg_id, body = (
        str(uuid.uuid4()),
        json.dumps({"type": "run.completed", "data": {"ü": 1}}, ensure_ascii=False),
    )
    now = int(datetime.now(UTC).timestamp())
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(now)}
    headers["webhook-signature"] = signature_header([secret], msg_id, now, body)
    assert Webhook(secret).verify(body.encode(), headers) == json.loads(body)
    assert headers["webhook-signature"] == Webhook(secret).sign(
        msg_id, datetime.fromtimestamp(now, UTC), body
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body.encode(), headers)
    tampered = {**headers, "webhook-id": str(uuid.uuid4())}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.encode(), tampered)


def test_two_signatures_during_a_rotation_each_verify():
    old, new = new_secret(), new_secret()
    now = int(datetime.now(UTC).timestamp())
    header = signature_header([new, old], "msg", now, "{}")
    assert len(header.split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(
            "{}", {"webhook-id": "msg", "webhook-timestamp": str(now), "webhook-signature": header}
        )


def test_the_previous_secret_signs_for_24_hours_after_a_rotation():
    rotated = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    until = rotated + ROTATION_OVERLAP
    assert signing_secrets("new", "old", until, rotated + timedelta(hours=23, minutes=59)) == ["new", "old"]
    assert signing_secrets("new", "old", until, rotated + timedelta(hours=24)) == ["new"]
    assert signing_secrets(None, None, None, rotated) == []


def test_a_result_over_64_kb_is_truncated_in_the_payload_with_a_flag():
    run = TaskRun(
        id=uuid.uuid4(),
        task_id=uuid.uuid4(),
        trigger="api",
        status="completed",
        priority="medium",
        attempts=1,
        max_attempts=4,
        queued_at=datetime(2026, 12, 1, tzinfo=UTC),
        finished_at=datetime(2026, 12, 1, 0, 1, tzinfo=UTC),
        tokens_used=10,
        credits_used=1,
        result="é" * 40_000,  # 80,000 bytes
    )
    body = json.loads(event_body("run.completed", run.finished_at, run))
    assert body["type"] == "run.completed"
    assert body["timestamp"] == "2026-12-01T00:01:00.000Z"
    assert body["data"]["resultTruncated"] is True
    assert len(body["data"]["result"].encode()) == RESULT_MAX_BYTES
    run.result = "short"
    assert json.loads(event_body("run.completed", run.finished_at, run))["data"]["resultTruncated"] is False
    assert truncate_utf8("aé", 2) == ("a", True)


def test_secrets_are_sealed_with_the_configured_key_and_the_key_can_rotate():
    from cryptography.fernet import Fernet

    from app.webhooks.secret_store import SecretUnavailable, reveal, seal

    secret, old_key, new_key = new_secret(), Fernet.generate_key().decode(), Fernet.generate_key().decode()
    assert seal(secret, None) == secret  # no key: stored as is
    assert reveal(secret, old_key) == secret
    stored = seal(secret, old_key)
    assert stored.startswith("fernet:")
    assert secret not in stored
    assert reveal(stored, old_key) == secret
    assert reveal(stored, f"{new_key},{old_key}") == secret  # rotated: the old key still opens it
    assert reveal(seal(secret, f"{new_key},{old_key}"), new_key) == secret  # the first key seals
    with pytest.raises(SecretUnavailable):
        reveal(stored, new_key)
    with pytest.raises(SecretUnavailable):
        reveal(stored, None)


def test_a_wrong_webhook_secrets_key_stops_the_process_naming_it():
    from app.errors import ConfigurationError
    from app.settings import load_settings

    with pytest.raises(ConfigurationError, match="WEBHOOK_SECRETS_KEY"):
        load_settings(webhook_secrets_key="not-a-key")


def test_the_payload_carries_the_run_view():
    """`data` is the run as GET /api/runs/{id} shows it (CONTRACT "Webhooks"), plus resultTruncated."""
    from api.schemas.views import run_view

    run = TaskRun(
        id=uuid.uuid4(),
        task_id=uuid.uuid4(),
        trigger="schedule",
        scheduled_for=datetime(2026, 12, 1, 9, tzinfo=UTC),
        status="failed",
        priority="high",
        attempts=5,  # one past the last: the view caps it
        max_attempts=4,
        queued_at=datetime(2026, 12, 1, 9, tzinfo=UTC),
        started_at=datetime(2026, 12, 1, 9, 0, 1, 500_000, tzinfo=UTC),
        finished_at=datetime(2026, 12, 1, 9, 1, tzinfo=UTC),
        tokens_used=90,
        prompt_tokens=60,
        completion_tokens=30,
        cached_tokens=20,
        step_count=3,
        credits_used=2,
        tokens_over_budget=7,
        result=None,
        error={"code": "provider_error", "message": "x"},
    )
    data = json.loads(event_body("run.failed", run.finished_at, run))["data"]
    assert data.pop("resultTruncated") is False
    assert data == json.loads(json.dumps(run_view(run)))
