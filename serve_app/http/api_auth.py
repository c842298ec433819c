"""Optional Bearer API keys for the HTTP API.

The keys live in this module's state, set by the ingress replica at start (`set_api_keys`) and
read by the ingress's HTTP middleware before any body is parsed. They are kept here, not as a
global of serve_app.http.ingress, because Serve copies the ingress class by value when it builds the
deployment: a global assigned from its methods would not be the one the middleware reads.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from serve_app.http.errors import OpenAIError

_keys: frozenset[str] = frozenset()


def set_api_keys(keys: Iterable[str]) -> None:
    """Accept these keys from now on (none: the API is open)."""
    global _keys
    _keys = frozenset(keys)


def authorized(path: str, headers: Mapping[str, str]) -> bool:
    """Whether a request may proceed: always for non-/v1/ paths (health) or with no keys set;
    else it needs `Authorization: Bearer <a key>`, compared in constant time."""
    if not _keys or "/v1/" not in path:
        return True
    scheme, _, token = headers.get("authorization", "").partition(" ")
    # compare with every key, so the time taken does not tell which prefix matched
    return scheme.lower() == "bearer" and any([hmac.compare_digest(token, key) for key in _keys])


class RequireApiKey:
    """ASGI middleware: 401 in OpenAI's shape for a missing or wrong key on /v1/ routes
    (`authorized`), on the headers alone, before any of the body is read. Plain ASGI rather
    than Starlette's `BaseHTTPMiddleware`, which runs every request through task groups and
    memory streams."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not authorized(scope["path"], Headers(scope=scope)):
            err = OpenAIError(401, "missing or incorrect API key (send Authorization: Bearer <key>)",
                              code="invalid_api_key")
            await JSONResponse(err.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)
