"""Helpers for the workflow and usage API tests: worktrees, seeded rows, waiting on the API."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.state import PlanCache, ServerExecutionState, WorkflowStatus
from amelia.server.models.tokens import TokenUsage


def git_worktree(path: Path) -> Path:
    """A fresh git repository at `path` (created), returned resolved."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path.resolve()


async def seed_workflow(
    repo: WorkflowRepository,
    worktree: Path | str,
    status: WorkflowStatus = WorkflowStatus.PENDING,
    *,
    started_at: datetime | None = None,
    created_at: datetime | None = None,
    issue_id: str = "SEED-1",
    profile_id: str | None = None,
    plan_cache: PlanCache | None = None,
    workflow_id: uuid.UUID | None = None,
) -> ServerExecutionState:
    """Insert a workflow row directly (no run is attached to it)."""
    row = ServerExecutionState(
        id=workflow_id or uuid.uuid4(),
        issue_id=issue_id,
        worktree_path=str(worktree),
        profile_id=profile_id,
        plan_cache=plan_cache,
        workflow_status=status,
        created_at=created_at or datetime.now(UTC),
        started_at=started_at,
    )
    await repo.create(row)
    return row


async def seed_usage(
    repo: WorkflowRepository,
    workflow_id: uuid.UUID,
    timestamp: datetime,
    *,
    model: str = "test/model",
    cost: str = "0.010000",
    input_tokens: int = 100,
    output_tokens: int = 20,
    duration_ms: int = 1000,
    agent: str = "developer",
) -> TokenUsage:
    """Record one token-usage row."""
    usage = TokenUsage(
        workflow_id=workflow_id,
        agent=agent,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=Decimal(cost),
        duration_ms=duration_ms,
        timestamp=timestamp,
    )
    await repo.save_token_usage(usage)
    return usage


async def wait_for_api_status(
    client: httpx.AsyncClient,
    workflow_id: str | uuid.UUID,
    *statuses: str,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Poll `GET /api/workflows/{id}` until its status is one of `statuses`; the body."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await client.get(f"/api/workflows/{workflow_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in statuses:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"workflow {workflow_id} is {body.get('status')} ({body.get('failure_reason')}), "
        f"expected one of {statuses}"
    )
