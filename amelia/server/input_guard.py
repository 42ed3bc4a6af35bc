"""Refuse text PostgreSQL cannot store before it reaches a route: NUL characters.

PostgreSQL's TEXT and JSONB cannot hold U+0000. Rather than letting such a value fail deep in
a write (or fail a background run later), every request is checked once, here: a NUL in the
query string or anywhere in a JSON body is a 422 that names the problem.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request
from starlette.requests import HTTPConnection

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
