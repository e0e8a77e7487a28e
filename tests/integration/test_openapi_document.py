"""The OpenAPI document is the API: bodies, statuses, error shape, security, OPTIONS, offline docs."""

from __future__ import annotations

import re
import uuid

import pytest

#: (path, method) -> statuses the operation really answers (besides 429 for rate limits).
ANSWERS = {
    ("/api/agent/execute", "post"): {"200", "201", "202", "400", "401", "413", "422", "503"},
    ("/api/tasks", "get"): {"200", "400", "401", "503"},
    ("/api/tasks/{task_id}", "get"): {"200", "401", "404", "503"},
    ("/api/tasks/{task_id}", "patch"): {"200", "400", "401", "404", "413", "503"},
    ("/api/tasks/{task_id}/run", "post"): {"202", "401", "404", "409", "422", "503"},
    ("/api/tasks/{task_id}/cancel", "post"): {"200", "401", "404", "503"},
    ("/api/tasks/{task_id}/runs", "get"): {"200", "400", "401", "404", "503"},
    ("/api/runs/{run_id}", "get"): {"200", "401", "404", "503"},
    ("/api/me", "get"): {"200", "401", "503"},
    ("/api/schedules/preview", "get"): {"200", "400", "401", "503"},
    ("/api/cron/check-scheduled-tasks", "get"): {"200", "401", "503"},
    ("/api/cron/check-scheduled-tasks", "post"): {"200", "401", "503"},
    ("/api/queue/stats", "get"): {"200", "401", "503"},
    ("/api/health", "get"): {"200", "503"},
}
CRON_OPERATIONS = {
    ("/api/cron/check-scheduled-tasks", "get"),
    ("/api/cron/check-scheduled-tasks", "post"),
    ("/api/queue/stats", "get"),
}


@pytest.fixture
def document(client):
    answer = client.get("/schema/openapi.json")
    assert answer.status_code == 200
    return answer.json()


def _resolve(document, schema):
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _body_schema(document, path, method):
    operation = document["paths"][path][method]
    return _resolve(document, operation["requestBody"]["content"]["application/json"]["schema"])


def test_execute_and_patch_document_their_request_bodies(document):
    execute = _body_schema(document, "/api/agent/execute", "post")
    assert set(execute["required"]) == {"goal", "agentType"}
    assert execute["additionalProperties"] is False
    goal = execute["properties"]["goal"]
    assert (goal["minLength"], goal["maxLength"]) == (1, 20_000)
    assert "\\x00" in goal["pattern"]  # NUL is refused by the schema itself
    assert set(execute["properties"]["agentType"]["enum"]) >= {"research_agent", "writer_agent"}
    priority = execute["properties"]["priority"]
    assert {"urgent", "high", "medium", "low"} <= set(priority["enum"])
    config = _resolve(document, execute["properties"]["agentConfig"]["oneOf"][0])
    timeout = config["properties"]["timeout"]
    assert (timeout["type"], timeout["minimum"], timeout["maximum"]) == ("integer", 1000, 3_600_000)
    assert (config["properties"]["maxRetries"]["minimum"], config["properties"]["maxRetries"]["maximum"]) == (
        0,
        10,
    )
    schedule = _resolve(document, execute["properties"]["schedule"]["oneOf"][0])
    assert schedule["properties"]["cron"]["format"] == "cron"
    zones = schedule["properties"]["timezone"]["oneOf"][0]["enum"]
    assert "America/New_York" in zones
    assert "Mars/Base" not in zones

    patch = _body_schema(document, "/api/tasks/{task_id}", "patch")
    assert patch["additionalProperties"] is False
    assert set(patch["properties"]) >= {"title", "priority", "schedule"}
    title = patch["properties"]["title"]["oneOf"][0]
    assert title["minLength"] == 1
    assert "pattern" in title


def test_every_operation_documents_the_statuses_it_answers_with_our_error_body(document):
    for (path, method), statuses in ANSWERS.items():
        responses = document["paths"][path][method]["responses"]
        assert statuses <= set(responses), (path, method, set(responses))
        for status, response in responses.items():
            if int(status) >= 400 and path != "/api/health":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (path, method, status)
    error = document["components"]["schemas"]["ErrorBody"]
    assert set(error["properties"]) == {"error", "message", "fields"}
    assert set(error["required"]) == {"error", "message"}


def test_bearer_schemes_apply_per_operation(document):
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == schemes["apiKey"] | {"type": "http", "scheme": "bearer"}
    assert schemes["cronSecret"] == schemes["cronSecret"] | {"type": "http", "scheme": "bearer"}
    for path, method in ANSWERS:
        security = document["paths"][path][method].get("security")
        if path == "/api/health":
            assert not security
        elif (path, method) in CRON_OPERATIONS:
            assert security == [{"cronSecret": []}], (path, method)
        else:
            assert security == [{"apiKey": []}], (path, method)


def test_posts_are_documented_with_the_status_they_answer(document):
    assert set(document["paths"]["/api/agent/execute"]["post"]["responses"]) >= {"200", "201", "202"}
    assert "201" not in document["paths"]["/api/tasks/{task_id}/run"]["post"]["responses"]
    assert "201" not in document["paths"]["/api/tasks/{task_id}/cancel"]["post"]["responses"]
    assert "201" not in document["paths"]["/api/cron/check-scheduled-tasks"]["post"]["responses"]


def test_query_parameters_are_typed(document):
    preview = {p["name"]: p for p in document["paths"]["/api/schedules/preview"]["get"]["parameters"]}
    assert preview["cron"]["required"] is True
    assert preview["cron"]["schema"]["format"] == "cron"
    assert (preview["count"]["schema"]["minimum"], preview["count"]["schema"]["maximum"]) == (1, 100)
    assert preview["after"]["schema"]["format"] == "date-time"
    assert re.match(preview["after"]["schema"]["pattern"], "2026-03-08T00:00:00Z")
    assert not re.match(preview["after"]["schema"]["pattern"], "9999-12-31T23:59:00Z")
    listing = {p["name"]: p for p in document["paths"]["/api/tasks"]["get"]["parameters"]}
    assert listing["limit"]["schema"]["maximum"] == 100
    assert "completed" in listing["status"]["schema"]["enum"]
    assert all(p["allowEmptyValue"] for p in listing.values())  # empty counts as unset


def test_responses_are_typed(document):
    schemas = document["components"]["schemas"]
    task = schemas["TaskView"]
    assert {"id", "status", "schedule", "nextRunAt", "createdAt"} <= set(task["required"])
    assert "recentRuns" not in task["required"]
    assert task["properties"]["createdAt"]["format"] == "date-time"
    ok = document["paths"]["/api/tasks/{task_id}"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TaskView"}


def test_options_lists_every_method_of_the_path(client):
    task_path = f"/api/tasks/{uuid.uuid4()}"
    allow = client.options(task_path).headers["allow"]
    assert set(allow.split(", ")) == {"GET", "PATCH", "OPTIONS"}
    cron = client.options("/api/cron/check-scheduled-tasks").headers["allow"]
    assert set(cron.split(", ")) == {"GET", "POST", "OPTIONS"}
    refused = client.delete(task_path)
    assert refused.status_code == 405
    assert set(refused.headers["allow"].split(", ")) >= {"GET", "PATCH"}
    assert refused.json()["error"] == "method_not_allowed"


def test_the_api_docs_use_only_assets_the_api_serves(client):
    for page in ("/schema", "/schema/swagger"):
        answer = client.get(page)
        assert answer.status_code == 200
        references = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", answer.text)
        assert references, answer.text
        assert not [url for url in references if "//" in url], references
        for url in references:
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 100, url
    assert "SwaggerUIBundle" in client.get("/schema-assets/swagger-ui-bundle.js").text


@pytest.mark.parametrize(
    ("path", "method"), [("/api/agent/execute", "post"), ("/api/tasks/{task_id}/run", "post")]
)
def test_the_operations_that_take_an_idempotency_key_document_it(document, path, method):
    parameters = document["paths"][path][method]["parameters"]
    key = next(p for p in parameters if p["name"].lower() == "idempotency-key")
    assert (key["in"], key["required"]) == ("header", False)
    schema = key["schema"]
    assert (schema["type"], schema["minLength"], schema["maxLength"]) == ("string", 1, 255)
    assert re.fullmatch(schema["pattern"], "order-42_!~")
    assert not re.fullmatch(schema["pattern"], "has space")
