"""Refuse, before a route runs, what the server must not take in: oversized bodies and NUL.

- A request body over the limit (`AMELIA_MAX_REQUEST_BODY_BYTES`) is a 413 in the error
  envelope, answered before the body is read whole: a declared Content-Length is checked up
  front, a chunked body is counted as it arrives.
- PostgreSQL's TEXT and JSONB cannot hold U+0000. Rather than letting such a value fail deep
  in a write (or fail a background run later), every request is checked once, here: a NUL in
  the query string or anywhere in a JSON body is a 422 that names the problem.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amelia.server.error_handlers import envelope

# What a request body may weigh when no configuration says otherwise.
DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024

_NUL_ESCAPES = (b"\\u0000", b"\\U0000")


def _refusal(where: str) -> HTTPException:
    # The shape of FastAPI's own request-validation errors, so clients handle one 422 format.
    message = "The request contains a NUL character, which cannot be stored"
    return HTTPException(422, [{"type": "nul_character", "loc": [where], "msg": message}])


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


async def refuse_nul_characters(connection: HTTPConnection) -> None:
    """Global dependency: 422 when the query string or the JSON body carries a NUL."""
    if "%00" in connection.url.query or "\x00" in connection.url.path:
        raise _refusal("query")
    if not isinstance(connection, Request) or connection.method in ("GET", "HEAD", "DELETE"):
        return  # WebSocket frames are checked by the stream's own message parser
    request = connection
    body = await request.body()  # cached: the route reads the same bytes
    if b"\x00" not in body and not any(escape in body for escape in _NUL_ESCAPES):
        return
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return  # not JSON: the route's own validation answers
    if _has_nul(parsed):
        raise _refusal("body")


class BodySizeLimit:
    """ASGI middleware: a request body over the limit is answered 413, unread.

    The limit is the running server's `max_request_body_bytes`, or `max_bytes` when given.
    """

    def __init__(self, app: ASGIApp, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _limit(self, scope: Scope) -> int:
        if self.max_bytes is not None:
            return self.max_bytes
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        config = getattr(services, "config", None)
        limit = getattr(config, "max_request_body_bytes", None)
        return limit if isinstance(limit, int) else DEFAULT_MAX_BODY_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            whole = await _drain(receive, 0, limit * _DRAIN_FACTOR)
            await _too_large(limit, declared, whole)(scope, receive, send)
            return
        received = 0
        started = too_large = finished = False

        async def counted() -> Message:
            # Past the limit the app is told the client went away (it stops reading) and
            # whatever it answers is replaced by the 413.
            nonlocal received, too_large, finished
            if too_large:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                finished = not message.get("more_body", False)
                if received > limit:
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if too_large and not started:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except Exception:
            if not too_large or started:
                raise
        if too_large and not started:
            whole = finished or await _drain(receive, received, limit * _DRAIN_FACTOR)
            await _too_large(limit, None, whole)(scope, receive, send)


# The rest of a refused body is read and dropped (up to this many times the limit) before
# the 413 goes out: an HTTP/1.1 client sends its whole body before it reads the answer, and
# closing on unread data resets the connection under it. Beyond that, the connection closes.
_DRAIN_FACTOR = 4


async def _drain(receive: Receive, already: int, cap: int) -> bool:
    """Read and drop the rest of a request body; True when all of it was read."""
    total = already
    while total <= cap:
        message = await receive()
        if message["type"] != "http.request":
            return False
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            return True
    return False


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(limit: int, declared: int | None, whole: bool) -> ASGIApp:
    details: dict[str, Any] = {"limit_bytes": limit}
    if declared is not None:
        details["content_length"] = declared
    return envelope(
        413,
        f"The request body is larger than the {limit}-byte limit (AMELIA_MAX_REQUEST_BODY_BYTES)",
        "PAYLOAD_TOO_LARGE",
        details,
        headers=None if whole else {"Connection": "close"},
    )
