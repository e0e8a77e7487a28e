"""API keys over the API and the CLI, revocation across API processes, CRON_SECRET rotation."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from litestar.testing import TestClient
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.state import API_KEY_CACHE_TTL_S
from app.clock import SYSTEM_CLOCK
from app.models import ApiKey
from app.services import keys
from app.settings import Settings
from tests.support.fixtures import Account

pytestmark = pytest.mark.timeout(120)

AppClient = TestClient  # type: ignore[type-arg]


@pytest.fixture
def second_client(settings: Settings) -> Iterator[AppClient]:
    """Another API process: its own app, its own key cache, the same database."""
    from api.app import create_app

    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_a_created_key_is_shown_once_then_listed_without_it(
    client: AppClient, make_account: Callable[..., Account]
) -> None:
    account = make_account()
    created = client.post("/api/keys", json={"name": "ci"}, headers=account.headers)
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "key", "prefix", "name", "createdAt", "lastUsedAt", "revokedAt"}
    assert body["key"].startswith("ask_")
    assert body["key"].startswith(body["prefix"])
    assert body["name"] == "ci"
    assert body["createdAt"].endswith("Z")
    assert body["revokedAt"] is None

    # The new key works, and the list shows both keys, newest first, never a key itself.
    listed = client.get("/api/keys", headers={"Authorization": f"Bearer {body['key']}"})
    assert listed.status_code == 200, listed.text
    items = listed.json()["items"]
    assert items[0]["id"] == body["id"]
    assert len(items) == 2
    for item in items:
        assert set(item) == {"id", "prefix", "name", "createdAt", "lastUsedAt", "revokedAt"}
    assert account.key not in listed.text
    assert body["key"] not in listed.text


def test_use_is_recorded_to_the_minute_without_a_write_per_request(
    client: AppClient, make_account: Callable[..., Account], session_factory: sessionmaker[Session]
) -> None:
    account = make_account()
    assert client.get("/api/me", headers=account.headers).status_code == 200
    with session_factory() as session:
        key = session.scalars(select(ApiKey).where(ApiKey.user_id == account.user_id)).one()
        first_use = key.last_used_at
    assert first_use is not None

    # Verifying again within the minute writes nothing; after it, the time moves on.
    now = SYSTEM_CLOCK.now()
    with session_factory.begin() as session:
        keys.verify_key(session, account.key, now + timedelta(seconds=30))
    with session_factory() as session:
        assert session.get(ApiKey, key.id).last_used_at == first_use  # type: ignore[union-attr]
    with session_factory.begin() as session:
        keys.verify_key(session, account.key, now + timedelta(seconds=90))
    with session_factory() as session:
        later = session.get(ApiKey, key.id).last_used_at  # type: ignore[union-attr]
    assert later is not None
    assert later > first_use


def test_a_key_can_be_revoked_by_its_owner_only(
    client: AppClient, make_account: Callable[..., Account]
) -> None:
    owner, other = make_account(), make_account()
    created = client.post("/api/keys", json={"name": "laptop"}, headers=owner.headers).json()

    assert client.delete(f"/api/keys/{created['id']}", headers=other.headers).status_code == 404
    assert client.delete(f"/api/keys/{uuid.uuid4()}", headers=owner.headers).status_code == 404
    new_key = {"Authorization": f"Bearer {created['key']}"}
    assert client.get("/api/me", headers=new_key).status_code == 200

    revoked = client.delete(f"/api/keys/{created['id']}", headers=owner.headers)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["revokedAt"] is not None
    # At once on the process that revoked it, though it had the key in its cache.
    assert client.get("/api/me", headers=new_key).status_code == 401
    listed = client.get("/api/keys", headers=owner.headers).json()["items"]
    assert {item["id"]: item["revokedAt"] is not None for item in listed}[created["id"]] is True


def test_revocation_reaches_another_api_process_within_ten_seconds(
    client: AppClient, second_client: AppClient, make_account: Callable[..., Account]
) -> None:
    account = make_account()
    created = client.post("/api/keys", json={"name": "shared"}, headers=account.headers).json()
    key = {"Authorization": f"Bearer {created['key']}"}
    assert second_client.get("/api/me", headers=key).status_code == 200  # now in its cache

    assert client.delete(f"/api/keys/{created['id']}", headers=account.headers).status_code == 200
    revoked_at = time.monotonic()
    while second_client.get("/api/me", headers=key).status_code == 200:
        assert time.monotonic() - revoked_at < API_KEY_CACHE_TTL_S + 2, "still accepted after 10 s"
        time.sleep(0.25)
    assert time.monotonic() - revoked_at <= API_KEY_CACHE_TTL_S + 2
    assert API_KEY_CACHE_TTL_S <= 10


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x" * 101}, "name"),
        ({"name": "a\u0000b"}, "name"),
        ({"name": "a\u0085b"}, "name"),
        ({"name": 5}, "name"),
        ({"name": "ci", "scopes": ["all"]}, "scopes"),
    ],
)
def test_a_bad_key_name_is_a_400_that_names_it(
    client: AppClient, make_account: Callable[..., Account], body: dict[str, object], field: str
) -> None:
    account = make_account()
    answer = client.post("/api/keys", json=body, headers=account.headers)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_input"
    assert field in str(answer.json()["fields"])


def test_keys_need_an_api_key(client: AppClient) -> None:
    assert client.get("/api/keys").status_code == 401
    assert client.post("/api/keys", json={"name": "x"}).status_code == 401


def test_either_of_two_cron_secrets_is_accepted_during_a_rotation(settings: Settings) -> None:
    from api.app import create_app

    rotating = settings.model_copy(update={"cron_secret": SecretStr("old-secret, new-secret")})
    with TestClient(create_app(rotating)) as test_client:
        tries = [("old-secret", 200), ("new-secret", 200), ("other", 401), ("old-secret,", 401)]
        for secret, status in tries:
            answer = test_client.get(
                "/api/cron/check-scheduled-tasks", headers={"Authorization": f"Bearer {secret}"}
            )
            assert answer.status_code == status, (secret, answer.text)


def test_the_keys_operations_are_documented(client: AppClient) -> None:
    document = client.get("/schema/openapi.json").json()
    operations = document["paths"]
    create = operations["/api/keys"]["post"]
    assert create["security"] == [{"apiKey": []}]
    assert {"201", "400", "401"} <= set(create["responses"])
    body = create["requestBody"]["content"]["application/json"]["schema"]
    schema = document["components"]["schemas"][body["$ref"].rsplit("/", 1)[1]]
    assert schema["properties"]["name"]["maxLength"] == 100
    assert schema.get("additionalProperties") is False
    assert {"200", "401"} <= set(operations["/api/keys"]["get"]["responses"])
    assert {"200", "401", "404"} <= set(operations["/api/keys/{key_id}"]["delete"]["responses"])
