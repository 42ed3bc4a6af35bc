"""A run's start and its commands, interrupted for real: killed connections, cancelled calls.

- The reads a run starts with (row, profile) lose their connection: the workflow is not
  failed (it would have no checkpoint to resume from); it starts once the database answers,
  or, when it stays away past the retries, it is released and the next claim runs it.
- An approve or a replan cancelled after its claim (a client that went away) still hands the
  run to a task: the workflow goes on at once, not after the lease of a run nobody runs.

Faults are real: a table lock held by the test makes the statement wait at exactly the step
under test, where the test then kills its backend (`pg_terminate_backend`) or cancels the
caller.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row

from amelia.server.models.state import WorkflowStatus
from amelia.server.orchestrator.service import OrchestratorService
from tests.orchestrator.agent_server import AgentServer
from tests.orchestrator.helpers import wait_for_status

S = WorkflowStatus
APP = "amelia"  # the application_name of the `db` fixture's connections


@asynccontextmanager
async def watching(url: str) -> AsyncIterator[AsyncConnection[DictRow]]:
    conn = await AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row, application_name="test-observer"
    )
    async with conn:
        yield conn


@asynccontextmanager
async def table_locked(url: str, table: str, mode: str) -> AsyncIterator[None]:
    """Hold `LOCK TABLE table IN mode MODE` until the block ends."""
    conn = await AsyncConnection.connect(url, application_name="test-lock-holder")
    async with conn:
        await conn.execute(f"LOCK TABLE {table} IN {mode} MODE")
        try:
            yield
        finally:
            await conn.rollback()


async def next_lock_waiter(
    watcher: AsyncConnection[DictRow], skip: set[int], timeout: float
) -> int | None:
    """The pid of a backend of ours waiting on a lock (not in `skip`), or None in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cur = await watcher.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND wait_event_type = 'Lock' AND NOT pid = ANY(%s)",
            (APP, list(skip)),
        )
        row = await cur.fetchone()
        if row is not None:
            return int(row["pid"])
        await asyncio.sleep(0.02)
    return None


async def kill(watcher: AsyncConnection[DictRow], pid: int) -> None:
    await watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))


async def ownership(watcher: AsyncConnection[DictRow], workflow_id: uuid.UUID) -> DictRow:
    cur = await watcher.execute(
        "SELECT status, owner_id FROM workflows WHERE id = %s", (workflow_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    return row


async def test_connections_killed_as_the_run_starts_do_not_fail_the_workflow(
    orchestrator: OrchestratorService, worktree: Path, database_url: str
) -> None:
    orchestrator.start_read_delays = (0.2, 0.4, 0.8, 1.6)
    repo = orchestrator.repository
    wid = await orchestrator.queue_workflow("START-KILL", str(worktree))
    killed: set[int] = set()
    # The run's profile read waits on the lock: kill its connection there, three times (more
    # than a repository's retry-once on a lost connection absorbs).
    async with (
        watching(database_url) as watcher,
        table_locked(database_url, "profiles", "ACCESS EXCLUSIVE"),
    ):
        await orchestrator.start_pending_workflow(wid)
        for _ in range(3):
            pid = await next_lock_waiter(watcher, killed, timeout=5.0)
            if pid is None:
                break
            await kill(watcher, pid)
            killed.add(pid)
    planned = await wait_for_status(repo, wid, S.BLOCKED, S.FAILED)
    assert planned.workflow_status == S.BLOCKED, planned.failure_reason
    assert len(killed) == 3
    await orchestrator.approve_workflow(wid)
    done = await wait_for_status(repo, wid, S.COMPLETED, S.FAILED)
    assert done.workflow_status == S.COMPLETED, done.failure_reason


async def test_a_run_start_the_database_never_answers_is_left_to_the_next_claim(
    orchestrator: OrchestratorService, worktree: Path, database_url: str
) -> None:
    orchestrator.start_read_delays = (0.1, 0.2)
    repo = orchestrator.repository
    wid = await orchestrator.queue_workflow("START-DOWN", str(worktree))
    killed: set[int] = set()
    async with (
        watching(database_url) as watcher,
        table_locked(database_url, "profiles", "ACCESS EXCLUSIVE"),
    ):
        await orchestrator.start_pending_workflow(wid)
        # Every attempt of the profile read loses its connection, until the run gives up.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = await ownership(watcher, wid)
            if row["status"] != S.IN_PROGRESS.value or row["owner_id"] is None:
                break
            pid = await next_lock_waiter(watcher, killed, timeout=0.2)
            if pid is not None:
                await kill(watcher, pid)
                killed.add(pid)
        left = await ownership(watcher, wid)
    # Not failed (no checkpoint to resume from): still running, and nobody's.
    assert (left["status"], left["owner_id"]) == (S.IN_PROGRESS.value, None)
    assert len(killed) >= 3
    assert orchestrator.get_active_workflows() == []
    # The database answers again: the next claim (any process's claimer) runs it.
    claimed = await orchestrator.claim_runnable()
    assert [token.workflow_id for token in claimed] == [wid]
    planned = await wait_for_status(repo, wid, S.BLOCKED, S.FAILED)
    assert planned.workflow_status == S.BLOCKED, planned.failure_reason


async def cancel_once_claimed(
    orchestrator: OrchestratorService,
    database_url: str,
    workflow_id: uuid.UUID,
    command: Coroutine[Any, Any, None],
    status: WorkflowStatus,
) -> None:
    """Run `command` and cancel it once its claim has committed and its event insert waits
    on the lock on the event log (the test holds it); then let the insert through."""
    async with (
        watching(database_url) as watcher,
        table_locked(database_url, "workflow_log", "SHARE"),
    ):
        task = asyncio.create_task(command)
        assert await next_lock_waiter(watcher, set(), timeout=10.0) is not None
        row = await ownership(watcher, workflow_id)
        assert (row["status"], row["owner_id"]) == (status.value, orchestrator.process_id)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_approve_cancelled_after_its_claim_still_runs_the_workflow(
    orchestrator: OrchestratorService, agents: AgentServer, worktree: Path, database_url: str
) -> None:
    orchestrator.lease_seconds = 60.0
    repo = orchestrator.repository
    wid = await orchestrator.start_workflow("APPROVE-CANCEL", str(worktree))
    await wait_for_status(repo, wid, S.BLOCKED)
    approving = orchestrator.approve_workflow(wid)
    await cancel_once_claimed(orchestrator, database_url, wid, approving, S.IN_PROGRESS)
    cancelled_at = time.monotonic()
    done = await wait_for_status(repo, wid, S.COMPLETED, S.FAILED, timeout=20)
    # Well before the lease of a run nobody runs would expire (and nothing here claims it).
    assert time.monotonic() - cancelled_at < orchestrator.lease_seconds / 3
    assert done.workflow_status == S.COMPLETED, done.failure_reason
    assert agents.calls["developer"] == 1  # the approval reached the checkpoint


async def test_a_replan_cancelled_after_its_claim_still_plans_again(
    orchestrator: OrchestratorService, agents: AgentServer, worktree: Path, database_url: str
) -> None:
    orchestrator.lease_seconds = 60.0
    repo = orchestrator.repository
    wid = await orchestrator.start_workflow("REPLAN-CANCEL", str(worktree))
    await wait_for_status(repo, wid, S.BLOCKED)
    replanning = orchestrator.replan_workflow(wid)
    await cancel_once_claimed(orchestrator, database_url, wid, replanning, S.PENDING)
    cancelled_at = time.monotonic()
    await wait_for_status(repo, wid, S.BLOCKED, timeout=20)
    assert time.monotonic() - cancelled_at < orchestrator.lease_seconds / 3
    assert agents.calls["architect"] == 2
    async with watching(database_url) as watcher:
        assert (await ownership(watcher, wid))["owner_id"] is None
