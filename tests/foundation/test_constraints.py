"""The schema's constraints hold against real inserts, and map to domain errors by name."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import StatementError

from amelia.server.database import Database, schema
from amelia.server.database.errors import (
    ActiveProfileConflict,
    ActiveWorktreeConflict,
    ConstraintViolationError,
    DuplicateKeyError,
    ReferenceNotFoundError,
    translate_integrity_errors,
)


async def add_workflow(db: Database, worktree: str = "/repo", status: str = "pending") -> uuid.UUID:
    wid = uuid.uuid4()
    async with db.connection() as conn:
        with translate_integrity_errors():
            await conn.execute(
                insert(schema.workflows).values(
                    id=wid, issue_id="I-1", worktree_path=worktree, status=status
                )
            )
    return wid


@pytest.mark.parametrize("second", ["in_progress", "blocked"])
async def test_one_active_workflow_per_worktree(db: Database, second: str) -> None:
    await add_workflow(db, status="in_progress")
    with pytest.raises(ActiveWorktreeConflict) as caught:
        await add_workflow(db, status=second)
    assert caught.value.constraint == schema.ACTIVE_WORKTREE_INDEX


async def test_blocked_then_in_progress_update_conflicts(db: Database) -> None:
    await add_workflow(db, status="blocked")
    other = await add_workflow(db, status="pending")
    async with db.connection() as conn:
        with pytest.raises(ActiveWorktreeConflict), translate_integrity_errors():
            await conn.execute(
                update(schema.workflows)
                .where(schema.workflows.c.id == other)
                .values(status="in_progress")
            )


async def test_many_pending_and_finished_share_a_worktree(db: Database) -> None:
    await add_workflow(db, status="in_progress")
    for status in ["pending", "pending", "pending", "completed", "failed", "cancelled"]:
        await add_workflow(db, status=status)
    await add_workflow(db, worktree="/other", status="blocked")
    async with db.connection() as conn:
        assert await conn.scalar(select(func.count()).select_from(schema.workflows)) == 8


async def test_unknown_status_is_refused(db: Database) -> None:
    with pytest.raises(ConstraintViolationError) as caught:
        await add_workflow(db, status="running")
    assert caught.value.constraint == "ck_workflows__status"


async def test_second_active_profile_is_refused(db: Database) -> None:
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.profiles),
            [
                {"id": "a", "working_dir": "/a", "agents": {}, "is_active": True},
                {"id": "b", "working_dir": "/b", "agents": {}, "is_active": False},
            ],
        )
        with pytest.raises(ActiveProfileConflict), translate_integrity_errors():
            await conn.execute(
                update(schema.profiles).where(schema.profiles.c.id == "b").values(is_active=True)
            )
        inactive = [{"id": f"x{i}", "working_dir": "/x", "agents": {}} for i in range(3)]
        await conn.execute(insert(schema.profiles), inactive)
        active = await conn.scalars(select(schema.profiles.c.id).where(schema.profiles.c.is_active))
        assert active.all() == ["a"]


def event_row(workflow_id: uuid.UUID, sequence: int, level: str = "info") -> dict[str, object]:
    return {
        "id": uuid.uuid4(),
        "workflow_id": workflow_id,
        "sequence": sequence,
        "event_type": "stage_started",
        "level": level,
        "message": "m",
    }


async def test_duplicate_event_sequence_is_refused(db: Database) -> None:
    wid = await add_workflow(db)
    other = await add_workflow(db, worktree="/else")
    async with db.connection() as conn:
        await conn.execute(insert(schema.workflow_log), [event_row(wid, 1), event_row(other, 1)])
        with pytest.raises(DuplicateKeyError) as caught, translate_integrity_errors():
            await conn.execute(insert(schema.workflow_log).values(event_row(wid, 1)))
    assert caught.value.constraint == "uq_workflow_log__workflow_id_sequence"


async def test_event_level_outside_the_four_is_refused(db: Database) -> None:
    wid = await add_workflow(db)
    async with db.connection() as conn:
        for i, level in enumerate(["info", "warning", "error", "debug"], start=1):
            await conn.execute(insert(schema.workflow_log).values(event_row(wid, i, level)))
        with pytest.raises(ConstraintViolationError) as caught, translate_integrity_errors():
            await conn.execute(insert(schema.workflow_log).values(event_row(wid, 9, "fatal")))
    assert caught.value.constraint == "ck_workflow_log__level"


async def test_event_for_unknown_workflow_is_refused(db: Database) -> None:
    async with db.connection() as conn:
        with pytest.raises(ReferenceNotFoundError), translate_integrity_errors():
            await conn.execute(insert(schema.workflow_log).values(event_row(uuid.uuid4(), 1)))


async def test_second_settings_row_is_refused(db: Database) -> None:
    async with db.connection() as conn:
        with pytest.raises(DuplicateKeyError), translate_integrity_errors():
            await conn.execute(insert(schema.server_settings).values(id=1))
        with pytest.raises(ConstraintViolationError) as caught, translate_integrity_errors():
            await conn.execute(insert(schema.server_settings).values(id=2))
        assert caught.value.constraint == "ck_server_settings__singleton"
        with pytest.raises(ConstraintViolationError) as caught, translate_integrity_errors():
            await conn.execute(update(schema.server_settings).values(max_concurrent=0))
        assert caught.value.constraint == "ck_server_settings__max_concurrent"
        assert await conn.scalar(select(func.count()).select_from(schema.server_settings)) == 1


async def test_duplicate_message_and_prompt_version_numbers_are_refused(db: Database) -> None:
    now = datetime.now(UTC)
    session = uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.brainstorm_sessions).values(
                id=session, profile_id="p", created_at=now, updated_at=now
            )
        )
        message = {"session_id": session, "sequence": 1, "role": "user", "content": "c"}
        await conn.execute(insert(schema.brainstorm_messages).values(id=uuid.uuid4(), **message))
        with pytest.raises(DuplicateKeyError), translate_integrity_errors():
            await conn.execute(
                insert(schema.brainstorm_messages).values(id=uuid.uuid4(), **message)
            )
        version = {"prompt_id": "architect.plan", "version_number": 1, "content": "c"}
        await conn.execute(insert(schema.prompt_versions).values(id=uuid.uuid4(), **version))
        with pytest.raises(DuplicateKeyError) as caught, translate_integrity_errors():
            await conn.execute(insert(schema.prompt_versions).values(id=uuid.uuid4(), **version))
        assert caught.value.constraint == "uq_prompt_versions__prompt_id_version_number"


async def test_deleting_a_workflow_cascades(db: Database) -> None:
    wid = await add_workflow(db)
    keep = await add_workflow(db, worktree="/keep")
    version = uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.prompt_versions).values(
                id=version, prompt_id="architect.plan", version_number=1, content="c"
            )
        )
        for target in (wid, keep):
            await conn.execute(insert(schema.workflow_log).values(event_row(target, 1)))
            await conn.execute(
                insert(schema.token_usage).values(
                    id=uuid.uuid4(),
                    workflow_id=target,
                    agent="developer",
                    model="m",
                    input_tokens=1,
                    output_tokens=1,
                    cost_usd=Decimal("0.000001"),
                )
            )
            await conn.execute(
                insert(schema.workflow_prompt_versions).values(
                    workflow_id=target, prompt_id="architect.plan", version_id=version
                )
            )
        await conn.execute(delete(schema.workflows).where(schema.workflows.c.id == wid))
        for table in (schema.workflow_log, schema.token_usage, schema.workflow_prompt_versions):
            owners = (await conn.scalars(select(table.c.workflow_id))).all()
            assert owners == [keep], table.name


async def test_session_delete_cascades_and_version_delete_clears_current(db: Database) -> None:
    now = datetime.now(UTC)
    session = uuid.uuid4()
    version = uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.brainstorm_sessions).values(
                id=session, profile_id="p", created_at=now, updated_at=now
            )
        )
        await conn.execute(
            insert(schema.brainstorm_messages).values(
                id=uuid.uuid4(), session_id=session, sequence=1, role="user", content="c"
            )
        )
        await conn.execute(
            insert(schema.brainstorm_artifacts).values(
                id=uuid.uuid4(), session_id=session, type="design", path="/x"
            )
        )
        await conn.execute(delete(schema.brainstorm_sessions))
        for table in (schema.brainstorm_messages, schema.brainstorm_artifacts):
            assert await conn.scalar(select(func.count()).select_from(table)) == 0
        await conn.execute(
            insert(schema.prompt_versions).values(
                id=version, prompt_id="architect.plan", version_number=1, content="c"
            )
        )
        await conn.execute(
            update(schema.prompts)
            .where(schema.prompts.c.id == "architect.plan")
            .values(current_version_id=version)
        )
        await conn.execute(delete(schema.prompt_versions))
        current = await conn.scalar(
            select(schema.prompts.c.current_version_id).where(
                schema.prompts.c.id == "architect.plan"
            )
        )
        assert current is None


async def test_naive_datetime_is_refused_before_reaching_the_database(db: Database) -> None:
    async with db.connection() as conn:
        with pytest.raises(StatementError) as caught:  # wraps the type's own error
            await conn.execute(
                insert(schema.workflows).values(
                    id=uuid.uuid4(),
                    issue_id="I",
                    worktree_path="/n",
                    created_at=datetime(2026, 1, 1, 12, 0),
                )
            )
        assert "no time zone" in str(caught.value)
        assert await conn.scalar(select(func.count()).select_from(schema.workflows)) == 0
