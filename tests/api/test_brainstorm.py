"""`/api/brainstorm` through HTTP: real app, real PostgreSQL, a real brainstormer over HTTP.

The brainstormer is `AgentServer` (subclassed here to script replies, record requests and hold
an answer); turns run in the service's background tasks, so tests poll the session.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from amelia.core.types import AgentConfig, Profile
from amelia.server.brainstorm import artifact_type, parse_artifacts
from amelia.server.brainstorm.service import BrainstormService
from amelia.server.database.brainstorm_repository import BrainstormRepository
from amelia.server.database.profile_repository import ProfileRepository
from amelia.server.database.repository import WorkflowRepository
from amelia.server.main import create_app
from amelia.server.models.brainstorm import Artifact, SessionStatus
from amelia.server.models.events import EventLevel, EventType, WorkflowEvent
from amelia.server.models.state import WorkflowStatus
from amelia.server.routes import brainstorm as brainstorm_routes
from amelia.server.services import AppServices
from tests.api import conftest as api_conftest
from tests.api.workflow_fixtures import git_worktree
from tests.orchestrator.agent_server import AgentServer
from tests.orchestrator.conftest import make_profile

UNKNOWN = "00000000-0000-4000-8000-000000000000"
BASE = "/api/brainstorm/sessions"
DESIGN = "docs/designs/greeting.md"


class BrainstormAgents(AgentServer):
    """`AgentServer` whose brainstormer can be scripted, observed and held."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: list[str] = []  # answers to give, in order; then the default one
        self.requests: list[dict[str, Any]] = []
        self.received = threading.Event()
        self.release = threading.Event()  # set = answer; clear = hold
        self.release.set()
        self._script_lock = threading.Lock()

    def answer(self, role: str, body: dict[str, Any]) -> tuple[int, str]:
        if role != "brainstormer":
            return super().answer(role, body)
        with self._script_lock:
            self.requests.append(body)
            failing = role in self.fail_next
            reply = self.replies.pop(0) if self.replies and not failing else None
        self.received.set()
        self.release.wait(timeout=60)
        if reply is None:
            return super().answer(role, body)
        return 200, reply

    def stop(self) -> None:
        self.release.set()
        super().stop()


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> AsyncIterator[FastAPI]:
    # The shared fixture's app, plus the brainstorm hook (idempotent if create_app has it).
    application = create_app(api_conftest.test_config(database_url, tmp_path), migrate=True)
    brainstorm_routes.install(application)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def agents() -> Iterator[BrainstormAgents]:
    server = BrainstormAgents()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    return git_worktree(tmp_path / "repo")


@pytest.fixture
async def profile(services: AppServices, agents: BrainstormAgents, worktree: Path) -> Profile:
    profiles = ProfileRepository(services.db)
    stored = await profiles.create_profile(make_profile("dev", agents.url, str(worktree)))
    await profiles.set_active("dev")
    return stored


@pytest.fixture
def repo(services: AppServices) -> BrainstormRepository:
    return BrainstormRepository(services.db)


@pytest.fixture
def events(services: AppServices) -> list[WorkflowEvent]:
    seen: list[WorkflowEvent] = []
    services.bus.subscribe(seen.append)
    return seen


async def new_session(client: httpx.AsyncClient, profile_id: str = "dev", **extra: Any) -> str:
    response = await client.post(BASE, json={"profile_id": profile_id, **extra})
    assert response.status_code == 201, response.text
    return str(response.json()["session"]["id"])


async def send(client: httpx.AsyncClient, session_id: str, content: str) -> str:
    response = await client.post(f"{BASE}/{session_id}/message", json={"content": content})
    assert response.status_code == 202, response.text
    return str(response.json()["message_id"])


async def wait_for_messages(
    client: httpx.AsyncClient, session_id: str, *message_ids: str, timeout: float = 30.0
) -> dict[str, Any]:
    """Poll `GET /sessions/{id}` until every message id is stored; the last body."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await client.get(f"{BASE}/{session_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        stored = {message["id"] for message in body["messages"]}
        if stored.issuperset(message_ids):
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"messages {message_ids} never appeared: {body.get('messages')}")


def of_type(events: list[WorkflowEvent], event_type: EventType) -> list[WorkflowEvent]:
    return [event for event in events if event.event_type is event_type]


# --------------------------------------------------------------------------- sessions


async def test_create_session_answers_201_with_profile_info_and_emits(
    client: httpx.AsyncClient, profile: Profile, repo: BrainstormRepository, events: list[Any]
) -> None:
    response = await client.post(BASE, json={"profile_id": "dev", "topic": "Greeting API"})

    assert response.status_code == 201
    body = response.json()
    assert body["profile"] == {"name": "dev", "driver": "api", "model": "test/model"}
    session = body["session"]
    assert (session["status"], session["topic"], session["driver_type"]) == (
        "active",
        "Greeting API",
        "api",
    )
    stored = await repo.get_session(uuid.UUID(session["id"]))
    assert stored is not None and stored.profile_id == "dev"
    (created,) = of_type(events, EventType.BRAINSTORM_SESSION_CREATED)
    assert str(created.workflow_id) == session["id"] and created.domain == "brainstorm"


async def test_create_session_for_unknown_profile_has_no_profile_info(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(BASE, json={"profile_id": "ghost"})

    assert response.status_code == 201
    assert response.json()["profile"] is None
    assert response.json()["session"]["driver_type"] is None


@pytest.mark.parametrize(
    "body",
    [
        "{}",
        '{"profile_id": ""}',
        '{"profile_id": "   "}',
        '{"profile_id": "a\\u0000b"}',
        '{"profile_id": "dev", "topic": "%s"}' % ("x" * 2001),
    ],
)
async def test_create_session_rejects_bad_bodies(client: httpx.AsyncClient, body: str) -> None:
    response = await client.post(BASE, content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422
    assert "detail" in response.json()


async def test_lone_surrogates_are_refused_before_the_database(
    client: httpx.AsyncClient, profile: Profile, repo: BrainstormRepository
) -> None:
    # PostgreSQL cannot store them. The model refuses them; FastAPI's 422 cannot echo them
    # back, so the shared handlers answer 400: a client error either way, never a 500 (and
    # never a turn failing silently in the background).
    raw = {"Content-Type": "application/json"}
    topic = '{"profile_id": "dev", "topic": "\\ud800"}'
    assert (await client.post(BASE, content=topic, headers=raw)).status_code in (400, 422)
    session_id = await new_session(client)
    content = '{"content": "hi \\udfff"}'
    response = await client.post(f"{BASE}/{session_id}/message", content=content, headers=raw)
    assert response.status_code in (400, 422)
    assert await repo.get_messages(uuid.UUID(session_id)) == []


async def test_list_sessions_filters_orders_and_limits(
    client: httpx.AsyncClient, profile: Profile, repo: BrainstormRepository
) -> None:
    first = await new_session(client)
    other = await new_session(client, "other")
    last = await new_session(client)
    done = await repo.get_session(uuid.UUID(first))
    assert done is not None
    changes = {"status": SessionStatus.COMPLETED, "updated_at": datetime.now(UTC)}
    await repo.update_session(done.model_copy(update=changes))

    async def ids(**params: Any) -> list[str]:
        response = await client.get(BASE, params=params)
        assert response.status_code == 200, response.text
        return [session["id"] for session in response.json()]

    assert await ids() == [first, last, other]  # `first` was updated last
    assert await ids(profile_id="dev") == [first, last]
    assert await ids(status="active") == [last, other]
    assert await ids(profile_id="dev", status="completed") == [first]
    assert await ids(limit=1) == [first]
    bad_queries = ({"limit": 0}, {"limit": 101}, {"status": "bogus"}, {"profile_id": "a\x00"})
    for bad in bad_queries:
        assert (await client.get(BASE, params=bad)).status_code == 422


async def test_unknown_session_is_404_and_malformed_id_422(client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{BASE}/{UNKNOWN}")).json() == {
        "detail": f"Brainstorming session not found: {UNKNOWN}"
    }
    message = await client.post(f"{BASE}/{UNKNOWN}/message", json={"content": "hi"})
    assert message.status_code == 404 and "detail" in message.json()
    handoff = await client.post(f"{BASE}/{UNKNOWN}/handoff", json={"artifact_path": DESIGN})
    assert handoff.status_code == 404 and "detail" in handoff.json()
    for method, path, body in [
        ("GET", f"{BASE}/not-a-uuid", None),
        ("DELETE", f"{BASE}/not-a-uuid", None),
        ("POST", f"{BASE}/not-a-uuid/message", {"content": "hi"}),
        ("POST", f"{BASE}/not-a-uuid/handoff", {"artifact_path": DESIGN}),
    ]:
        response = await client.request(method, path, json=body)
        assert response.status_code == 422, (method, path)


# --------------------------------------------------------------------------- messages


async def test_message_round_trip_records_reply_usage_and_history(
    client: httpx.AsyncClient, profile: Profile, agents: BrainstormAgents, events: list[Any]
) -> None:
    created = (await client.post(BASE, json={"profile_id": "dev", "topic": "Greetings"})).json()
    session_id = created["session"]["id"]

    first = await send(client, session_id, "How should we greet users?")
    body = await wait_for_messages(client, session_id, first)

    user, reply = body["messages"]
    assert (user["sequence"], user["role"], user["content"]) == (
        1,
        "user",
        "How should we greet users?",
    )
    assert (reply["id"], reply["sequence"], reply["role"]) == (first, 2, "assistant")
    assert reply["content"] == "Let us think about it." and reply["is_error"] is False
    assert reply["usage"] == {"input_tokens": 120, "output_tokens": 30, "cost_usd": 0.0}
    assert body["session"]["usage_summary"] == {
        "total_input_tokens": 120,
        "total_output_tokens": 30,
        "total_cost_usd": 0.0,
        "message_count": 1,
    }
    moved = datetime.fromisoformat(body["session"]["updated_at"])
    assert moved > datetime.fromisoformat(created["session"]["updated_at"])
    assert body["profile"]["name"] == "dev"
    system = agents.requests[0]["messages"][0]
    assert system["role"] == "system" and "help a developer" in system["content"]
    assert "ARTIFACT: <path" in system["content"] and "Greetings" in system["content"]
    (text,) = of_type(events, EventType.BRAINSTORM_TEXT)
    assert text.data == {"message_id": first, "text": "Let us think about it."}
    (complete,) = of_type(events, EventType.BRAINSTORM_MESSAGE_COMPLETE)
    assert complete.data is not None and complete.data["session_usage"]["message_count"] == 1

    second = await send(client, session_id, "And in French?")
    body = await wait_for_messages(client, session_id, second)

    assert [m["sequence"] for m in body["messages"]] == [1, 2, 3, 4]
    sent = [(m["role"], m["content"]) for m in agents.requests[1]["messages"][1:]]
    assert sent == [
        ("user", "How should we greet users?"),
        ("assistant", "Let us think about it."),
        ("user", "And in French?"),
    ]
    assert body["session"]["usage_summary"]["total_input_tokens"] == 240


@pytest.mark.parametrize(
    "body", [{}, {"content": ""}, {"content": " \n "}, {"content": "a\x00"}, {"content": 3}]
)
async def test_send_message_rejects_bad_bodies(
    client: httpx.AsyncClient, profile: Profile, body: dict[str, Any]
) -> None:
    session_id = await new_session(client)

    response = await client.post(f"{BASE}/{session_id}/message", json=body)

    assert response.status_code == 422


async def test_concurrent_messages_get_distinct_sequences(
    client: httpx.AsyncClient, profile: Profile
) -> None:
    session_id = await new_session(client)

    ids = await asyncio.gather(*(send(client, session_id, f"idea {n}") for n in range(3)))
    body = await wait_for_messages(client, session_id, *ids)

    messages = body["messages"]
    assert [m["sequence"] for m in messages] == [1, 2, 3, 4, 5, 6]
    # Turns of one session are serialized in a process: each reply follows its question.
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3


async def test_two_servers_appending_to_one_session_get_distinct_sequences(
    client: httpx.AsyncClient, profile: Profile, database_url: str, tmp_path: Path
) -> None:
    session_id = await new_session(client)
    async with AsyncExitStack() as stack:
        # A second server process-alike: its own app, pools and brainstorm service.
        second_app = create_app(api_conftest.test_config(database_url, tmp_path / "second"))
        brainstorm_routes.install(second_app)
        await stack.enter_async_context(second_app.router.lifespan_context(second_app))
        transport = httpx.ASGITransport(app=second_app)
        second = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://second.test")
        )

        ids = await asyncio.gather(
            *(send(http, session_id, f"idea {n}") for n in range(4) for http in (client, second))
        )
        body = await wait_for_messages(client, session_id, *ids)

    sequences = [m["sequence"] for m in body["messages"]]
    assert sequences == list(range(1, 17))
    assert sorted(m["role"] for m in body["messages"]) == ["assistant"] * 8 + ["user"] * 8


async def test_driver_failure_is_recorded_as_an_error_message(
    client: httpx.AsyncClient, profile: Profile, agents: BrainstormAgents, events: list[Any]
) -> None:
    session_id = await new_session(client)
    agents.fail_next["brainstormer"] = 400

    failed = await send(client, session_id, "first idea")
    body = await wait_for_messages(client, session_id, failed)

    error = body["messages"][1]
    assert (error["id"], error["role"], error["is_error"], error["usage"]) == (
        failed,
        "assistant",
        True,
        None,
    )
    assert error["content"].startswith("The brainstormer could not answer")
    assert body["session"]["usage_summary"] is None
    (complete,) = of_type(events, EventType.BRAINSTORM_MESSAGE_COMPLETE)
    assert complete.level is EventLevel.ERROR and complete.data is not None
    assert complete.data["is_error"] is True

    # The session goes on; the failed turn is not sent as history.
    ok = await send(client, session_id, "second idea")
    body = await wait_for_messages(client, session_id, ok)
    assert body["messages"][3]["is_error"] is False
    assert [m["content"] for m in agents.requests[1]["messages"][1:]] == [
        "first idea",
        "second idea",
    ]


async def test_profile_without_brainstormer_gives_an_error_message(
    client: httpx.AsyncClient, services: AppServices, agents: BrainstormAgents, worktree: Path
) -> None:
    full = make_profile("nobrain", agents.url, str(worktree))
    agents_only = {k: v for k, v in full.agents.items() if k != "brainstormer"}
    await ProfileRepository(services.db).create_profile(
        full.model_copy(update={"agents": agents_only})
    )
    session_id = await new_session(client, "nobrain")

    message_id = await send(client, session_id, "hello")
    body = await wait_for_messages(client, session_id, message_id)

    assert body["messages"][1]["is_error"] is True
    assert "brainstormer" in body["messages"][1]["content"]
    assert body["profile"] is None


async def test_cli_brainstormer_records_zero_tokens(
    client: httpx.AsyncClient, services: AppServices, worktree: Path
) -> None:
    script = "import sys; sys.stdin.read(); print('Design it around a single route.')"
    cli = AgentConfig(
        driver="cli", model="local", options={"command": [sys.executable, "-c", script]}
    )
    await ProfileRepository(services.db).create_profile(
        Profile(name="local", working_dir=str(worktree), agents={"brainstormer": cli})
    )
    session_id = await new_session(client, "local")

    message_id = await send(client, session_id, "hello")
    body = await wait_for_messages(client, session_id, message_id)

    reply = body["messages"][1]
    assert reply["content"] == "Design it around a single route."
    assert reply["usage"] == {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
    assert body["session"]["driver_type"] == "cli"
    assert body["session"]["usage_summary"]["message_count"] == 1


async def test_shutdown_interrupts_a_turn_in_flight(
    client: httpx.AsyncClient, services: AppServices, profile: Profile, agents: BrainstormAgents
) -> None:
    service = services.extras["brainstorm"]
    assert isinstance(service, BrainstormService)
    session_id = await new_session(client)
    agents.release.clear()

    message_id = await send(client, session_id, "hello")
    assert await asyncio.to_thread(agents.received.wait, 10)
    await service.stop(grace=0.2)
    agents.release.set()

    body = (await client.get(f"{BASE}/{session_id}")).json()
    interrupted = body["messages"][1]
    assert interrupted["id"] == message_id and interrupted["is_error"] is True
    assert "shut down" in interrupted["content"]
    refused = await client.post(f"{BASE}/{session_id}/message", json={"content": "again"})
    assert refused.status_code == 503


async def test_delete_cancels_a_turn_in_flight(
    client: httpx.AsyncClient,
    services: AppServices,
    profile: Profile,
    agents: BrainstormAgents,
    repo: BrainstormRepository,
) -> None:
    service = services.extras["brainstorm"]
    assert isinstance(service, BrainstormService)
    session_id = await new_session(client)
    agents.release.clear()
    await send(client, session_id, "hello")
    assert await asyncio.to_thread(agents.received.wait, 10)

    response = await client.delete(f"{BASE}/{session_id}")

    assert response.status_code == 204
    assert await service.wait_idle(1.0)  # the held turn was cancelled, not awaited
    agents.release.set()
    assert await repo.get_messages(uuid.UUID(session_id)) == []


# --------------------------------------------------------------------------- artifacts, handoff


async def artifact_session(
    client: httpx.AsyncClient, agents: BrainstormAgents, worktree: Path
) -> str:
    """A session whose brainstormer wrote `DESIGN` and named it."""
    (worktree / "docs" / "designs").mkdir(parents=True)
    (worktree / DESIGN).write_text("# Greeting\n\nGET /hello returns a greeting.\n")
    agents.replies.append(f"I wrote the design.\n\nARTIFACT: `{DESIGN}` | Greeting design\n")
    session_id = await new_session(client)
    await wait_for_messages(client, session_id, await send(client, session_id, "write it"))
    return session_id


async def test_handoff_queues_a_pending_workflow_and_completes_the_session(
    client: httpx.AsyncClient,
    services: AppServices,
    profile: Profile,
    agents: BrainstormAgents,
    worktree: Path,
    events: list[Any],
) -> None:
    session_id = await artifact_session(client, agents, worktree)
    (artifact,) = (await client.get(f"{BASE}/{session_id}")).json()["artifacts"]
    assert (artifact["path"], artifact["type"], artifact["title"]) == (
        DESIGN,
        "design",
        "Greeting design",
    )
    # Naming the same document again does not record it twice.
    agents.replies.append(f"Updated it.\nARTIFACT: {DESIGN} | Greeting design v2")
    await wait_for_messages(client, session_id, await send(client, session_id, "tweak it"))
    assert len((await client.get(f"{BASE}/{session_id}")).json()["artifacts"]) == 1
    assert len(of_type(events, EventType.BRAINSTORM_ARTIFACT_CREATED)) == 1

    response = await client.post(
        f"{BASE}/{session_id}/handoff",
        json={"artifact_path": DESIGN, "issue_title": "Greeting endpoint"},
    )

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "created"
    workflow = await WorkflowRepository(services.db).get(uuid.UUID(response.json()["workflow_id"]))
    assert workflow is not None and workflow.workflow_status is WorkflowStatus.PENDING
    assert (workflow.issue_id, workflow.profile_id) == (f"brainstorm-{session_id}", "dev")
    assert workflow.worktree_path == str(worktree)
    assert workflow.issue_cache is not None
    assert workflow.issue_cache["title"] == "Greeting endpoint"
    assert "GET /hello returns a greeting." in workflow.issue_cache["description"]
    session = (await client.get(f"{BASE}/{session_id}")).json()["session"]
    assert session["status"] == "completed"
    (completed,) = of_type(events, EventType.BRAINSTORM_SESSION_COMPLETED)
    assert completed.data == {
        "workflow_id": response.json()["workflow_id"],
        "artifact_path": DESIGN,
    }


async def test_handoff_errors(
    client: httpx.AsyncClient,
    profile: Profile,
    agents: BrainstormAgents,
    worktree: Path,
    repo: BrainstormRepository,
) -> None:
    owner = await artifact_session(client, agents, worktree)
    stranger = await new_session(client)
    url = f"{BASE}/{stranger}/handoff"

    foreign = await client.post(url, json={"artifact_path": DESIGN})
    assert foreign.status_code == 404 and "does not belong" in foreign.json()["detail"]
    assert (await client.post(url, json={"artifact_path": "nope.md"})).status_code == 404
    assert (await client.post(url, json={})).status_code == 422
    for bad in ({"artifact_path": ""}, {"artifact_path": DESIGN, "issue_title": "\x00"}):
        assert (await client.post(url, json=bad)).status_code == 422

    # A recorded document that was deleted since: the orchestrator's file error (envelope).
    await repo.save_artifact(Artifact(session_id=uuid.UUID(stranger), type="spec", path="gone.md"))
    missing = await client.post(url, json={"artifact_path": "gone.md"})
    assert missing.status_code == 404 and missing.json()["code"] == "FILE_NOT_FOUND"

    # The session's profile is gone: the orchestrator's ValueError answers 404 detail.
    ghost = uuid.UUID(await new_session(client, "ghost"))
    await repo.save_artifact(Artifact(session_id=ghost, type="design", path=DESIGN))
    gone = await client.post(f"{BASE}/{ghost}/handoff", json={"artifact_path": DESIGN})
    assert gone.status_code == 404 and "ghost" in gone.json()["detail"]

    owner_session = (await client.get(f"{BASE}/{owner}")).json()["session"]
    assert owner_session["status"] == "active"


async def test_delete_cascades_to_messages_and_artifacts(
    client: httpx.AsyncClient,
    profile: Profile,
    agents: BrainstormAgents,
    worktree: Path,
    repo: BrainstormRepository,
) -> None:
    session_id = await artifact_session(client, agents, worktree)
    sid = uuid.UUID(session_id)
    assert len(await repo.get_messages(sid)) == 2 and len(await repo.get_artifacts(sid)) == 1

    response = await client.delete(f"{BASE}/{session_id}")

    assert response.status_code == 204 and response.content == b""
    assert (await client.get(f"{BASE}/{session_id}")).status_code == 404
    assert await repo.get_session(sid) is None
    assert await repo.get_messages(sid) == [] and await repo.get_artifacts(sid) == []
    assert (await client.delete(f"{BASE}/{session_id}")).status_code == 204
    assert (await client.delete(f"{BASE}/{UNKNOWN}")).status_code == 204


def test_artifact_lines_are_parsed_and_typed() -> None:
    text = (
        "Here it is.\n"
        "ARTIFACT: docs/designs/a.md | A design\n"
        "- ARTIFACT: `./docs/adr/0001-db.md`\n"
        "ARTIFACT: ../outside.md | escapes\n"
        "ARTIFACT: /etc/passwd\n"
        "ARTIFACT: /repo/specs/api.md | Absolute inside\n"
        "not an ARTIFACT: line.md\n"
    )

    found = [(ref.path, ref.title) for ref in parse_artifacts(text, "/repo")]

    assert found == [
        ("docs/designs/a.md", "A design"),
        ("docs/adr/0001-db.md", None),
        ("/repo/specs/api.md", "Absolute inside"),
    ]
    assert [
        artifact_type(p)
        for p in ("README.md", "docs/adr/1.md", "specs/x.md", "docs/plans/p.md", "notes.md")
    ] == ["readme", "adr", "spec", "design", "document"]
