"""Status changes racing on separate connections: the guarded UPDATE decides, every time.

Two kinds of race per scenario: free-running (`asyncio.gather`, random start order), and
forced, where a third connection holds the row lock until both writers are queued on it,
so both UPDATEs are certainly in flight together and the lock-queue order is known.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, text

from amelia.server.database import Database, schema
from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.state import ServerExecutionState, WorkflowStatus

S = WorkflowStatus
pytestmark = pytest.mark.slow


@pytest.fixture
async def second_db(database_url: str) -> AsyncIterator[Database]:
    """Another `Database` (its own engine and pool) on the same database."""
    database = Database(database_url, min_size=1, max_size=3)
    await database.connect()
    try:
        yield database
    finally:
        await database.close()


async def new_workflow(repo: WorkflowRepository, status: WorkflowStatus) -> uuid.UUID:
    state = ServerExecutionState(
        id=uuid.uuid4(),
        issue_id="RACE",
        worktree_path=f"/race/{uuid.uuid4().hex}",
        workflow_status=status,
        started_at=datetime.now(UTC),
    )
    await repo.create(state)
    return state.id


async def _lock_waiters(db: Database) -> int:
    async with db.connection() as conn:
        count = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )
    return int(count or 0)


async def _wait_for_waiters(db: Database, expected: int) -> None:
    deadline = time.monotonic() + 10
    while await _lock_waiters(db) < expected:
        assert time.monotonic() < deadline, f"never saw {expected} writers waiting on the lock"
        await asyncio.sleep(0.002)


@asynccontextmanager
async def row_locked(db: Database, workflow_id: uuid.UUID) -> AsyncIterator[None]:
    """Hold the workflow's row lock on a connection of its own until the block ends."""
    async with db.transaction() as conn:
        await conn.execute(
            select(schema.workflows.c.id)
            .where(schema.workflows.c.id == workflow_id)
            .with_for_update()
        )
        yield


async def forced_race(
    db: Database, workflow_id: uuid.UUID, first: Awaitable[Any], second: Awaitable[Any]
) -> list[Any]:
    """Queue `first`, then `second`, behind a held row lock; release; gather both."""
    async with row_locked(db, workflow_id):
        task_a = asyncio.ensure_future(first)
        await _wait_for_waiters(db, 1)
        task_b = asyncio.ensure_future(second)
        await _wait_for_waiters(db, 2)
    return list(await asyncio.gather(task_a, task_b))


async def status_of(db: Database, workflow_id: uuid.UUID) -> tuple[str, bool]:
    async with db.connection() as conn:
        row = (
            await conn.execute(
                select(
                    schema.workflows.c.status, schema.workflows.c.completed_at.is_not(None)
                ).where(schema.workflows.c.id == workflow_id)
            )
        ).one()
    return row[0], row[1]


async def test_completion_beats_cancel_free_running(
    db: Database, second_db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="amelia.server.database.repository")
    repos = [WorkflowRepository(db), WorkflowRepository(second_db)]
    for _ in range(100):
        wid = await new_workflow(repos[0], S.IN_PROGRESS)
        random.shuffle(repos)  # each writer on its own engine, so its own connection
        calls = [
            repos[0].set_status(wid, S.COMPLETED),
            repos[1].set_status(wid, S.CANCELLED, failure_reason="user cancelled"),
        ]
        random.shuffle(calls)
        await asyncio.gather(*calls)
        assert await status_of(db, wid) == ("completed", True)
    # A cancel that lands after the completion is absorbed (and warns, its reason dropped);
    # one that lands first is overridden. Both orders must have occurred.
    absorbed = sum("dropped" in record.getMessage() for record in caplog.records)
    assert 0 < absorbed < 100, absorbed


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_completion_beats_cancel_forced(db: Database, cancel_first: bool) -> None:
    repo = WorkflowRepository(db)
    for _ in range(50):
        wid = await new_workflow(repo, S.IN_PROGRESS)
        complete = repo.set_status(wid, S.COMPLETED)
        cancel = repo.set_status(wid, S.CANCELLED)
        if cancel_first:
            await forced_race(db, wid, cancel, complete)
        else:
            await forced_race(db, wid, complete, cancel)
        assert await status_of(db, wid) == ("completed", True)


async def _transition_race(db: Database, forced: bool) -> None:
    repo = WorkflowRepository(db)
    winners: set[WorkflowStatus] = set()
    for _ in range(50):
        wid = await new_workflow(repo, S.BLOCKED)
        approve = repo.transition(wid, [S.BLOCKED], S.IN_PROGRESS)
        reject = repo.transition(wid, [S.BLOCKED], S.FAILED, failure_reason="rejected")
        pair = [approve, reject] if random.random() < 0.5 else [reject, approve]
        if forced:
            results = await forced_race(db, wid, pair[0], pair[1])
        else:
            results = list(await asyncio.gather(*pair))
        won = [result for result in results if result is not None]
        assert len(won) == 1, results
        winner = won[0].workflow_status
        winners.add(winner)
        status, completed = await status_of(db, wid)
        assert status == winner.value
        assert completed == (winner is S.FAILED)
    if forced:  # the lock-queue order is random, so both outcomes must have happened
        assert winners == {S.IN_PROGRESS, S.FAILED}


async def test_approve_vs_reject_free_running(db: Database) -> None:
    await _transition_race(db, forced=False)


async def test_approve_vs_reject_forced(db: Database) -> None:
    await _transition_race(db, forced=True)
