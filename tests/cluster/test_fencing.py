"""Writes of a run carry its fence: once another process claimed the run, they are refused
(checkpoints, events, status, plan) and nothing of them lands."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from amelia.server.checkpoint import CheckpointStore, setup_checkpoint_tables, thread_config
from amelia.server.cluster.fencing import running
from amelia.server.database import Database
from amelia.server.database.repository import WorkflowRepository
from amelia.server.database.run_leases import RunLeaseRepository
from amelia.server.events.bus import EventBus
from amelia.server.exceptions import FencedOutError
from amelia.server.models.events import EventType
from amelia.server.models.state import PlanCache, ServerExecutionState, WorkflowStatus
from amelia.server.orchestrator.emitter import EventEmitter
from amelia.server.orchestrator.runner import GraphRunner


async def checkpoint_count(db: Database, workflow_id: uuid.UUID) -> int:
    async with db.connection() as conn:
        value = await conn.scalar(
            text("SELECT count(*) FROM checkpoints WHERE thread_id = :t"), {"t": str(workflow_id)}
        )
    return int(value or 0)


async def test_a_stale_run_cannot_write_checkpoints_and_a_current_one_can(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    await setup_checkpoint_tables(database_url)
    workflow_id = uuid.uuid4()
    await WorkflowRepository(db).create(
        ServerExecutionState(
            id=workflow_id,
            issue_id="FENCE-1",
            worktree_path=str(tmp_path),
            workflow_status=WorkflowStatus.IN_PROGRESS,
        )
    )
    leases = RunLeaseRepository(db)
    first = await leases.claim(workflow_id, uuid.uuid4(), 30.0, None)
    assert first is not None
    async with CheckpointStore(database_url, min_size=1, max_size=2) as store:
        runner = GraphRunner(store.saver, EventEmitter(WorkflowRepository(db), EventBus()))
        row = await WorkflowRepository(db).get(workflow_id)
        assert row is not None
        with running(first):
            await runner.set_approval(row, True)  # a checkpoint write under the owner's fence
        written = await checkpoint_count(db, workflow_id)
        assert written >= 1

        # Another process takes the run over (the first owner's lease "expired").
        async with db.connection() as conn:
            await conn.execute(
                text(
                    "UPDATE workflows SET lease_expires_at = now() - interval '1 s' WHERE id = :w"
                ),
                {"w": workflow_id},
            )
        second = await leases.claim(workflow_id, uuid.uuid4(), 30.0, None)
        assert second is not None and second.fence == first.fence + 1

        with running(first), pytest.raises(FencedOutError):
            await runner.set_approval(row, False)
        assert await checkpoint_count(db, workflow_id) == written  # nothing landed

        with running(second):
            await runner.set_approval(row, False)
        assert await checkpoint_count(db, workflow_id) == written + 1
        state = await runner.state_values(row)
        assert state["human_approved"] is False
        # Outside any run (tools, tests) writes are not fenced.
        await store.saver.adelete_thread(str(workflow_id))
        assert thread_config(workflow_id)["configurable"]["thread_id"] == str(workflow_id)


async def test_events_status_and_plan_writes_of_a_stale_run_are_refused(
    db: Database, tmp_path: Path
) -> None:
    repository = WorkflowRepository(db)
    workflow_id = uuid.uuid4()
    await repository.create(
        ServerExecutionState(
            id=workflow_id,
            issue_id="FENCE-2",
            worktree_path=str(tmp_path),
            workflow_status=WorkflowStatus.IN_PROGRESS,
        )
    )
    leases = RunLeaseRepository(db)
    stale = await leases.claim(workflow_id, uuid.uuid4(), 0.01, None)  # expires at once
    assert stale is not None
    bus_events: list[Any] = []
    bus = EventBus()
    bus.subscribe(bus_events.append)
    emitter = EventEmitter(repository, bus)
    with running(stale):
        stored = await emitter.emit(workflow_id, EventType.STAGE_STARTED, "before the take-over")
    assert stored.sequence == 1

    await asyncio.sleep(0.05)
    current = await leases.claim(workflow_id, uuid.uuid4(), 30.0, None)
    assert current is not None and current.fence == stale.fence + 1
    assert current.takeovers == 1

    with running(stale):
        with pytest.raises(FencedOutError):
            await emitter.emit(workflow_id, EventType.STAGE_COMPLETED, "late")
        with pytest.raises(FencedOutError):
            await repository.update_plan_cache(
                workflow_id, PlanCache(goal="late"), fence=stale.fence
            )
        with pytest.raises(FencedOutError):
            await repository.transition(
                workflow_id,
                (WorkflowStatus.IN_PROGRESS,),
                WorkflowStatus.COMPLETED,
                fence=stale.fence,
            )
    row = await repository.get(workflow_id)
    assert row is not None and row.workflow_status == WorkflowStatus.IN_PROGRESS
    assert row.plan_cache is None
    assert [e.message for e in await repository.get_recent_events(workflow_id)] == [
        "before the take-over"
    ]

    with running(current):
        await emitter.emit(workflow_id, EventType.STAGE_COMPLETED, "the new owner's")
    done = await repository.transition(
        workflow_id, (WorkflowStatus.IN_PROGRESS,), WorkflowStatus.COMPLETED, fence=current.fence
    )
    assert done is not None and done.workflow_status == WorkflowStatus.COMPLETED
    assert [e.sequence for e in await repository.get_recent_events(workflow_id)] == [1, 2]
    # The run is over: nobody owns it, nobody can claim it.
    assert await leases.owned_runs() == {}
    assert await leases.claim(workflow_id, uuid.uuid4(), 30.0, None) is None
