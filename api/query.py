"""Empty query values count as unset (`?status=&limit=`, as HTML forms send blank fields).

The same rule as for environment variables (CONTRACT "Configuration"): a parameter given with
no value is dropped from the query string before any handler parses it, so it takes its
default instead of failing validation.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Empty, Receive, Scope, Send
from litestar.utils.scope.state import ScopeState


def drop_empty_values(query_string: bytes) -> bytes:
    """The query string without its `name=` (and bare `name`) parameters."""
    kept = [part for part in query_string.split(b"&") if part.partition(b"=")[2]]
    return b"&".join(kept)


class EmptyQueryValuesMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        query_string = scope.get("query_string", b"")
        if query_string:
            cleaned = drop_empty_values(query_string)
            if cleaned != query_string:
                scope["query_string"] = cleaned
                state = ScopeState.from_scope(scope)
                if state.parsed_query is not Empty:  # parsed already: drop them there too
                    state.parsed_query = tuple((name, value) for name, value in state.parsed_query if value)
        await next_app(scope, receive, send)
