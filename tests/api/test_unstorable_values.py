"""Values PostgreSQL cannot store get a clear 422, and nothing already stored changes.

Found by the fuzz pass: a NUL character in a rejection's feedback reached the database and
answered 500.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx

from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.state import WorkflowStatus
from amelia.server.services import AppServices
from tests.api.workflow_fixtures import seed_workflow


async def test_nul_in_feedback_is_refused_and_the_workflow_is_unchanged(
    client: httpx.AsyncClient, services: AppServices, tmp_path: Path
) -> None:
    repo = WorkflowRepository(services.db)
    blocked = await seed_workflow(repo, tmp_path, WorkflowStatus.BLOCKED)
    response = await client.post(
        f"/api/workflows/{blocked.id}/reject", json={"feedback": "bad\u0000feedback"}
    )
    assert response.status_code == 422, response.text
    assert "NUL" in response.json()["detail"][0]["msg"]
    row = await repo.get(blocked.id)
    assert row is not None
    assert row.workflow_status == WorkflowStatus.BLOCKED
    assert row.failure_reason is None


async def test_nul_for_an_unknown_workflow_is_not_a_server_error(
    client: httpx.AsyncClient,
) -> None:
    # The fuzzer's exact body: JSON escapes for a surrogate pair, a pilcrow and a NUL.
    body = '{"feedback": "\\ud891\\udd68\\u00b6\\u0000[\\u0084"}'
    response = await client.post(
        f"/api/workflows/{uuid.uuid4()}/reject",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code in (404, 422), response.text


async def test_nul_anywhere_in_a_body_or_query_is_a_422(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    for path, body in (
        ("/api/profiles", {"id": "p", "working_dir": "/x\u0000", "agents": {}}),
        (
            "/api/workflows",
            {"issue_id": "I-1", "worktree_path": str(tmp_path), "task_title": "a\u0000"},
        ),
        ("/api/brainstorm/sessions", {"profile_id": "p", "topic": "t\u0000"}),
        ("/api/prompts/architect.plan/versions", {"content": "x\u0000y"}),
    ):
        response = await client.post(path, json=body)
        assert response.status_code == 422, (path, response.text)
    response = await client.get("/api/workflows", params={"worktree": "/a\u0000b"})
    assert response.status_code == 422
    listed = await client.get("/api/profiles")
    assert listed.json() == []
