"""Checkpoint bytes grow linearly with loop iterations (no state channel duplicates itself)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from amelia.server.checkpoint import CheckpointStore
from amelia.server.database import Database, ProfileRepository
from amelia.server.models.state import ServerExecutionState, WorkflowStatus, WorkflowType
from amelia.server.orchestrator.agent_runtime import WorkflowAgentRuntime
from amelia.server.orchestrator.runner import GraphRunner
from amelia.server.orchestrator.service import OrchestratorService
from tests.orchestrator.agent_server import AgentServer

THREAD_BYTES = text(
    "SELECT (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM checkpoints c "
    "        WHERE thread_id = :t)"
    "     + (SELECT coalesce(sum(pg_column_size(b.*)), 0) FROM checkpoint_blobs b "
    "        WHERE thread_id = :t)"
    "     + (SELECT coalesce(sum(pg_column_size(w.*)), 0) FROM checkpoint_writes w "
    "        WHERE thread_id = :t)"
)


async def run_review_loop(
    orchestrator: OrchestratorService,
    checkpoints: CheckpointStore,
    db: Database,
    agents: AgentServer,
    worktree: Path,
    passes: int,
) -> int:
    agents.reviews = [False] * passes
    row = ServerExecutionState(
        id=uuid.uuid4(),
        issue_id="GROWTH",
        worktree_path=f"{worktree}-{passes}",
        workflow_type=WorkflowType.REVIEW,
        workflow_status=WorkflowStatus.IN_PROGRESS,
        created_at=datetime.now(UTC),
        issue_cache={"id": "GROWTH", "title": "t", "description": "diff --git a/x b/x\n+x"},
    )
    await orchestrator.repository.create(row)
    profile = await ProfileRepository(db).get_profile("test")
    assert profile is not None
    runtime = WorkflowAgentRuntime(
        row.id,
        profile,
        {
            "reviewer.agentic": "You are the reviewer.",
            "evaluator.system": "You are the evaluator.",
            "developer.review_fix": "You are the developer.",
        },
        orchestrator.repository,
        orchestrator.emitter,
    )
    runner = GraphRunner(checkpoints.saver, orchestrator.emitter)
    initial = {
        "workflow_id": str(row.id),
        "diff_content": "diff",
        "review_iteration": 0,
        "max_review_passes": passes,
    }
    try:
        result = await runner.run(row, runtime, initial)
    finally:
        await runtime.aclose()
    assert result.values["review_iteration"] == passes
    async with db.connection() as conn:
        size = await conn.scalar(THREAD_BYTES, {"t": str(row.id)})
    return int(size)


async def test_checkpoint_bytes_after_2n_iterations_stay_under_2_5x_of_n(
    orchestrator: OrchestratorService,
    checkpoints: CheckpointStore,
    db: Database,
    agents: AgentServer,
    worktree: Path,
) -> None:
    n = 5
    small = await run_review_loop(orchestrator, checkpoints, db, agents, worktree, n)
    large = await run_review_loop(orchestrator, checkpoints, db, agents, worktree, 2 * n)
    assert agents.calls["reviewer"] == 3 * n
    assert small > 0
    print(f"checkpoint bytes: {n} passes {small}, {2 * n} passes {large}")
    assert large / small < 2.5, (small, large)
