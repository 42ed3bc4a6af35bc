"""Workflows driven end to end: real graph, real PostgreSQL saver, `api` driver over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from amelia.server.database import Database, schema
from amelia.server.database.prompt_repository import PromptRepository
from amelia.server.database.settings_repository import SettingsRepository
from amelia.server.exceptions import (
    ConcurrencyLimitError,
    InvalidStateError,
    InvalidWorktreeError,
    WorkflowConflictError,
)
from amelia.server.models.events import EventType, WorkflowEvent
from amelia.server.models.state import WorkflowStatus
from amelia.server.orchestrator.service import OrchestratorService
from tests.orchestrator.agent_server import AgentServer, plan_markdown
from tests.orchestrator.helpers import wait_for_status

S = WorkflowStatus


async def test_planned_approved_developed_reviewed_completed(
    orchestrator: OrchestratorService,
    agents: AgentServer,
    worktree: Path,
    db: Database,
    events: list[WorkflowEvent],
) -> None:
    custom = await PromptRepository(db).create_version(
        "developer.system", "You are the developer. Custom rules: keep it small.", "tighter"
    )
    repo = orchestrator.repository
    wid = await orchestrator.start_workflow("ISSUE-1", str(worktree), task_title="Greeting")

    blocked = await wait_for_status(repo, wid, S.BLOCKED)
    assert blocked.plan_cache is not None
    assert blocked.plan_cache.goal == "Expose GET /hello returning a greeting"
    assert blocked.plan_cache.total_tasks == 1
    assert agents.calls["architect"] == 1
    assert agents.calls["developer"] == 0

    await orchestrator.approve_workflow(wid)
    done = await wait_for_status(repo, wid, S.COMPLETED, S.FAILED)
    assert done.workflow_status == S.COMPLETED, done.failure_reason
    assert done.completed_at is not None
    assert dict(agents.calls) == {"architect": 1, "developer": 1, "reviewer": 1}

    stored = await repo.get_recent_events(wid, 500)
    types = [e.event_type for e in stored]
    for expected in (
        EventType.WORKFLOW_STARTED,
        EventType.STAGE_STARTED,
        EventType.STAGE_COMPLETED,
        EventType.APPROVAL_REQUIRED,
        EventType.APPROVAL_GRANTED,
        EventType.WORKFLOW_COMPLETED,
    ):
        assert expected in types, expected
    assert types.index(EventType.APPROVAL_REQUIRED) < types.index(EventType.APPROVAL_GRANTED)
    assert types[-1] == EventType.WORKFLOW_COMPLETED
    assert [e.sequence for e in stored] == list(range(1, len(stored) + 1))
    stages = [e.data["stage"] for e in stored if e.event_type == EventType.STAGE_COMPLETED]
    assert stages == ["architect", "plan_validator", "developer", "reviewer", "finish"]
    # Ephemeral agent messages were broadcast, not stored.
    assert any(e.event_type == EventType.AGENT_MESSAGE for e in events)
    assert EventType.AGENT_MESSAGE not in types

    usage = await repo.get_token_usage(wid)
    assert sorted(u.agent for u in usage) == ["architect", "developer", "reviewer"]
    assert all(u.input_tokens == 120 and u.output_tokens == 30 for u in usage)
    summary = await repo.get_token_summary(wid)
    assert summary is not None
    assert summary.total_input_tokens == 360

    recorded = await PromptRepository(db).get_workflow_prompts(wid)
    assert [(r.prompt_id, r.version_id) for r in recorded] == [("developer.system", custom.id)]


async def test_multi_task_plan_runs_each_task(
    orchestrator: OrchestratorService, agents: AgentServer, worktree: Path
) -> None:
    agents.tasks = 3
    wid = await orchestrator.start_workflow("ISSUE-2", str(worktree))
    await wait_for_status(orchestrator.repository, wid, S.BLOCKED)
    await orchestrator.approve_workflow(wid)
    done = await wait_for_status(orchestrator.repository, wid, S.COMPLETED, S.FAILED)
    assert done.workflow_status == S.COMPLETED, done.failure_reason
    assert agents.calls["developer"] == 3
    assert agents.calls["reviewer"] == 3


async def test_review_passes_are_bounded(
    orchestrator: OrchestratorService, agents: AgentServer, worktree: Path
) -> None:
    agents.reviews = [False, False, False, False]
    wid = await orchestrator.start_workflow("ISSUE-3", str(worktree))
    await wait_for_status(orchestrator.repository, wid, S.BLOCKED)
    await orchestrator.approve_workflow(wid)
    done = await wait_for_status(orchestrator.repository, wid, S.COMPLETED, S.FAILED)
    assert done.workflow_status == S.COMPLETED
    assert agents.calls["reviewer"] == 3
    assert agents.calls["developer"] == 3
    events = await orchestrator.repository.get_recent_events(wid, 500)
    assert EventType.SYSTEM_WARNING in [e.event_type for e in events]


async def test_review_workflow_runs_reviewer_evaluator_developer_loop(
    orchestrator: OrchestratorService, agents: AgentServer, worktree: Path
) -> None:
    agents.reviews = [False]
    wid = await orchestrator.start_review_workflow("diff --git a/x b/x\n+print()", str(worktree))
    done = await wait_for_status(orchestrator.repository, wid, S.COMPLETED, S.FAILED)
    assert done.workflow_status == S.COMPLETED, done.failure_reason
    assert dict(agents.calls) == {"reviewer": 2, "evaluator": 1, "developer": 1}
    row = await orchestrator.repository.get(wid)
    assert row is not None
    assert row.workflow_type == "review"


async def test_queued_workflow_with_external_plan_skips_the_architect(
    orchestrator: OrchestratorService, agents: AgentServer, worktree: Path
) -> None:
    repo = orchestrator.repository
    wid = await orchestrator.queue_workflow("ISSUE-4", str(worktree))
    assert (await repo.get(wid)).workflow_status == S.PENDING  # type: ignore[union-attr]
    result = await orchestrator.set_workflow_plan(wid, plan_content=plan_markdown(2))
    assert result == {
        "goal": "Expose GET /hello returning a greeting",
        "key_files": ["app/routes.py", "tests/test_routes.py"],
        "total_tasks": 2,
    }
    with pytest.raises(WorkflowConflictError):
        await orchestrator.set_workflow_plan(wid, plan_content=plan_markdown(1))
    await orchestrator.set_workflow_plan(wid, plan_content=plan_markdown(1), force=True)
    await orchestrator.start_pending_workflow(wid)
    await wait_for_status(repo, wid, S.BLOCKED)
    assert agents.calls["architect"] == 0
    await orchestrator.approve_workflow(wid)
    done = await wait_for_status(repo, wid, S.COMPLETED, S.FAILED)
    assert done.workflow_status == S.COMPLETED, done.failure_reason
    assert agents.calls["developer"] == 1


async def test_queue_and_plan_then_replan(
    orchestrator: OrchestratorService, agents: AgentServer, worktree: Path
) -> None:
    repo = orchestrator.repository
    wid = await orchestrator.queue_and_plan_workflow("ISSUE-5", str(worktree))
    blocked = await wait_for_status(repo, wid, S.BLOCKED)
    assert blocked.started_at is None
    assert blocked.plan_cache is not None
    assert blocked.plan_cache.total_tasks == 1
    await orchestrator.replan_workflow(wid)
    await wait_for_status(repo, wid, S.BLOCKED, timeout=30)
    await orchestrator.wait_idle(10)
    assert agents.calls["architect"] == 2
    with pytest.raises(InvalidStateError):
        await orchestrator.start_pending_workflow(wid)


async def test_reject_fails_with_feedback(
    orchestrator: OrchestratorService, worktree: Path
) -> None:
    wid = await orchestrator.start_workflow("ISSUE-6", str(worktree))
    await wait_for_status(orchestrator.repository, wid, S.BLOCKED)
    await orchestrator.reject_workflow(wid, "Too broad; split it.")
    row = await orchestrator.repository.get(wid)
    assert row is not None
    assert row.workflow_status == S.FAILED
    assert row.failure_reason == "Too broad; split it."
    with pytest.raises(InvalidStateError):
        await orchestrator.approve_workflow(wid)


@pytest.mark.slow
async def test_approve_and_reject_at_the_same_moment(
    orchestrator: OrchestratorService, worktree: Path, tmp_path: Path
) -> None:
    repo = orchestrator.repository
    for i in range(50):
        tree = tmp_path / f"race-{i}"
        (tree / ".git").mkdir(parents=True)
        wid = await orchestrator.queue_and_plan_workflow(f"RACE-{i}", str(tree))
        await wait_for_status(repo, wid, S.BLOCKED)
        results = await asyncio.gather(
            orchestrator.approve_workflow(wid),
            orchestrator.reject_workflow(wid, "no"),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], InvalidStateError)
        row = await repo.get(wid)
        assert row is not None
        if results[0] is None:  # approve won: the run continues, never failed by the reject
            assert row.workflow_status in (S.IN_PROGRESS, S.COMPLETED)
            assert row.failure_reason is None
        else:
            assert row.workflow_status == S.FAILED
            assert row.failure_reason == "no"
    await orchestrator.wait_idle(60)


async def test_cancel_stops_the_running_task(
    orchestrator: OrchestratorService, agents: AgentServer, worktree: Path
) -> None:
    agents.hold_developer.clear()
    wid = await orchestrator.start_workflow("ISSUE-7", str(worktree))
    await wait_for_status(orchestrator.repository, wid, S.BLOCKED)
    await orchestrator.approve_workflow(wid)
    assert await asyncio.to_thread(agents.developer_started.wait, 10)
    await orchestrator.cancel_workflow(wid, "not needed")
    await orchestrator.wait_idle(5)
    assert orchestrator.get_active_workflows() == []
    row = await orchestrator.repository.get(wid)
    assert row is not None
    assert row.workflow_status == S.CANCELLED
    agents.hold_developer.set()
    with pytest.raises(InvalidStateError):
        await orchestrator.cancel_workflow(wid)


async def test_concurrency_limit_is_read_live(
    orchestrator: OrchestratorService,
    agents: AgentServer,
    worktree: Path,
    tmp_path: Path,
    db: Database,
) -> None:
    await SettingsRepository(db).update_server_settings({"max_concurrent": 1})
    agents.hold_developer.clear()
    wid = await orchestrator.start_workflow("ISSUE-8", str(worktree))
    await wait_for_status(orchestrator.repository, wid, S.BLOCKED)
    await orchestrator.approve_workflow(wid)  # now in_progress, held in the developer
    other = tmp_path / "other"
    (other / ".git").mkdir(parents=True)
    with pytest.raises(ConcurrencyLimitError):
        await orchestrator.start_workflow("ISSUE-9", str(other))
    await SettingsRepository(db).update_server_settings({"max_concurrent": 2})
    second = await orchestrator.start_workflow("ISSUE-9", str(other))
    agents.hold_developer.set()
    await wait_for_status(orchestrator.repository, second, S.BLOCKED)
    await wait_for_status(orchestrator.repository, wid, S.COMPLETED)


async def test_worktree_exclusivity_comes_from_the_database(
    orchestrator: OrchestratorService, worktree: Path
) -> None:
    wid = await orchestrator.start_workflow("ISSUE-10", str(worktree))
    await wait_for_status(orchestrator.repository, wid, S.BLOCKED)
    with pytest.raises(WorkflowConflictError) as caught:
        await orchestrator.start_workflow("ISSUE-11", str(worktree))
    assert caught.value.workflow_id == wid
    queued = await orchestrator.queue_workflow("ISSUE-12", str(worktree))  # queueing is fine
    with pytest.raises(WorkflowConflictError):
        await orchestrator.start_pending_workflow(queued)
    row = await orchestrator.repository.get(queued)
    assert row is not None
    assert row.workflow_status == S.PENDING


async def test_bad_worktree_and_profile_are_clear_errors(
    orchestrator: OrchestratorService, tmp_path: Path
) -> None:
    with pytest.raises(InvalidWorktreeError, match="does not exist"):
        await orchestrator.start_workflow("I", str(tmp_path / "missing"))
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(InvalidWorktreeError, match="git"):
        await orchestrator.start_workflow("I", str(plain))
    (plain / ".git").mkdir()
    with pytest.raises(ValueError, match="not found"):
        await orchestrator.start_workflow("I", str(plain), profile="nobody")


async def test_failed_step_is_resumed_without_repeating_completed_steps(
    orchestrator: OrchestratorService, agents: AgentServer, worktree: Path
) -> None:
    repo = orchestrator.repository
    wid = await orchestrator.start_workflow("ISSUE-13", str(worktree))
    await wait_for_status(repo, wid, S.BLOCKED)
    agents.fail_next["developer"] = 400  # not transient: the step fails
    await orchestrator.approve_workflow(wid)
    failed = await wait_for_status(repo, wid, S.FAILED)
    assert failed.failure_reason is not None
    assert "400" in failed.failure_reason
    await orchestrator.resume_workflow(wid)
    done = await wait_for_status(repo, wid, S.COMPLETED, S.FAILED)
    assert done.workflow_status == S.COMPLETED, done.failure_reason
    assert agents.calls["architect"] == 1
    assert agents.calls["developer"] == 2  # the failed attempt and the successful one


async def test_resume_needs_a_checkpoint(orchestrator: OrchestratorService, worktree: Path) -> None:
    wid = await orchestrator.queue_workflow("ISSUE-14", str(worktree))
    await orchestrator.repository.set_status(wid, S.FAILED, "boom")
    with pytest.raises(InvalidStateError, match="no checkpoint"):
        await orchestrator.resume_workflow(wid)


async def test_plan_the_architect_cannot_parse_fails_the_step(
    orchestrator: OrchestratorService, agents: AgentServer, worktree: Path, db: Database
) -> None:
    agents.tasks = 0  # a plan without tasks: the strict parser refuses it
    wid = await orchestrator.start_workflow("ISSUE-15", str(worktree))
    failed = await wait_for_status(orchestrator.repository, wid, S.FAILED)
    assert failed.failure_reason is not None
    assert "Task 1" in failed.failure_reason
    async with db.connection() as conn:
        levels = (
            await conn.scalars(
                select(schema.workflow_log.c.level).where(
                    schema.workflow_log.c.event_type == "workflow_failed"
                )
            )
        ).all()
    assert levels == ["error"]


async def test_unknown_workflow_ids(orchestrator: OrchestratorService) -> None:
    from amelia.server.exceptions import WorkflowNotFoundError

    for call in (
        orchestrator.approve_workflow,
        orchestrator.cancel_workflow,
        orchestrator.resume_workflow,
        orchestrator.start_pending_workflow,
    ):
        with pytest.raises(WorkflowNotFoundError):
            await call(uuid.uuid4())
