"""The list route's repository calls: exact counts from the status counters, and list pages
with usage totals and the total in one statement."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import delete, update

from amelia.server.database import Database, schema
from amelia.server.database.repository import WorkflowRepository
from amelia.server.database.types import NaiveDatetimeError
from amelia.server.models.state import ServerExecutionState, WorkflowStatus
from amelia.server.models.tokens import TokenUsage
from tests.statements import count_statements

S = WorkflowStatus
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def repo(db: Database) -> WorkflowRepository:
    return WorkflowRepository(db)


async def add(
    repo: WorkflowRepository,
    status: WorkflowStatus,
    worktree: str,
    started: datetime | None,
) -> ServerExecutionState:
    state = ServerExecutionState(
        id=uuid.uuid4(),
        issue_id="I-1",
        worktree_path=worktree,
        workflow_status=status,
        created_at=T0,
        started_at=started,
    )
    await repo.create(state)
    return state


async def seed(repo: WorkflowRepository) -> list[ServerExecutionState]:
    rows = []
    for i in range(12):
        status = [S.PENDING, S.COMPLETED, S.FAILED][i % 3]
        started = None if i % 5 == 4 else T0 + timedelta(minutes=i % 7)  # ties and NULLs
        rows.append(await add(repo, status, f"/wt/{i % 2}", started))
    return rows


async def usage(repo: WorkflowRepository, wid: uuid.UUID, cost: str, tokens: int) -> None:
    await repo.save_token_usage(
        TokenUsage(
            workflow_id=wid,
            agent="developer",
            input_tokens=tokens,
            output_tokens=1,
            cost_usd=Decimal(cost),
            duration_ms=250,
            timestamp=T0,
        )
    )


FILTERS: list[dict[str, Any]] = [
    {},
    {"status": S.COMPLETED},
    {"status": S.BLOCKED},
    {"worktree_path": "/wt/1"},
    {"status": S.PENDING, "worktree_path": "/wt/0"},
]


@pytest.mark.parametrize("filters", FILTERS)
async def test_counts_follow_creates_status_changes_and_deletes(
    db: Database, repo: WorkflowRepository, filters: dict[str, Any]
) -> None:
    rows = await seed(repo)

    async def expected() -> int:
        return len(await repo.list_workflows(limit=1000, **filters))

    assert await repo.count_workflows(**filters) == await expected()
    await repo.set_status(rows[0].id, S.IN_PROGRESS)
    await repo.set_status(rows[3].id, S.CANCELLED)
    async with db.connection() as conn:
        await conn.execute(
            update(schema.workflows)
            .where(schema.workflows.c.id == rows[1].id)
            .values(status=S.PENDING.value)
        )
        await conn.execute(delete(schema.workflows).where(schema.workflows.c.id == rows[2].id))
    assert await repo.count_workflows(**filters) == await expected()


@pytest.mark.parametrize("filters", FILTERS)
async def test_page_matches_list_workflows_with_usage_and_total(
    db: Database, repo: WorkflowRepository, filters: dict[str, Any]
) -> None:
    rows = await seed(repo)
    await usage(repo, rows[1].id, "0.100000", 10)
    await usage(repo, rows[1].id, "0.200000", 20)  # exact: 0.3, not 0.30000000000000004
    await usage(repo, rows[6].id, "9999.999999", 5)
    await usage(repo, rows[6].id, "0.000001", 5)
    total = await repo.count_workflows(**filters)
    walked: list[Any] = []
    after: dict[str, Any] = {}
    while True:
        with count_statements(db) as statements:
            page = await repo.list_workflow_page(limit=2, **filters, **after)
        assert len(statements) == 1
        assert page.total == total
        expected = await repo.list_workflows(limit=2, **filters, **after)
        assert [r.id for r in page.rows] == [r.id for r in expected]
        for row, state in zip(page.rows, expected, strict=True):
            assert (row.issue_id, row.worktree_path, row.status) == (
                state.issue_id,
                state.worktree_path,
                state.workflow_status,
            )
            assert (row.created_at, row.started_at, row.profile_id) == (
                state.created_at,
                state.started_at,
                state.profile_id,
            )
        walked += page.rows
        if len(page.rows) < 2 or page.rows[-1].started_at is None:
            break
        after = {"after_started_at": page.rows[-1].started_at, "after_id": page.rows[-1].id}
    by_id = {row.id: row for row in walked}
    if rows[1].id in by_id:
        assert by_id[rows[1].id].total_cost_usd == Decimal("0.3")
        assert by_id[rows[1].id].total_tokens == 32
        assert by_id[rows[1].id].total_duration_ms == 500
    if rows[6].id in by_id:
        assert by_id[rows[6].id].total_cost_usd == Decimal("10000.000000")
    untouched = [row for row in walked if row.id not in {rows[1].id, rows[6].id}]
    assert all(
        (r.total_cost_usd, r.total_tokens, r.total_duration_ms) == (None, None, None)
        for r in untouched
    )


async def test_empty_page_still_has_the_total(repo: WorkflowRepository) -> None:
    rows = await seed(repo)
    last = min((r for r in rows if r.started_at is not None), key=lambda r: (r.started_at, r.id))
    assert last.started_at is not None
    page = await repo.list_workflow_page(
        status=last.workflow_status, after_started_at=last.started_at, after_id=last.id
    )
    assert page.rows == []
    assert page.total == await repo.count_workflows(status=last.workflow_status) > 0
    nothing = await repo.list_workflow_page(worktree_path="/nowhere")
    assert (nothing.rows, nothing.total) == ([], 0)


async def test_page_arguments_are_checked(repo: WorkflowRepository) -> None:
    with pytest.raises(ValueError, match="limit"):
        await repo.list_workflow_page(limit=0)
    with pytest.raises(NaiveDatetimeError):
        await repo.list_workflow_page(after_started_at=datetime(2025, 1, 1), after_id=uuid.uuid4())
    with pytest.raises(ValueError, match="Malformed workflow id"):
        await repo.list_workflow_page(after_started_at=T0, after_id="not-a-uuid")
