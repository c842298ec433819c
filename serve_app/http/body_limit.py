"""Request body size limit for the HTTP API: 413 in OpenAI's shape before the body is parsed.

The limit lives in this module's state, set by the ingress replica at start
(`set_max_body_bytes`) and read by the ASGI middleware, for the same reason as the API keys
(serve_app.http.api_auth): Serve copies the ingress class by value, so a global of serve_app.http.ingress
assigned from its methods would not be the one the middleware reads.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app.http.errors import OpenAIError

_max_bytes = 4 << 20  # IngressConfig.max_body_bytes' default, until the replica sets its own


def set_max_body_bytes(limit: int) -> None:
    """Answer 413 to request bodies longer than `limit` bytes from now on."""
    global _max_bytes
    _max_bytes = limit


class BodyLimit:
    """ASGI middleware: rejects a too-long declared Content-Length at once, and otherwise reads
    the body (chunked uploads have no Content-Length) counting bytes, stopping at the limit.
    A body within the limit is handed on whole, as one message."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _max_bytes
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nobody to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # stop reading here: the rest of the body is never buffered
                await _too_large(limit)(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        async def replay() -> Message:
            nonlocal body
            if body is None:  # after the body: disconnect notices, for streaming responses
                return await receive()
            message, body = body, None
            return message

        await self.app(scope, replay, send)


def _too_large(limit: int) -> JSONResponse:
    err = OpenAIError(413, f"request body is larger than the limit of {limit} bytes", code="request_too_large")
    # the unread rest of the body makes the connection unusable for a next request
    return JSONResponse(err.body(), status_code=413, headers={"Connection": "close"})
