"""A real, tiny OpenAI-compatible chat-completions server for driver tests.

It runs `http.server` in a background thread on 127.0.0.1, records every request, and answers
from a script of actions queued by the test (then, once the script is used up, echoes the last
user message with a usage block). Speaking real HTTP over a real socket is the point: the driver
and httpx run unmodified.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Action:
    """One scripted answer: `kind` is "respond", "stall" or "drop"."""

    kind: str
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def completion(
    text: str,
    *,
    model: str = "test/model",
    usage: dict[str, Any] | None = None,
    finish_reason: str = "stop",
) -> dict[str, Any]:
    """A chat-completions response body."""
    body: dict[str, Any] = {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
            }
        ],
    }
    if usage is not None:
        body["usage"] = usage
    return body


class ChatServer:
    """The server; use `url` as the driver's base_url and queue answers before calling."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._script: deque[Action] = deque()
        self._lock = threading.Lock()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.block_on_close = False  # stalled handlers must not hold up shutdown
        server.chat = self  # type: ignore[attr-defined]
        self._server = server
        # A short poll interval keeps shutdown() (once per test) from costing half a second.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        """The API root, as a profile's base_url would give it."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> ChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- scripting ---------------------------------------------------------------------------

    def respond_json(
        self, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> ChatServer:
        return self.respond_raw(status, json.dumps(body).encode(), headers)

    def respond_raw(
        self,
        status: int,
        raw: bytes,
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> ChatServer:
        merged = {"Content-Type": content_type, **(headers or {})}
        return self._push(Action("respond", status=status, body=raw, headers=merged))

    def ok(self, text: str, **kwargs: Any) -> ChatServer:
        return self.respond_json(200, completion(text, **kwargs))

    def stall(self, seconds: float) -> ChatServer:
        """Accept the request and say nothing for `seconds` (past the client's read timeout)."""
        return self._push(Action("stall", seconds=seconds))

    def drop(self) -> ChatServer:
        """Close the connection without answering."""
        return self._push(Action("drop"))

    def _push(self, action: Action) -> ChatServer:
        with self._lock:
            self._script.append(action)
        return self

    def _next(self, body: Any) -> Action:
        with self._lock:
            if self._script:
                return self._script.popleft()
        messages = body.get("messages", []) if isinstance(body, dict) else []
        last = messages[-1]["content"] if messages else ""
        usage = {"prompt_tokens": 10, "completion_tokens": 2}
        raw = json.dumps(completion(f"echo: {last}", usage=usage)).encode()
        return Action("respond", body=raw, headers={"Content-Type": "application/json"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real providers do

    def do_POST(self) -> None:
        chat: ChatServer = self.server.chat  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        headers = {name.lower(): value for name, value in self.headers.items()}
        with chat._lock:
            chat.requests.append(RecordedRequest("POST", self.path, headers, body))
        action = chat._next(body)
        if action.kind == "drop":
            self.close_connection = True
            return
        if action.kind == "stall":
            time.sleep(action.seconds)
            self.close_connection = True
            return
        try:
            self.send_response(action.status)
            for name, value in action.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(action.body)))
            self.end_headers()
            self.wfile.write(action.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""
