"""WorkflowRepository's workflow rows and the workflow state models, on a real PostgreSQL."""

from __future__ import annotations

import itertools
import logging
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import event, insert, select, update

from amelia.server.database import Database, schema
from amelia.server.database.errors import DuplicateKeyError
from amelia.server.database.repository import WorkflowRepository, parse_workflow_id
from amelia.server.database.types import NaiveDatetimeError
from amelia.server.exceptions import WorkflowConflictError, WorkflowNotFoundError
from amelia.server.models.state import (
    TERMINAL_STATUSES,
    VALID_TRANSITIONS,
    InvalidStateTransitionError,
    PlanCache,
    ServerExecutionState,
    WorkflowStatus,
    WorkflowType,
    validate_transition,
)

S = WorkflowStatus
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
ALL_PAIRS = list(itertools.product(WorkflowStatus, WorkflowStatus))
VALID_PAIRS = [(a, b) for a, b in ALL_PAIRS if b in VALID_TRANSITIONS[a]]
INVALID_PAIRS = [(a, b) for a, b in ALL_PAIRS if b not in VALID_TRANSITIONS[a]]


def make_state(**overrides: Any) -> ServerExecutionState:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "issue_id": "ISSUE-1",
        "worktree_path": f"/repo/{uuid.uuid4().hex}",
        "created_at": T0,
    }
    values.update(overrides)
    return ServerExecutionState(**values)


@pytest.fixture
def repo(db: Database) -> WorkflowRepository:
    return WorkflowRepository(db)


@pytest.fixture
def statements(db: Database) -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to the server while the test runs (SQL, parameters)."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        seen.append((sql, params))

    def record_direct(sql: str, arguments: tuple[Any, ...]) -> None:  # the fast read path
        seen.append((sql, arguments))

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    db.direct_statement_listeners.append(record_direct)
    yield seen
    event.remove(engine, "before_cursor_execute", record)
    db.direct_statement_listeners.remove(record_direct)


async def add(repo: WorkflowRepository, status: WorkflowStatus = S.PENDING, **kw: Any) -> Any:
    state = make_state(workflow_status=status, **kw)
    await repo.create(state)
    return state


# -- models -------------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "target"), VALID_PAIRS)
def test_validate_transition_allows(current: WorkflowStatus, target: WorkflowStatus) -> None:
    validate_transition(current, target)


@pytest.mark.parametrize(("current", "target"), INVALID_PAIRS)
def test_validate_transition_refuses(current: WorkflowStatus, target: WorkflowStatus) -> None:
    with pytest.raises(InvalidStateTransitionError) as caught:
        validate_transition(current, target)
    assert isinstance(caught.value, ValueError)
    assert (caught.value.current, caught.value.target) == (current, target)
    assert f"{current.value} -> {target.value}" in str(caught.value)


def test_transition_table_matches_spec() -> None:
    assert len(VALID_PAIRS) == 13
    assert not VALID_TRANSITIONS[S.COMPLETED] and not VALID_TRANSITIONS[S.CANCELLED]
    assert VALID_TRANSITIONS[S.FAILED] == {S.IN_PROGRESS}
    assert all(status not in VALID_TRANSITIONS[status] for status in WorkflowStatus)


def test_plan_cache_from_checkpoint_values_picks_and_stringifies() -> None:
    values = {"goal": "g", "plan_path": Path("/p/plan.md"), "total_tasks": 3, "other": 1}
    cache = PlanCache.from_checkpoint_values(values)
    assert cache == PlanCache(goal="g", plan_path="/p/plan.md", total_tasks=3)
    assert PlanCache.from_checkpoint_values({}) == PlanCache()


async def test_plan_markdown_cached_file_none_and_missing(tmp_path: Path) -> None:
    plan = tmp_path / "plan.md"
    plan.write_text("# Plan ✓\n", encoding="utf-8")
    assert await PlanCache(plan_markdown="cached", plan_path=str(plan)).get_plan_markdown() == (
        "cached"
    )
    assert await PlanCache(plan_path=str(plan)).get_plan_markdown() == "# Plan ✓\n"
    assert await PlanCache().get_plan_markdown() is None
    with pytest.raises(FileNotFoundError):
        await PlanCache(plan_path=str(tmp_path / "gone.md")).get_plan_markdown()


def test_state_defaults_and_aware_datetimes() -> None:
    state = ServerExecutionState(id=uuid.uuid4(), issue_id="I", worktree_path="/w")
    assert state.workflow_status is S.PENDING and state.workflow_type is WorkflowType.FULL
    assert state.created_at.tzinfo is not None
    assert "event_sequence" not in ServerExecutionState.model_fields
    assert len(ServerExecutionState.model_fields) == 12
    with pytest.raises(ValidationError):
        make_state(started_at=datetime(2025, 1, 1))


# -- create / get ----------------------------------------------------------------------------


async def test_create_get_round_trip_all_fields(repo: WorkflowRepository) -> None:
    plus_two = timezone(timedelta(hours=2))
    state = make_state(
        workflow_type=WorkflowType.REVIEW,
        profile_id="work",
        workflow_status=S.BLOCKED,
        created_at=datetime(2025, 3, 1, 14, 0, 0, 123456, tzinfo=plus_two),
        started_at=T0 + timedelta(minutes=1),
        failure_reason="none — yet",
        plan_cache=PlanCache(goal="Ziel: ünïcödé 🚀", plan_markdown="# P\n- a", total_tasks=2),
        issue_cache={
            "id": "ISSUE-1",
            "title": "日本語 title",
            "labels": ["a", "b"],
            "meta": {"nested": {"deep": [1, 2.5, None, True]}, "empty": {}},
        },
    )
    await repo.create(state)
    loaded = await repo.get(state.id)
    assert loaded == state
    assert loaded is not None and loaded.created_at.tzinfo == UTC
    assert loaded.created_at == datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert await repo.get(str(state.id)) == state


async def test_get_missing_and_malformed_id(repo: WorkflowRepository) -> None:
    assert await repo.get(uuid.uuid4()) is None
    with pytest.raises(ValueError, match="Malformed workflow id 'not-a-uuid'"):
        await repo.get("not-a-uuid")
    assert parse_workflow_id(str(uuid.UUID(int=5))) == uuid.UUID(int=5)


async def test_create_null_caches_stay_sql_null(repo: WorkflowRepository, db: Database) -> None:
    state = await add(repo)
    async with db.connection() as conn:
        row = (
            await conn.execute(
                select(
                    schema.workflows.c.plan_cache.is_(None),
                    schema.workflows.c.issue_cache.is_(None),
                ).where(schema.workflows.c.id == state.id)
            )
        ).one()
    assert tuple(row) == (True, True)
    assert await repo.get(state.id) == state


async def test_create_duplicate_id(repo: WorkflowRepository) -> None:
    state = await add(repo)
    with pytest.raises(DuplicateKeyError):
        await repo.create(make_state(id=state.id))


@pytest.mark.parametrize("second", [S.IN_PROGRESS, S.BLOCKED])
async def test_create_second_active_on_worktree_conflicts(
    repo: WorkflowRepository, second: WorkflowStatus
) -> None:
    holder = await add(repo, S.IN_PROGRESS, worktree_path="/shared")
    with pytest.raises(WorkflowConflictError) as caught:
        await add(repo, second, worktree_path="/shared")
    assert caught.value.workflow_id == holder.id
    assert caught.value.worktree_path == "/shared"
    # Queued and finished workflows may share the worktree.
    for status in (S.PENDING, S.PENDING, S.COMPLETED, S.FAILED, S.CANCELLED):
        await add(repo, status, worktree_path="/shared")
    assert await repo.count_workflows(worktree_path="/shared") == 6


async def test_naive_datetimes_are_refused_by_the_column(repo: WorkflowRepository) -> None:
    state = make_state()
    state.started_at = datetime(2025, 1, 1, 12, 0)  # no validate_assignment: reaches the column
    with pytest.raises(NaiveDatetimeError, match="no time zone"):
        await repo.create(state)
    assert await repo.get(state.id) is None
    stored = await add(repo)
    stored.completed_at = datetime(2025, 1, 1)
    with pytest.raises(NaiveDatetimeError):
        await repo.update(stored)
    with pytest.raises(NaiveDatetimeError):
        await repo.list_workflows(after_started_at=datetime(2025, 1, 1), after_id=stored.id)


# -- get_by_worktree -------------------------------------------------------------------------


async def test_get_by_worktree(repo: WorkflowRepository, statements: list[tuple[str, Any]]) -> None:
    await add(repo, S.PENDING, worktree_path="/w")
    await add(repo, S.COMPLETED, worktree_path="/w")
    assert await repo.get_by_worktree("/w") is None
    running = await add(repo, S.IN_PROGRESS, worktree_path="/w")
    assert await repo.get_by_worktree("/w") == running
    assert "IN ('in_progress', 'blocked')" in statements[-1][0]  # literal, like the index
    assert await repo.get_by_worktree("/w/") is None  # exact path only
    pending = await repo.get_by_worktree("/w", statuses=[S.PENDING])
    assert pending is not None and pending.workflow_status is S.PENDING
    done = await repo.get_by_worktree("/w", statuses=(S.COMPLETED, S.FAILED))
    assert done is not None and done.workflow_status is S.COMPLETED
    await repo.set_status(running.id, S.BLOCKED)
    blocked = await repo.get_by_worktree("/w")
    assert blocked is not None and blocked.workflow_status is S.BLOCKED
    count = len(statements)
    assert await repo.get_by_worktree("/w", statuses=()) is None
    assert len(statements) == count  # no query


# -- update ----------------------------------------------------------------------------------


async def test_update_writes_mutable_columns_only(repo: WorkflowRepository) -> None:
    state = await add(repo)
    changed = state.model_copy(
        update={
            "issue_id": "OTHER",
            "worktree_path": "/elsewhere",
            "created_at": T0 + timedelta(days=1),
            "workflow_status": S.FAILED,
            "started_at": T0 + timedelta(minutes=1),
            "completed_at": T0 + timedelta(minutes=2),
            "failure_reason": "boom",
            "workflow_type": WorkflowType.REVIEW,
            "profile_id": "p2",
            "plan_cache": PlanCache(goal="g", current_task_index=1),
            "issue_cache": {"k": ["v", {"ü": 1}]},
        }
    )
    await repo.update(changed)
    loaded = await repo.get(state.id)
    expected = changed.model_copy(
        update={
            "issue_id": state.issue_id,
            "worktree_path": state.worktree_path,
            "created_at": state.created_at,
        }
    )
    assert loaded == expected
    await repo.update(make_state())  # missing row: silent no-op
    assert await repo.get(state.id) == expected


async def test_update_to_active_on_held_worktree_conflicts(repo: WorkflowRepository) -> None:
    holder = await add(repo, S.BLOCKED, worktree_path="/t")
    queued = await add(repo, S.PENDING, worktree_path="/t")
    queued.workflow_status = S.IN_PROGRESS
    with pytest.raises(WorkflowConflictError) as caught:
        await repo.update(queued)
    assert (caught.value.worktree_path, caught.value.workflow_id) == ("/t", holder.id)


# -- set_status ------------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "target"), VALID_PAIRS)
async def test_set_status_valid_transitions(
    repo: WorkflowRepository, current: WorkflowStatus, target: WorkflowStatus
) -> None:
    state = await add(repo, current, started_at=T0, failure_reason="old", completed_at=T0)
    before = datetime.now(UTC) - timedelta(seconds=5)
    await repo.set_status(state.id, target, failure_reason="why" if target is S.FAILED else None)
    loaded = await repo.get(state.id)
    assert loaded is not None and loaded.workflow_status is target
    assert loaded.started_at == T0  # untouched
    assert loaded.failure_reason == ("why" if target is S.FAILED else None)
    if target in TERMINAL_STATUSES:
        assert loaded.completed_at is not None and loaded.completed_at > before
    else:
        assert loaded.completed_at is None


@pytest.mark.parametrize(
    ("current", "target"), [(a, b) for a, b in INVALID_PAIRS if a not in (S.COMPLETED, S.CANCELLED)]
)
async def test_set_status_invalid_transitions(
    repo: WorkflowRepository, current: WorkflowStatus, target: WorkflowStatus
) -> None:
    state = await add(repo, current)
    with pytest.raises(InvalidStateTransitionError) as caught:
        await repo.set_status(state.id, target)
    assert (caught.value.current, caught.value.target) == (current, target)
    assert await repo.get(state.id) == state


@pytest.mark.parametrize(
    ("current", "target"),
    [(a, b) for a in (S.COMPLETED, S.CANCELLED) for b in WorkflowStatus],
)
async def test_terminal_precedence(
    repo: WorkflowRepository,
    current: WorkflowStatus,
    target: WorkflowStatus,
    caplog: pytest.LogCaptureFixture,
) -> None:
    state = await add(repo, current, completed_at=T0)
    caplog.set_level(logging.DEBUG, logger="amelia.server.database.repository")
    await repo.set_status(state.id, target, failure_reason="secret reason text")
    loaded = await repo.get(state.id)
    assert loaded is not None
    assert "secret reason text" not in caplog.text
    if (current, target) == (S.CANCELLED, S.COMPLETED):  # a completion beats a cancel
        assert loaded.workflow_status is S.COMPLETED and loaded.completed_at != T0
        return
    assert loaded == state  # absorbed
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "failure reason" in warnings[0].getMessage()


async def test_absorbed_without_reason_does_not_warn(
    repo: WorkflowRepository, caplog: pytest.LogCaptureFixture
) -> None:
    state = await add(repo, S.COMPLETED)
    caplog.set_level(logging.WARNING)
    await repo.set_status(state.id, S.CANCELLED)
    assert not caplog.records


async def test_failed_is_resumable_and_validates(repo: WorkflowRepository) -> None:
    state = await add(repo, S.IN_PROGRESS)
    await repo.set_status(state.id, S.FAILED, failure_reason="crash")
    with pytest.raises(InvalidStateTransitionError):
        await repo.set_status(state.id, S.FAILED)
    await repo.set_status(str(state.id), S.IN_PROGRESS)
    loaded = await repo.get(state.id)
    assert loaded is not None and loaded.workflow_status is S.IN_PROGRESS
    assert loaded.completed_at is None and loaded.failure_reason is None


async def test_set_status_missing_and_conflict(repo: WorkflowRepository) -> None:
    missing = uuid.uuid4()
    with pytest.raises(WorkflowNotFoundError) as caught:
        await repo.set_status(missing, S.IN_PROGRESS)
    assert caught.value.workflow_id == missing
    holder = await add(repo, S.IN_PROGRESS, worktree_path="/c")
    queued = await add(repo, S.PENDING, worktree_path="/c")
    with pytest.raises(WorkflowConflictError) as conflict:
        await repo.set_status(queued.id, S.IN_PROGRESS)
    assert (conflict.value.worktree_path, conflict.value.workflow_id) == ("/c", holder.id)
    assert await repo.get(queued.id) == queued


async def test_set_status_is_one_round_trip(
    repo: WorkflowRepository, statements: list[tuple[str, Any]]
) -> None:
    state = await add(repo)
    statements.clear()
    await repo.set_status(state.id, S.IN_PROGRESS)
    assert len(statements) == 1 and statements[0][0].startswith("UPDATE workflows")
    statements.clear()
    with pytest.raises(InvalidStateTransitionError):  # a miss costs one read to say why
        await repo.set_status(state.id, S.PENDING)
    assert len(statements) == 2


# -- transition ------------------------------------------------------------------------------


async def test_transition_applies_and_returns_row(repo: WorkflowRepository) -> None:
    state = await add(repo, S.PENDING)
    started = await repo.transition(state.id, [S.PENDING], S.IN_PROGRESS, set_started_at=True)
    assert started is not None and started.workflow_status is S.IN_PROGRESS
    assert started.started_at is not None and started.started_at.tzinfo == UTC
    assert started == await repo.get(state.id)
    failed = await repo.transition(str(state.id), {S.IN_PROGRESS}, S.FAILED, failure_reason="x")
    assert failed is not None and failed.failure_reason == "x" and failed.completed_at
    assert failed.started_at == started.started_at  # not re-stamped
    resumed = await repo.transition(state.id, [S.FAILED], S.IN_PROGRESS, clear_completion=True)
    assert resumed is not None
    assert (resumed.completed_at, resumed.failure_reason) == (None, None)


async def test_transition_keeps_untouched_columns(repo: WorkflowRepository) -> None:
    state = await add(repo, S.BLOCKED, started_at=T0, failure_reason="note")
    approved = await repo.transition(state.id, [S.BLOCKED], S.IN_PROGRESS)
    assert approved is not None
    assert (approved.started_at, approved.failure_reason) == (T0, "note")


async def test_transition_wrong_state_returns_none(repo: WorkflowRepository) -> None:
    state = await add(repo, S.IN_PROGRESS)
    assert await repo.transition(state.id, [S.BLOCKED], S.IN_PROGRESS) is None
    assert await repo.transition(state.id, [], S.CANCELLED) is None
    assert await repo.get(state.id) == state


async def test_transition_errors(repo: WorkflowRepository) -> None:
    with pytest.raises(WorkflowNotFoundError):
        await repo.transition(uuid.uuid4(), [S.BLOCKED], S.IN_PROGRESS)
    state = await add(repo, S.COMPLETED)
    with pytest.raises(InvalidStateTransitionError) as caught:
        await repo.transition(state.id, [S.COMPLETED, S.BLOCKED], S.IN_PROGRESS)
    assert caught.value.current is S.COMPLETED
    with pytest.raises(ValueError, match="clear_completion"):
        await repo.transition(state.id, [S.IN_PROGRESS], S.FAILED, clear_completion=True)
    holder = await add(repo, S.BLOCKED, worktree_path="/x")
    queued = await add(repo, S.PENDING, worktree_path="/x")
    with pytest.raises(WorkflowConflictError) as conflict:
        await repo.transition(queued.id, [S.PENDING], S.IN_PROGRESS, set_started_at=True)
    assert conflict.value.workflow_id == holder.id
    assert await repo.get(queued.id) == queued


# -- update_plan_cache -----------------------------------------------------------------------


async def test_update_plan_cache(repo: WorkflowRepository) -> None:
    state = await add(repo, plan_cache=PlanCache(goal="old"))
    cache = PlanCache(goal="neu — ü", plan_markdown="# 計画", plan_path="/p.md", total_tasks=4)
    await repo.update_plan_cache(str(state.id), cache)
    loaded = await repo.get(state.id)
    assert loaded is not None and loaded.plan_cache == cache
    with pytest.raises(WorkflowNotFoundError):
        await repo.update_plan_cache(uuid.uuid4(), cache)


# -- lists and counts ------------------------------------------------------------------------


async def test_list_active_order_filter_and_count(repo: WorkflowRepository) -> None:
    queued = await add(repo, S.PENDING, worktree_path="/a")
    old = await add(repo, S.IN_PROGRESS, started_at=T0)
    tie_ids = sorted([uuid.uuid4(), uuid.uuid4()], reverse=True)
    tied = [await add(repo, S.BLOCKED, id=i, started_at=T0 + timedelta(hours=1)) for i in tie_ids]
    for status in (S.COMPLETED, S.FAILED, S.CANCELLED):
        await add(repo, status, started_at=T0 + timedelta(hours=5), worktree_path="/a")
    active = await repo.list_active()
    assert [w.id for w in active] == [tied[0].id, tied[1].id, old.id, queued.id]
    assert [w.id for w in await repo.list_active(worktree_path="/a")] == [queued.id]
    assert await repo.list_active(worktree_path="/none") == []
    assert await repo.count_active() == 4


async def test_find_by_status(repo: WorkflowRepository, statements: list[Any]) -> None:
    first = await add(repo, S.PENDING, created_at=T0)
    second = await add(repo, S.PENDING, created_at=T0 + timedelta(seconds=1))
    failed = await add(repo, S.FAILED, created_at=T0 - timedelta(seconds=1))
    await add(repo, S.COMPLETED)
    assert [w.id for w in await repo.find_by_status([S.PENDING])] == [first.id, second.id]
    found = await repo.find_by_status([S.PENDING, S.FAILED])
    assert [w.id for w in found] == [failed.id, first.id, second.id]
    assert await repo.find_by_status([S.BLOCKED]) == []
    count = len(statements)
    assert await repo.find_by_status([]) == []
    assert len(statements) == count


async def test_list_workflows_order_filters_and_cursor(repo: WorkflowRepository) -> None:
    rows = []
    for i in range(7):
        status = S.COMPLETED if i % 2 else S.FAILED
        started = T0 + timedelta(minutes=i // 2)  # pairs share a started_at: id breaks ties
        rows.append(await add(repo, status, started_at=started, worktree_path=f"/w{i % 3}"))
    queued = [await add(repo, S.PENDING, worktree_path="/w0") for _ in range(2)]
    expected = sorted(rows, key=lambda w: (w.started_at, w.id), reverse=True)
    expected += sorted(queued, key=lambda w: w.id, reverse=True)  # NULL started_at last

    page = await repo.list_workflows(limit=100)
    assert [w.id for w in page] == [w.id for w in expected]
    assert await repo.count_workflows() == 9
    assert await repo.list_workflows(limit=0) == []

    # Walk with the cursor: every dated row once, in order; queued rows are not reachable.
    walked: list[ServerExecutionState] = await repo.list_workflows(limit=2)
    while True:
        last = walked[-1]
        assert last.started_at is not None
        nxt = await repo.list_workflows(
            limit=2, after_started_at=last.started_at, after_id=str(last.id)
        )
        if not nxt:
            break
        walked += nxt
    assert [w.id for w in walked] == [w.id for w in expected[:7]]

    # One cursor field alone is ignored.
    cursor_row = expected[2]
    assert await repo.list_workflows(after_started_at=cursor_row.started_at) == page[:20]
    assert await repo.list_workflows(after_id=cursor_row.id) == page[:20]

    by_status = await repo.list_workflows(status=S.COMPLETED)
    assert [w.id for w in by_status] == [w.id for w in expected if w.workflow_status is S.COMPLETED]
    assert await repo.count_workflows(status=S.COMPLETED) == 3
    by_tree = await repo.list_workflows(worktree_path="/w0")
    assert [w.id for w in by_tree] == [w.id for w in expected if w.worktree_path == "/w0"]
    both = await repo.list_workflows(status=S.PENDING, worktree_path="/w0", limit=1)
    assert [w.id for w in both] == [expected[-2].id]
    assert await repo.count_workflows(status=S.PENDING, worktree_path="/w0") == 2
    assert await repo.count_workflows(status=S.BLOCKED) == 0


# -- bind() ----------------------------------------------------------------------------------


async def test_bind_runs_calls_on_the_held_connection(db: Database) -> None:
    repo = WorkflowRepository(db)
    state = make_state()
    async with db.transaction() as conn:
        bound = repo.bind(conn)
        await bound.create(state)
        await bound.set_status(state.id, S.IN_PROGRESS)
        assert await repo.get(state.id) is None  # other connections cannot see it yet
        loaded = await bound.get(state.id)
        assert loaded is not None and loaded.workflow_status is S.IN_PROGRESS
        await conn.rollback()
    assert await repo.get(state.id) is None


async def test_bind_autocommit_connection_survives_a_conflict(db: Database) -> None:
    async with db.connection() as conn:
        bound = WorkflowRepository(db).bind(conn)
        holder = await add(bound, S.IN_PROGRESS, worktree_path="/b")
        with pytest.raises(WorkflowConflictError) as caught:
            await add(bound, S.BLOCKED, worktree_path="/b")
        assert caught.value.workflow_id == holder.id
        assert await bound.get(holder.id) == holder
        assert await bound.count_active() == 1


async def test_bind_transaction_conflict_names_holder(db: Database) -> None:
    repo = WorkflowRepository(db)
    holder = await add(repo, S.IN_PROGRESS, worktree_path="/tx")
    async with db.transaction() as conn:
        with pytest.raises(WorkflowConflictError) as caught:
            await add(repo.bind(conn), S.IN_PROGRESS, worktree_path="/tx")
        await conn.rollback()
    assert caught.value.workflow_id == holder.id


async def test_event_sequence_is_not_exposed_or_touched(
    repo: WorkflowRepository, db: Database, statements: list[tuple[str, Any]]
) -> None:
    state = await add(repo)
    wf = schema.workflows
    async with db.connection() as conn:
        await conn.execute(update(wf).where(wf.c.id == state.id).values(event_sequence=7))
    ours = len(statements)
    await repo.update(state)
    await repo.get(state.id)
    await repo.set_status(state.id, S.IN_PROGRESS)
    await repo.transition(state.id, [S.IN_PROGRESS], S.BLOCKED)
    await repo.list_workflows()
    sent = statements[: ours - 1] + statements[ours:]
    assert len(sent) == 6 and all("event_sequence" not in sql for sql, _ in sent)
    async with db.connection() as conn:
        assert await conn.scalar(select(wf.c.event_sequence).where(wf.c.id == state.id)) == 7


# -- plans -----------------------------------------------------------------------------------


async def _explain(db: Database, sql: str, params: Any) -> str:
    async with db.connection() as conn:
        result = await conn.exec_driver_sql("EXPLAIN " + sql, params)
        return "\n".join(row[0] for row in result)


async def test_plans_use_the_matching_indexes(
    repo: WorkflowRepository, db: Database, statements: list[tuple[str, Any]]
) -> None:
    rng = random.Random(7)
    rows = []
    for i in range(4000):
        status = rng.choice([S.PENDING, S.COMPLETED, S.FAILED, S.CANCELLED])
        rows.append(
            {
                "id": uuid.uuid4(),
                "issue_id": f"I-{i}",
                "worktree_path": "/big" if i % 2 else f"/w/{i % 97}",
                "status": status.value,
                "started_at": None
                if status is S.PENDING
                else T0 + timedelta(seconds=rng.randint(0, 10**6)),
            }
        )
    rows += [
        {
            "id": uuid.uuid4(),
            "issue_id": "A",
            "worktree_path": f"/a/{i}",
            "status": "blocked",
            "started_at": None,
        }
        for i in range(300)
    ]
    async with db.connection() as conn:
        await conn.execute(insert(schema.workflows), rows)
        await conn.exec_driver_sql("ANALYZE workflows")
    dated = sorted(
        (r for r in rows if r.get("started_at")),
        key=lambda r: (r["started_at"], r["id"]),
        reverse=True,
    )
    deep = dated[len(dated) * 2 // 3]
    cursor = {"after_started_at": deep["started_at"], "after_id": deep["id"]}
    statements.clear()
    calls: list[tuple[dict[str, Any], str]] = [
        ({}, "ix_workflows__started_at_id"),
        (cursor, "ix_workflows__started_at_id"),
        ({"status": S.COMPLETED, **cursor}, "ix_workflows__status_started_at_id"),
        ({"worktree_path": "/big", **cursor}, "ix_workflows__worktree_path_started_at_id"),
    ]
    for kwargs, _ in calls:
        page = await repo.list_workflows(limit=21, **kwargs)
        assert len(page) == 21
    captured = list(statements)  # EXPLAIN below is recorded too
    for (sql, params), (kwargs, index) in zip(captured, calls, strict=True):
        plan = await _explain(db, sql, params)
        assert f"Index Scan using {index}" in plan, plan
        assert "Sort" not in plan, plan
        if kwargs:
            assert "ROW(started_at, id) < ROW(" in plan.split("Index Cond:")[1], plan

    statements.clear()
    assert await repo.get_by_worktree("/a/7") is not None
    ((sql, params),) = statements
    assert "uq_workflows__active_worktree" in await _explain(db, sql, params)
    # Even a generic plan (what a prepared statement falls back to) uses the partial index.
    async with db.connection() as conn:
        await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        await conn.exec_driver_sql(f"PREPARE by_tree AS {sql}")
        result = await conn.exec_driver_sql("EXPLAIN EXECUTE by_tree('/a/7', 1)")
        plan = "\n".join(row[0] for row in result)
        await conn.exec_driver_sql("DEALLOCATE by_tree")
        await conn.exec_driver_sql("RESET plan_cache_mode")
    assert "Index Scan using uq_workflows__active_worktree" in plan, plan
