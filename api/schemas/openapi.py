"""The OpenAPI document: security schemes, the documented error answers, offline Swagger UI.

Handlers declare `security=API_KEY_SECURITY` (or `CRON_SECURITY`) and
`responses=errors(400, 401, ...)`: each status is documented with our error body, so a client
generated from `/schema/openapi.json` knows every answer an operation gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, get_args, get_origin

import swagger_ui_bundle  # type: ignore[import-untyped]  # (no type hints shipped)
from litestar import Router
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, Schema, SecurityScheme
from litestar.plugins.pydantic import PydanticSchemaPlugin
from litestar.static_files import create_static_files_router
from litestar.typing import FieldDefinition

from api.schemas.responses import ErrorBody

API_KEY_SCHEME = "apiKey"
CRON_SECRET_SCHEME = "cronSecret"
API_KEY_SECURITY: list[dict[str, list[str]]] = [{API_KEY_SCHEME: []}]
CRON_SECURITY: list[dict[str, list[str]]] = [{CRON_SECRET_SCHEME: []}]

#: Where the Swagger UI files (from the swagger-ui-bundle package) are served: no CDN.
DOCS_ASSETS_PATH = "/schema-assets"

ERROR_DESCRIPTIONS: Mapping[int, str] = {
    400: "Invalid input: `fields` names each offending field; nothing was written.",
    401: "Missing or wrong bearer credentials.",
    404: "No such resource (or it belongs to another user).",
    409: "The resource is in a state that does not allow this.",
    413: "The request body is larger than the server accepts.",
    422: "The Idempotency-Key was used before with a different request.",
    429: "Over the rate limit; see Retry-After.",
    503: "Postgres or Redis is unavailable; retry after `Retry-After` seconds.",
}


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """Documented error answers, each with our error body."""
    return {status: answer(ErrorBody, ERROR_DESCRIPTIONS[status]) for status in statuses}


def answer(shape: Any, description: str) -> ResponseSpec:
    """Another success answer of an operation (its main one comes from the return type)."""
    return ResponseSpec(data_container=shape, description=description, generate_examples=False)


def _pattern_of(field: Any) -> str | None:
    """The regex a pydantic field's string must match, wherever its type declares it."""
    sources = list(field.metadata)
    for arg in get_args(field.annotation):  # `Annotated[str, ...] | None`
        if get_origin(arg) is Annotated:
            sources.extend(get_args(arg)[1:])
    for meta in sources:
        pattern = getattr(meta, "pattern", None)
        if isinstance(pattern, str):
            return pattern
    return None


class ClosedModelsSchemaPlugin(PydanticSchemaPlugin):
    """Litestar's pydantic schemas, completed: models that forbid unknown fields say so
    (`additionalProperties: false`), and string patterns are kept (Litestar drops them from
    optional fields)."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Any:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        model = field_definition.annotation
        config: Mapping[str, Any] = getattr(model, "model_config", {})
        registered = schema_creator.schema_registry.get_schema_for_field_definition(field_definition)
        if config.get("extra") == "forbid":
            registered.additional_properties = False
        for name, field in getattr(model, "model_fields", {}).items():
            pattern = _pattern_of(field)
            prop = (registered.properties or {}).get(field.alias or name)
            if pattern is None or not isinstance(prop, Schema):
                continue
            strings = [
                part for part in prop.one_of or [prop] if isinstance(part, Schema) and part.type == "string"
            ]
            for part in strings:
                part.pattern = pattern
        return schema


def openapi_config() -> OpenAPIConfig:
    assets = DOCS_ASSETS_PATH
    swagger = SwaggerRenderPlugin(
        js_url=f"{assets}/swagger-ui-bundle.js",
        css_url=f"{assets}/swagger-ui.css",
        standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{assets}/favicon-32x32.png'>",
        path=["/", "/swagger"],
    )
    return OpenAPIConfig(
        title="agentsched",
        version="0.1.0",
        description=(
            "Run AI-agent tasks now or on cron schedules. Every error answers "
            "`{error, message, fields}`; `fields` (on 400) names each offending field."
        ),
        path="/schema",
        render_plugins=[swagger],
        components=Components(
            security_schemes={
                API_KEY_SCHEME: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="An API key (`ask_...`): `Authorization: Bearer $API_KEY`.",
                ),
                CRON_SECRET_SCHEME: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="The server's CRON_SECRET: `Authorization: Bearer $CRON_SECRET`.",
                ),
            }
        ),
    )


def docs_assets_router() -> Router:
    """The Swagger UI files, served by the API itself."""
    return create_static_files_router(
        path=DOCS_ASSETS_PATH, directories=[swagger_ui_bundle.swagger_ui_path], include_in_schema=False
    )
