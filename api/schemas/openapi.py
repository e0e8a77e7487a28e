"""The OpenAPI document: security schemes, the documented error answers, offline Swagger UI.

Handlers declare `security=API_KEY_SECURITY` (or `CRON_SECURITY`) and
`responses=errors(400, 401, ...)`: each status is documented with our error body, so a client
generated from `/schema/openapi.json` knows every answer an operation gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Annotated, Any, get_args, get_origin

import swagger_ui_bundle  # type: ignore[import-untyped]  # (no type hints shipped)
from litestar import Router
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    Parameter,
    PathItem,
    Reference,
    Schema,
    SecurityScheme,
)
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


def _constraints_of(field: Any) -> dict[str, Any]:
    """A pydantic field's `pattern` and `min_length`/`max_length`, wherever its type has them."""
    sources = list(field.metadata)
    for arg in get_args(field.annotation):  # `Annotated[str, ...] | None`
        if get_origin(arg) is Annotated:
            sources.extend(get_args(arg)[1:])
    found: dict[str, Any] = {}
    for meta in list(sources):  # a nested `Field(...)` keeps its constraints in `metadata`
        sources.extend(getattr(meta, "metadata", None) or [])
    for meta in sources:
        for name in ("pattern", "min_length", "max_length"):
            value = getattr(meta, name, None)
            if value is not None:
                found.setdefault(name, value)
        extra = getattr(meta, "json_schema_extra", None)
        if isinstance(extra, dict):
            for name in ("enum", "format"):
                if name in extra:
                    found.setdefault(name, extra[name])
    return found


def _complete_property(prop: Schema, constraints: Mapping[str, Any]) -> None:
    """Put the constraints on the non-null members of an (optional) property's schema."""
    for part in prop.one_of or [prop]:
        if not isinstance(part, Schema):
            continue
        if part.type == "string":
            part.enum = constraints.get("enum", part.enum)
            part.format = constraints.get("format", part.format)
            part.pattern = constraints.get("pattern", part.pattern)
            part.min_length = constraints.get("min_length", part.min_length)
            part.max_length = constraints.get("max_length", part.max_length)
        elif part.type == "array":
            part.min_items = constraints.get("min_length", part.min_items)
            part.max_items = constraints.get("max_length", part.max_items)


class ClosedModelsSchemaPlugin(PydanticSchemaPlugin):
    """Litestar's pydantic schemas, completed: models that forbid unknown fields say so
    (`additionalProperties: false`), and the constraints of optional fields (patterns, lengths)
    are kept (Litestar drops them there)."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Any:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        model = field_definition.annotation
        config: Mapping[str, Any] = getattr(model, "model_config", {})
        registered = schema_creator.schema_registry.get_schema_for_field_definition(field_definition)
        if config.get("extra") == "forbid":
            registered.additional_properties = False
        for name, field in getattr(model, "model_fields", {}).items():
            prop = (registered.properties or {}).get(field.alias or name)
            constraints = _constraints_of(field)
            if constraints and isinstance(prop, Schema):
                _complete_property(prop, constraints)
        return schema


def _complete_paths(paths: Mapping[str, PathItem]) -> None:
    """What Litestar cannot be told per operation.

    - api.query drops `name=` from query strings (empty counts as unset), so a parameter that
      may be omitted may also be sent empty: `allowEmptyValue` says so.
    - The 400 Litestar adds to every operation with parameters is in our error body.
    """
    error_body = Reference(ref="#/components/schemas/ErrorBody")
    for item in paths.values():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            for parameter in operation.parameters or []:
                if (
                    isinstance(parameter, Parameter)
                    and parameter.param_in == "query"
                    and not parameter.required
                ):
                    parameter.allow_empty_value = True
            bad_request = (operation.responses or {}).get("400")
            for media in (getattr(bad_request, "content", None) or {}).values():
                if isinstance(media.schema, Schema) and "status_code" in (media.schema.properties or {}):
                    media.schema = error_body
                    bad_request.description = ERROR_DESCRIPTIONS[400]  # type: ignore[union-attr]


@dataclass
class _Document(OpenAPI):
    """The document Litestar builds, completed as its paths are set."""

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "paths" and value:
            _complete_paths(value)


@dataclass
class _Config(OpenAPIConfig):
    def to_openapi_schema(self) -> OpenAPI:
        built = super().to_openapi_schema()
        return _Document(**{item.name: getattr(built, item.name) for item in fields(built) if item.init})


def openapi_config() -> OpenAPIConfig:
    assets = DOCS_ASSETS_PATH
    swagger = SwaggerRenderPlugin(
        js_url=f"{assets}/swagger-ui-bundle.js",
        css_url=f"{assets}/swagger-ui.css",
        standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
        favicon=f"<link rel='icon' type='image/png' href='{assets}/favicon-32x32.png'>",
        path=["/", "/swagger"],
    )
    return _Config(
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
