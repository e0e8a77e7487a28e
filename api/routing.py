"""`OPTIONS` answers with every method of the path.

Litestar creates a path's OPTIONS handler when the first handler of the path is registered; a
handler of another method added to the same path later is missing from that handler's `Allow`
header. This app-level `before_request` hook answers OPTIONS from the app's full route map.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.enums import MediaType
from litestar.status_codes import HTTP_204_NO_CONTENT


def answer_options(request: Request[Any, Any, Any]) -> Response[None] | None:
    """For OPTIONS: 204 with `Allow` listing every method the path answers; else carry on."""
    if request.method != "OPTIONS":
        return None
    methods: set[str] = set()
    for path in request.route_handler.paths:
        methods.update(request.app.route_handler_method_map.get(path, {}))
    methods = {method for method in methods if method.isupper()} | {"OPTIONS"}
    return Response(
        content=None,
        status_code=HTTP_204_NO_CONTENT,
        headers={"Allow": ", ".join(sorted(methods))},
        media_type=MediaType.TEXT,
    )
