"""A local OpenAI-compatible server that plays every agent of a workflow, deterministically.

It recognises the agent from the system prompt ("You are the architect", "... developer",
"... reviewer", "... evaluator"), answers in that agent's reply format, reports token usage,
and counts calls per agent: the side-effect counter the restart tests rely on. A test can
hold the developer's answer (to kill a server mid-step) and script reviewer verdicts.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROLES = ("architect", "developer", "reviewer", "evaluator", "brainstormer")
# A test may put a marker like "RUN-1234" in a task or diff to count calls per workflow.
MARKER = re.compile(r"RUN-[0-9a-f]+")


def plan_markdown(tasks: int) -> str:
    lines = [
        "# Add a greeting endpoint",
        "",
        "**Goal:** Expose GET /hello returning a greeting",
        "",
        "## Key files",
        "- `app/routes.py`: the new route",
        "- `tests/test_routes.py`: its test",
        "",
        "## Tasks",
    ]
    for n in range(1, tasks + 1):
        lines += [f"### Task {n}: Step number {n}", f"Do step {n} and test it.", ""]
    return "\n".join(lines)


class AgentServer:
    """Start with `start()`; point profiles' agent `base_url` at `url`."""

    def __init__(self, *, tasks: int = 1) -> None:
        self.tasks = tasks
        self.calls: Counter[str] = Counter()
        self.reviews: list[bool] = []  # verdicts to give, in order; then approve
        self.developer_started = threading.Event()
        self.hold_developer = threading.Event()  # set = answer; clear = hold
        self.hold_developer.set()
        self.fail_next: dict[str, int] = {}  # role -> HTTP status to answer once
        # Reviewer calls wait while this is clear (a test stalls or kills a server mid-review).
        self.hold_reviewer = threading.Event()
        self.hold_reviewer.set()
        self.reviewer_calls_waiting = 0
        self.delay_seconds = 0.0  # added to every answer, so runs overlap
        self.in_flight = 0
        self.max_in_flight = 0  # the most calls answered at the same moment
        self.marker_calls: Counter[tuple[str, str]] = Counter()  # (role, marker) -> calls
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._server.agents = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> AgentServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.hold_developer.set()
        self.hold_reviewer.set()
        self._server.shutdown()
        self._server.server_close()

    def answer(self, role: str, body: dict[str, Any]) -> tuple[int, str]:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            for marker in set(MARKER.findall(json.dumps(body.get("messages", [])))):
                self.marker_calls[(role, marker)] += 1
        try:
            if self.delay_seconds:
                time.sleep(self.delay_seconds)
            if role == "reviewer" and not self.hold_reviewer.is_set():
                with self._lock:
                    self.reviewer_calls_waiting += 1
                self.hold_reviewer.wait(timeout=120)
            return self._answer(role, body)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, role: str, body: dict[str, Any]) -> tuple[int, str]:
        with self._lock:
            self.calls[role] += 1
            status = self.fail_next.pop(role, None)
            if status is not None:
                return status, ""
            if role == "reviewer":
                approved = self.reviews.pop(0) if self.reviews else True
        if role == "architect":
            return 200, plan_markdown(self.tasks)
        if role == "developer":
            self.developer_started.set()
            self.hold_developer.wait(timeout=120)
            return 200, "Implemented the task; tests pass."
        if role == "reviewer":
            comments = (
                []
                if approved
                else [{"severity": "major", "file": "app/routes.py", "comment": "Missing test"}]
            )
            verdict = {
                "approved": approved,
                "summary": "ok" if approved else "needs work",
                "comments": comments,
            }
            return 200, json.dumps(verdict)
        if role == "evaluator":
            return 200, json.dumps({"accepted": [0], "rejected": [], "reason": "valid"})
        return 200, "Let us think about it."


def _role(body: dict[str, Any]) -> str:
    for message in body.get("messages", []):
        if message.get("role") == "system":
            text = str(message.get("content", "")).lower()
            for role in ROLES:
                if f"you are the {role}" in text or (
                    role == "brainstormer" and "help a developer" in text
                ):
                    return role
    return "unknown"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        agents: AgentServer = self.server.agents  # type: ignore[attr-defined]
        status, text = agents.answer(_role(body), body)
        if status != 200:
            payload = json.dumps({"error": {"message": "scripted failure"}}).encode()
        else:
            payload = json.dumps(
                {
                    "id": "cmpl",
                    "object": "chat.completion",
                    "model": body.get("model", "test/model"),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
                }
            ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return
