"""`/api/workflows` through HTTP: real app, real PostgreSQL, real runs against AgentServer."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from amelia.core.types import Profile, TrackerType
from amelia.server.database.profile_repository import ProfileRepository
from amelia.server.database.repository import WorkflowRepository
from amelia.server.database.settings_repository import SettingsRepository
from amelia.server.models.events import EventType, WorkflowEvent
from amelia.server.models.state import PlanCache, ServerExecutionState, WorkflowStatus
from amelia.server.services import AppServices
from tests.api.workflow_fixtures import (
    git_worktree,
    seed_usage,
    seed_workflow,
    wait_for_api_status,
)
from tests.orchestrator.agent_server import AgentServer, plan_markdown
from tests.orchestrator.conftest import make_profile

S = WorkflowStatus
GOAL = "Expose GET /hello returning a greeting"
UNKNOWN = "00000000-0000-4000-8000-000000000000"


@pytest.fixture
def agents() -> Iterator[AgentServer]:
    server = AgentServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def profile(services: AppServices, agents: AgentServer, tmp_path: Path) -> Profile:
    profiles = ProfileRepository(services.db)
    stored = await profiles.create_profile(make_profile("dev", agents.url, str(tmp_path)))
    await profiles.set_active("dev")
    return stored


@pytest.fixture
def repo(services: AppServices) -> WorkflowRepository:
    return WorkflowRepository(services.db)


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    return git_worktree(tmp_path / "repo")


@pytest.fixture
async def held_developer(agents: AgentServer) -> AsyncIterator[AgentServer]:
    agents.hold_developer.clear()
    try:
        yield agents
    finally:
        agents.hold_developer.set()


async def create(client: httpx.AsyncClient, worktree: Path, **fields: Any) -> httpx.Response:
    body = {"issue_id": "ISSUE-1", "worktree_path": str(worktree), **fields}
    return await client.post("/api/workflows", json=body)


async def created_id(client: httpx.AsyncClient, worktree: Path, **fields: Any) -> str:
    response = await create(client, worktree, **fields)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "pending"
    return str(body["id"])


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "code", "details"}
    assert body["code"] == code
    return body


async def limit_to_one_running(services: AppServices, repo: WorkflowRepository, tmp: Path) -> None:
    await SettingsRepository(services.db).update_server_settings({"max_concurrent": 1})
    await seed_workflow(repo, tmp / "busy", S.IN_PROGRESS, started_at=datetime.now(UTC))


# ------------------------------------------------------------------- full runs via the API


@pytest.mark.usefixtures("profile")
async def test_create_blocked_approve_completed(
    client: httpx.AsyncClient, held_developer: AgentServer, worktree: Path
) -> None:
    wid = await created_id(client, worktree, task_title="Greeting")
    blocked = await wait_for_api_status(client, wid, "blocked")
    assert blocked["goal"] == GOAL
    assert blocked["plan_markdown"].startswith("# Add a greeting endpoint")
    assert blocked["worktree_path"] == str(worktree)
    assert blocked["token_usage"]["total_input_tokens"] == 120
    types = [e["event_type"] for e in blocked["recent_events"]]
    assert types[0] == "workflow_started" and types[-1] == "approval_required"

    # The developer is held: approve must answer while the run is still going.
    response = await client.post(f"/api/workflows/{wid}/approve")
    assert response.status_code == 200
    assert response.json() == {"status": "approved", "workflow_id": wid}
    assert await asyncio.to_thread(held_developer.developer_started.wait, 30)
    assert (await client.get(f"/api/workflows/{wid}")).json()["status"] == "in_progress"
    held_developer.hold_developer.set()

    done = await wait_for_api_status(client, wid, "completed", "failed")
    assert done["status"] == "completed", done["failure_reason"]
    assert done["completed_at"] is not None
    usage = done["token_usage"]
    assert usage["total_input_tokens"] == 360 and usage["total_output_tokens"] == 90
    assert isinstance(usage["total_cost_usd"], float)
    assert sorted(u["agent"] for u in usage["breakdown"]) == ["architect", "developer", "reviewer"]
    sequences = [e["sequence"] for e in done["recent_events"]]
    assert sequences == sorted(sequences)
    assert done["recent_events"][-1]["event_type"] == "workflow_completed"
    assert "approval_granted" in [e["event_type"] for e in done["recent_events"]]
    assert all(isinstance(e["id"], str) for e in done["recent_events"])

    listed = (await client.get("/api/workflows")).json()
    assert listed["workflows"][0]["id"] == wid
    assert listed["workflows"][0]["total_tokens"] == 450
    assert listed["workflows"][0]["profile"] == "dev"


@pytest.mark.usefixtures("profile")
async def test_queue_then_plan_now(
    client: httpx.AsyncClient, agents: AgentServer, worktree: Path, tmp_path: Path
) -> None:
    queued = await created_id(client, worktree, start=False)
    detail = (await client.get(f"/api/workflows/{queued}")).json()
    assert detail["status"] == "pending"
    assert detail["started_at"] is None and detail["token_usage"] is None
    assert [e["event_type"] for e in detail["recent_events"]] == ["workflow_created"]

    other = git_worktree(tmp_path / "other")
    planned = await created_id(client, other, start=False, plan_now=True)
    blocked = await wait_for_api_status(client, planned, "blocked")
    assert blocked["goal"] == GOAL
    assert agents.calls["architect"] == 1
    assert (await client.get(f"/api/workflows/{queued}")).json()["status"] == "pending"


@pytest.mark.usefixtures("profile")
async def test_start_with_a_plan_keeps_it(
    client: httpx.AsyncClient, agents: AgentServer, worktree: Path
) -> None:
    wid = await created_id(client, worktree, plan_content=plan_markdown(2))
    blocked = await wait_for_api_status(client, wid, "blocked")
    assert agents.calls["architect"] == 0
    assert blocked["plan_markdown"] == plan_markdown(2).strip() + "\n"
    assert blocked["started_at"] is not None


@pytest.mark.usefixtures("profile")
async def test_queue_with_plan_file_and_artifact(
    client: httpx.AsyncClient, repo: WorkflowRepository, worktree: Path
) -> None:
    (worktree / "docs").mkdir()
    (worktree / "docs" / "plan.md").write_text(plan_markdown(3))
    (worktree / "design.md").write_text("Use a blueprint.")
    wid = await created_id(
        client, worktree, start=False, plan_file="docs/plan.md", artifact_path="design.md"
    )
    detail = (await client.get(f"/api/workflows/{wid}")).json()
    assert detail["plan_path"] == "docs/plan.md"
    assert "### Task 3" in detail["plan_markdown"]
    row = await repo.get(uuid.UUID(wid))
    assert row is not None and row.issue_cache is not None
    assert "Use a blueprint." in row.issue_cache["description"]


@pytest.mark.usefixtures("profile")
async def test_review_workflow(client: httpx.AsyncClient, tmp_path: Path) -> None:
    plain = tmp_path / "plain"  # a review needs a directory, not a git worktree
    plain.mkdir()
    response = await client.post(
        "/api/workflows/review", json={"diff_content": "+print(1)", "worktree_path": str(plain)}
    )
    assert response.status_code == 201, response.text
    wid = response.json()["id"]
    done = await wait_for_api_status(client, wid, "completed", "failed")
    assert done["status"] == "completed", done["failure_reason"]
    assert done["issue_id"] == "LOCAL-REVIEW"

    missing = {"diff_content": "x", "worktree_path": str(tmp_path / "nope")}
    assert_envelope(
        await client.post("/api/workflows/review", json=missing), 400, "INVALID_WORKTREE"
    )
    for bad in (
        {"diff_content": "", "worktree_path": str(plain)},
        {"diff_content": "x", "worktree_path": "relative"},
    ):
        assert (await client.post("/api/workflows/review", json=bad)).status_code == 422


async def test_review_conflict_and_limit(
    client: httpx.AsyncClient,
    services: AppServices,
    repo: WorkflowRepository,
    profile: Profile,
    tmp_path: Path,
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    holder = await seed_workflow(repo, plain, S.BLOCKED, started_at=datetime.now(UTC))
    body = {"diff_content": "x", "worktree_path": str(plain), "profile": profile.name}
    conflict = assert_envelope(
        await client.post("/api/workflows/review", json=body), 409, "WORKFLOW_CONFLICT"
    )
    assert conflict["details"]["workflow_id"] == str(holder.id)
    await limit_to_one_running(services, repo, tmp_path)
    body["worktree_path"] = str(tmp_path)
    response = await client.post("/api/workflows/review", json=body)
    assert_envelope(response, 429, "CONCURRENCY_LIMIT")


# --------------------------------------------------------------------- create: errors


@pytest.mark.usefixtures("profile")
async def test_create_refuses_bad_worktrees_and_files(
    client: httpx.AsyncClient, worktree: Path, tmp_path: Path
) -> None:
    missing = assert_envelope(await create(client, tmp_path / "nope"), 400, "INVALID_WORKTREE")
    assert missing["details"]["worktree_path"] == str(tmp_path / "nope")
    not_git = tmp_path / "not-git"
    not_git.mkdir()
    assert_envelope(await create(client, not_git), 400, "INVALID_WORKTREE")

    (tmp_path / "outside.md").write_text("secret")
    for outside in ("../outside.md", str(tmp_path / "outside.md")):
        response = await create(client, worktree, start=False, artifact_path=outside)
        assert_envelope(response, 400, "INVALID_VALUE")
    response = await create(client, worktree, start=False, artifact_path="nope.md")
    assert_envelope(response, 404, "FILE_NOT_FOUND")
    response = await create(client, worktree, artifact_path="nope.md")  # start=true path too
    assert_envelope(response, 404, "FILE_NOT_FOUND")
    assert (await client.get("/api/workflows")).json()["total"] == 0


async def test_create_needs_a_usable_profile(
    client: httpx.AsyncClient, services: AppServices, agents: AgentServer, worktree: Path
) -> None:
    no_active = assert_envelope(await create(client, worktree), 400, "INVALID_VALUE")
    assert "active profile" in no_active["error"]
    assert_envelope(await create(client, worktree, profile="ghost"), 400, "INVALID_VALUE")
    jira = make_profile("jira", agents.url).model_copy(update={"tracker": TrackerType.JIRA})
    await ProfileRepository(services.db).create_profile(jira)
    response = await create(client, worktree, profile="jira", task_title="Title")
    assert "task_title" in assert_envelope(response, 400, "INVALID_VALUE")["error"]
    assert (await client.get("/api/workflows")).json()["total"] == 0


@pytest.mark.usefixtures("profile")
async def test_create_conflict_and_concurrency_limit(
    client: httpx.AsyncClient,
    services: AppServices,
    repo: WorkflowRepository,
    worktree: Path,
    tmp_path: Path,
) -> None:
    holder = await seed_workflow(repo, worktree, S.BLOCKED, started_at=datetime.now(UTC))
    body = assert_envelope(await create(client, worktree), 409, "WORKFLOW_CONFLICT")
    assert body["details"] == {"workflow_id": str(holder.id), "worktree_path": str(worktree)}

    free = git_worktree(tmp_path / "free")
    await limit_to_one_running(services, repo, tmp_path)
    response = await create(client, free)
    body = assert_envelope(response, 429, "CONCURRENCY_LIMIT")
    assert response.headers["Retry-After"] == "30"
    assert body["details"] == {"current": 1, "limit": 1}
    # Start with a plan goes through the queue: a refused start leaves nothing pending.
    response = await create(client, free, plan_content=plan_markdown(1))
    assert_envelope(response, 429, "CONCURRENCY_LIMIT")
    assert (await client.get("/api/workflows?status=pending")).json()["total"] == 0
    assert (await client.get("/api/workflows?status=cancelled")).json()["total"] == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"issue_id": ""},
        {"issue_id": "x" * 101},
        {"issue_id": "../etc"},
        {"issue_id": "A;rm"},
        {"issue_id": "A B"},
        {"worktree_path": "relative/path"},
        {"worktree_path": "/tmp/a\x00b"},
        {"profile": "Dev"},
        {"driver": "bogus"},
        {"task_title": "t" * 501},
        {"task_description": "no title"},
        {"task_title": "t", "task_description": "d" * 5001},
        {"plan_file": "a.md", "plan_content": "# x"},
        {"start": False, "plan_now": True, "plan_content": "# x"},
        {"start": False, "plan_now": True, "artifact_path": "design.md"},
        {"start": "maybe"},
    ],
)
async def test_create_body_validation(
    client: httpx.AsyncClient, worktree: Path, fields: dict[str, Any]
) -> None:
    response = await create(client, worktree, **fields)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)


async def test_create_request_accepts_valid_options(
    client: httpx.AsyncClient, profile: Profile, worktree: Path
) -> None:
    # driver is accepted (and ignored); the path is canonicalised before it is stored.
    wid = await created_id(
        client,
        Path(f"{worktree}/sub/.."),
        issue_id="PROJ_12-a",
        profile=profile.name,
        driver="api:openrouter",
        start=False,
    )
    assert (await client.get(f"/api/workflows/{wid}")).json()["worktree_path"] == str(worktree)
    assert (await client.post("/api/workflows", json={"worktree_path": "/x"})).status_code == 422


# ------------------------------------------------------------------------------ lists


async def seed_listing(repo: WorkflowRepository, tmp_path: Path) -> list[ServerExecutionState]:
    """Five started rows (two with the same started_at) and two queued ones."""
    t0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    starts = [
        t0,
        t0 - timedelta(hours=1),
        t0 - timedelta(hours=1),
        t0 - timedelta(hours=2),
        t0 - timedelta(hours=3),
    ]
    rows = [
        await seed_workflow(repo, tmp_path / "a", S.COMPLETED, started_at=ts, issue_id=f"S-{i}")
        for i, ts in enumerate(starts)
    ]
    rows += [
        await seed_workflow(repo, tmp_path / "b", S.PENDING, issue_id=f"Q-{i}") for i in range(2)
    ]
    return rows


def list_order(rows: list[ServerExecutionState]) -> list[str]:
    """started_at DESC NULLS LAST, id DESC."""
    ordered = sorted(rows, key=lambda r: r.id, reverse=True)
    floor = datetime.min.replace(tzinfo=UTC)
    ordered.sort(key=lambda r: r.started_at or floor, reverse=True)
    return [str(r.id) for r in ordered]


async def test_list_pages_with_cursor(
    client: httpx.AsyncClient, repo: WorkflowRepository, tmp_path: Path
) -> None:
    rows = await seed_listing(repo, tmp_path)
    started = [r for r in rows if r.started_at is not None]
    by_id = {str(r.id): r for r in rows}
    seen: list[str] = []
    params: dict[str, Any] = {"status": "completed", "limit": 2}
    pages = 0
    while True:
        body = (await client.get("/api/workflows", params=params)).json()
        pages += 1
        assert body["total"] == 5
        ids = [w["id"] for w in body["workflows"]]
        seen += ids
        if not body["has_more"]:
            assert body["cursor"] is None
            break
        last = by_id[ids[-1]]
        assert last.started_at is not None
        decoded = base64.b64decode(body["cursor"]).decode()
        assert decoded == f"{last.started_at.isoformat()}|{last.id}"
        params["cursor"] = body["cursor"]
    assert pages == 3
    assert seen == list_order(started)  # the equal started_at pair straddles page 1 and 2

    # Unfiltered: queued rows come last; a page ending on one has no cursor.
    everything = list_order(rows)
    first = (await client.get("/api/workflows", params={"limit": 6})).json()
    assert [w["id"] for w in first["workflows"]] == everything[:6]
    assert first["total"] == 7 and first["has_more"] is True and first["cursor"] is None
    whole = (await client.get("/api/workflows", params={"limit": 100})).json()
    assert [w["id"] for w in whole["workflows"]] == everything
    assert whole["has_more"] is False and whole["cursor"] is None
    assert whole["workflows"][0]["total_cost_usd"] is None
    assert whole["workflows"][0]["total_tokens"] is None
    assert whole["workflows"][0]["total_duration_ms"] is None


async def test_list_filters_and_token_fields(
    client: httpx.AsyncClient, services: AppServices, repo: WorkflowRepository, tmp_path: Path
) -> None:
    rows = await seed_listing(repo, tmp_path)
    now = datetime.now(UTC)
    await seed_usage(repo, rows[0].id, now, cost="0.250000", input_tokens=100, output_tokens=20)
    await seed_usage(repo, rows[0].id, now, cost="0.125000", input_tokens=10, output_tokens=5)

    body = (await client.get("/api/workflows", params={"worktree": f"{tmp_path}/b/x/.."})).json()
    assert body["total"] == 2
    assert {w["status"] for w in body["workflows"]} == {"pending"}
    body = (await client.get("/api/workflows", params={"status": "completed", "limit": 1})).json()
    top = body["workflows"][0]
    assert top["id"] == str(rows[0].id)
    assert top["total_cost_usd"] == 0.375
    assert top["total_tokens"] == 135
    assert top["total_duration_ms"] == 2000
    assert top["profile"] is None and top["created_at"] and top["started_at"]

    # A page is one pooled checkout, however many statements it runs.
    checkouts: list[object] = []
    pool = services.db.engine.sync_engine.pool
    listener = lambda *args: checkouts.append(args)  # noqa: E731
    event.listen(pool, "checkout", listener)
    try:
        assert (await client.get("/api/workflows")).status_code == 200
    finally:
        event.remove(pool, "checkout", listener)
    assert len(checkouts) == 1


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64!!",
        base64.b64encode(b"no-separator").decode(),
        base64.b64encode(f"yesterday|{UNKNOWN}".encode()).decode(),
        base64.b64encode(b"2025-01-01T00:00:00+00:00|not-a-uuid").decode(),
        base64.b64encode(f"2025-01-01T00:00:00|{UNKNOWN}".encode()).decode(),
        base64.b64encode(f"2025-01-01T00:00:00+00:00|{UNKNOWN}|x".encode()).decode(),
        base64.b64encode(b"\xff\xfe").decode(),
    ],
)
async def test_list_refuses_malformed_cursors(client: httpx.AsyncClient, cursor: str) -> None:
    response = await client.get("/api/workflows", params={"cursor": cursor})
    assert response.status_code == 400
    assert response.json() == {"detail": "Invalid cursor format"}


@pytest.mark.parametrize("query", ["status=running", "limit=0", "limit=101", "limit=x"])
async def test_list_query_validation(client: httpx.AsyncClient, query: str) -> None:
    assert (await client.get(f"/api/workflows?{query}")).status_code == 422


async def test_list_active(
    client: httpx.AsyncClient, repo: WorkflowRepository, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    running = await seed_workflow(repo, tmp_path / "a", S.IN_PROGRESS, started_at=now)
    blocked = await seed_workflow(repo, tmp_path / "b", S.BLOCKED, started_at=now - timedelta(1))
    queued = await seed_workflow(repo, tmp_path / "a", S.PENDING)
    await seed_workflow(repo, tmp_path / "a", S.COMPLETED, started_at=now)
    await seed_usage(repo, blocked.id, now, cost="0.500000")
    body = (await client.get("/api/workflows/active")).json()
    assert [w["id"] for w in body["workflows"]] == [
        str(running.id),
        str(blocked.id),
        str(queued.id),
    ]
    assert body["total"] == 3 and body["has_more"] is False and body["cursor"] is None
    assert body["workflows"][1]["total_cost_usd"] == 0.5
    assert body["workflows"][0]["total_cost_usd"] is None
    on_a = await client.get("/api/workflows/active", params={"worktree": str(tmp_path / "a")})
    assert [w["id"] for w in on_a.json()["workflows"]] == [str(running.id), str(queued.id)]


@pytest.mark.usefixtures("profile")
async def test_start_batch(client: httpx.AsyncClient, worktree: Path, tmp_path: Path) -> None:
    other = git_worktree(tmp_path / "other")
    first = await created_id(client, worktree, start=False)
    second = await created_id(client, other, start=False)
    response = await client.post(
        "/api/workflows/start-batch", json={"workflow_ids": [first, UNKNOWN]}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["started"] == [first]
    assert list(body["errors"]) == [UNKNOWN] and "not found" in body["errors"][UNKNOWN]
    response = await client.post("/api/workflows/start-batch", json={"worktree_path": str(other)})
    assert response.json() == {"started": [second], "errors": {}}
    await wait_for_api_status(client, first, "blocked")
    await wait_for_api_status(client, second, "blocked")
    bad = await client.post("/api/workflows/start-batch", json={"workflow_ids": ["nope"]})
    assert bad.status_code == 422


# ------------------------------------------------------------------------------ detail


async def test_detail_events_and_plan_file(
    client: httpx.AsyncClient, repo: WorkflowRepository, tmp_path: Path
) -> None:
    row = await seed_workflow(repo, tmp_path, S.PENDING)
    for n in range(60):
        await repo.save_event(
            WorkflowEvent(
                id=uuid.uuid4(),
                workflow_id=row.id,
                sequence=0,
                timestamp=datetime.now(UTC),
                agent="system",
                event_type=EventType.STAGE_STARTED,
                message=f"event {n}",
                data={"n": n},
            )
        )
    body = (await client.get(f"/api/workflows/{row.id}")).json()
    events = body["recent_events"]
    assert [e["sequence"] for e in events] == list(range(11, 61))
    assert events[-1]["message"] == "event 59" and events[-1]["data"] == {"n": 59}
    assert isinstance(events[0]["timestamp"], str) and events[0]["workflow_id"] == str(row.id)
    assert body["final_response"] is None and body["token_usage"] is None

    await repo.update_plan_cache(row.id, PlanCache(goal="G", plan_path="plans/p.md"))
    gone = (await client.get(f"/api/workflows/{row.id}")).json()
    assert gone["goal"] == "G" and gone["plan_path"] == "plans/p.md"
    assert gone["plan_markdown"] is None
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "p.md").write_text("# From disk\n")
    found = (await client.get(f"/api/workflows/{row.id}")).json()
    assert found["plan_markdown"] == "# From disk\n"


async def test_detail_unknown_and_malformed_ids(client: httpx.AsyncClient) -> None:
    body = assert_envelope(await client.get(f"/api/workflows/{UNKNOWN}"), 404, "NOT_FOUND")
    assert body["details"] == {"workflow_id": UNKNOWN}
    assert (await client.get("/api/workflows/not-a-uuid")).status_code == 422
    for action in ("cancel", "resume", "approve", "reject", "start", "plan", "replan"):
        response = await client.post(f"/api/workflows/not-a-uuid/{action}", json={})
        assert response.status_code == 422, action
        assert isinstance(response.json()["detail"], list)


# ----------------------------------------------------------------------------- actions


@pytest.mark.usefixtures("profile")
async def test_cancel(client: httpx.AsyncClient, worktree: Path) -> None:
    wid = await created_id(client, worktree, start=False)
    response = await client.post(f"/api/workflows/{wid}/cancel")
    assert response.status_code == 200
    assert response.json() == {"status": "cancelled", "workflow_id": wid}
    detail = (await client.get(f"/api/workflows/{wid}")).json()
    assert detail["status"] == "cancelled" and detail["completed_at"] is not None
    again = assert_envelope(await client.post(f"/api/workflows/{wid}/cancel"), 422, "INVALID_STATE")
    assert again["details"] == {"workflow_id": wid, "current_status": "cancelled"}
    assert_envelope(await client.post(f"/api/workflows/{UNKNOWN}/cancel"), 404, "NOT_FOUND")


async def test_resume_after_a_failed_step(
    client: httpx.AsyncClient, agents: AgentServer, profile: Profile, worktree: Path
) -> None:
    wid = await created_id(client, worktree, profile=profile.name)
    await wait_for_api_status(client, wid, "blocked")
    agents.fail_next["developer"] = 400  # not transient: the step fails
    assert (await client.post(f"/api/workflows/{wid}/approve")).status_code == 200
    failed = await wait_for_api_status(client, wid, "failed")
    assert failed["failure_reason"]

    response = await client.post(f"/api/workflows/{wid}/resume")
    assert response.status_code == 200
    assert response.json() == {"status": "resumed", "workflow_id": wid}
    done = await wait_for_api_status(client, wid, "completed", "failed")
    assert done["status"] == "completed", done["failure_reason"]
    assert done["failure_reason"] is None
    assert agents.calls["architect"] == 1 and agents.calls["developer"] == 2
    assert_envelope(await client.post(f"/api/workflows/{wid}/resume"), 422, "INVALID_STATE")


@pytest.mark.usefixtures("profile")
async def test_resume_errors(
    client: httpx.AsyncClient, repo: WorkflowRepository, worktree: Path, tmp_path: Path
) -> None:
    pending = await created_id(client, worktree, start=False)
    body = assert_envelope(
        await client.post(f"/api/workflows/{pending}/resume"), 422, "INVALID_STATE"
    )
    assert body["details"]["current_status"] == "pending"
    no_checkpoint = await seed_workflow(repo, tmp_path / "x", S.FAILED)
    body = assert_envelope(
        await client.post(f"/api/workflows/{no_checkpoint.id}/resume"), 422, "INVALID_STATE"
    )
    assert "checkpoint" in body["error"]
    assert_envelope(await client.post(f"/api/workflows/{UNKNOWN}/resume"), 404, "NOT_FOUND")


@pytest.mark.usefixtures("profile")
async def test_approve_and_reject_errors(
    client: httpx.AsyncClient, repo: WorkflowRepository, worktree: Path, tmp_path: Path
) -> None:
    pending = await created_id(client, worktree, start=False)
    for action, body in (("approve", None), ("reject", {"feedback": "no"})):
        response = await client.post(f"/api/workflows/{pending}/{action}", json=body)
        assert_envelope(response, 422, "INVALID_STATE")
        response = await client.post(f"/api/workflows/{UNKNOWN}/{action}", json=body)
        assert_envelope(response, 404, "NOT_FOUND")

    blocked = await seed_workflow(repo, tmp_path / "b", S.BLOCKED, started_at=datetime.now(UTC))
    for bad in ({}, {"feedback": ""}):
        response = await client.post(f"/api/workflows/{blocked.id}/reject", json=bad)
        assert response.status_code == 422
    response = await client.post(f"/api/workflows/{blocked.id}/reject", json={"feedback": "Redo"})
    assert response.status_code == 200
    assert response.json() == {"status": "rejected", "workflow_id": str(blocked.id)}
    detail = (await client.get(f"/api/workflows/{blocked.id}")).json()
    assert detail["status"] == "failed" and detail["failure_reason"] == "Redo"
    assert "approval_rejected" in [e["event_type"] for e in detail["recent_events"]]
    response = await client.post(f"/api/workflows/{blocked.id}/approve")
    assert assert_envelope(response, 422, "INVALID_STATE")["details"]["current_status"] == "failed"


async def test_start_pending(
    client: httpx.AsyncClient,
    services: AppServices,
    repo: WorkflowRepository,
    profile: Profile,
    worktree: Path,
    tmp_path: Path,
) -> None:
    wid = await created_id(client, worktree, start=False, profile=profile.name)
    response = await client.post(f"/api/workflows/{wid}/start")
    assert response.status_code == 202
    assert response.json()["status"] == "started"
    await wait_for_api_status(client, wid, "blocked")
    assert_envelope(await client.post(f"/api/workflows/{wid}/start"), 422, "INVALID_STATE")

    missing = await client.post(f"/api/workflows/{UNKNOWN}/start")
    assert missing.status_code == 404
    assert set(missing.json()) == {"detail"} and UNKNOWN in missing.json()["detail"]

    # The worktree is held by the blocked workflow: a second one there cannot start.
    queued = await created_id(client, worktree, start=False)
    conflict = await client.post(f"/api/workflows/{queued}/start")
    assert conflict.status_code == 409
    assert set(conflict.json()) == {"detail"} and wid in conflict.json()["detail"]
    assert (await client.get(f"/api/workflows/{queued}")).json()["status"] == "pending"

    other = await created_id(client, git_worktree(tmp_path / "other"), start=False)
    await limit_to_one_running(services, repo, tmp_path)
    response = await client.post(f"/api/workflows/{other}/start")
    assert_envelope(response, 429, "CONCURRENCY_LIMIT")
    assert response.headers["Retry-After"] == "30"


async def test_set_plan(
    client: httpx.AsyncClient,
    agents: AgentServer,
    repo: WorkflowRepository,
    profile: Profile,
    worktree: Path,
    tmp_path: Path,
) -> None:
    wid = await created_id(client, worktree, start=False, profile=profile.name)
    url = f"/api/workflows/{wid}/plan"
    response = await client.post(url, json={"plan_content": plan_markdown(2)})
    assert response.status_code == 200
    assert response.json() == {
        "goal": GOAL,
        "key_files": ["app/routes.py", "tests/test_routes.py"],
        "total_tasks": 2,
    }
    body = assert_envelope(
        await client.post(url, json={"plan_content": plan_markdown(1)}), 409, "WORKFLOW_CONFLICT"
    )
    assert "force" in body["error"]
    (worktree / "plan.md").write_text(plan_markdown(3))
    response = await client.post(url, json={"plan_file": "plan.md", "force": True})
    assert response.status_code == 200 and response.json()["total_tasks"] == 3
    detail = (await client.get(f"/api/workflows/{wid}")).json()
    assert detail["plan_path"] == "plan.md" and "### Task 3" in detail["plan_markdown"]
    response = await client.post(url, json={"plan_file": "missing.md", "force": True})
    assert_envelope(response, 404, "FILE_NOT_FOUND")
    for bad in ({}, {"plan_file": "plan.md", "plan_content": "# x"}, {"force": True}):
        assert (await client.post(url, json=bad)).status_code == 422

    blocked = await seed_workflow(repo, tmp_path / "b", S.BLOCKED, started_at=datetime.now(UTC))
    response = await client.post(
        f"/api/workflows/{blocked.id}/plan", json={"plan_content": plan_markdown(1)}
    )
    assert_envelope(response, 422, "INVALID_STATE")
    response = await client.post(
        f"/api/workflows/{UNKNOWN}/plan", json={"plan_content": plan_markdown(1)}
    )
    assert_envelope(response, 404, "NOT_FOUND")

    # The plan set through the API is the one the run uses: the architect never runs.
    assert (await client.post(f"/api/workflows/{wid}/start")).status_code == 202
    blocked_run = await wait_for_api_status(client, wid, "blocked")
    assert blocked_run["goal"] == GOAL
    assert agents.calls["architect"] == 0


async def test_replan(
    client: httpx.AsyncClient,
    services: AppServices,
    agents: AgentServer,
    repo: WorkflowRepository,
    profile: Profile,
    worktree: Path,
    tmp_path: Path,
) -> None:
    wid = await created_id(client, worktree, profile=profile.name)
    await wait_for_api_status(client, wid, "blocked")
    response = await client.post(f"/api/workflows/{wid}/replan")
    assert response.status_code == 200
    assert response.json() == {"status": "replanning", "workflow_id": wid}
    await services.orchestrator.wait_idle(30)
    again = await wait_for_api_status(client, wid, "blocked")
    assert again["goal"] == GOAL
    assert agents.calls["architect"] == 2

    queued = await created_id(client, git_worktree(tmp_path / "q"), start=False)
    assert_envelope(await client.post(f"/api/workflows/{queued}/replan"), 422, "INVALID_STATE")
    now = datetime.now(UTC)
    ghost = await seed_workflow(repo, tmp_path / "g", S.BLOCKED, started_at=now, profile_id="gone")
    assert_envelope(await client.post(f"/api/workflows/{ghost.id}/replan"), 400, "INVALID_VALUE")
    assert (await client.get(f"/api/workflows/{ghost.id}")).json()["status"] == "blocked"
    anonymous = await seed_workflow(repo, tmp_path / "n", S.BLOCKED, started_at=now)
    response = await client.post(f"/api/workflows/{anonymous.id}/replan")
    assert_envelope(response, 422, "INVALID_STATE")
    assert_envelope(await client.post(f"/api/workflows/{UNKNOWN}/replan"), 404, "NOT_FOUND")
