"""PromptRepository: seeded prompts, numbered versions (also under concurrency), audit rows."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, func, insert, select

from amelia.agents.prompts.defaults import PROMPT_DEFAULTS
from amelia.agents.prompts.models import (
    Prompt,
    PromptNotFoundError,
    PromptVersion,
    WorkflowPromptVersion,
)
from amelia.server.database import Database, schema
from amelia.server.database.errors import DuplicateKeyError, ReferenceNotFoundError
from amelia.server.database.prompt_repository import PromptRepository


async def add_workflow(db: Database) -> uuid.UUID:
    workflow_id = uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.workflows).values(id=workflow_id, issue_id="I-1", worktree_path="/w")
        )
    return workflow_id


async def version_count(db: Database) -> int:
    async with db.connection() as conn:
        count = await conn.scalar(select(func.count()).select_from(schema.prompt_versions))
    return int(count or 0)


async def test_seeded_prompts_listed_by_agent_then_name(db: Database) -> None:
    repo = PromptRepository(db)
    listed = await repo.list_prompts()
    assert {p.id for p in listed} == set(PROMPT_DEFAULTS)
    assert [(p.agent, p.name) for p in listed] == sorted((p.agent, p.name) for p in listed)
    plan = await repo.get_prompt("architect.plan")
    assert plan == Prompt(
        id="architect.plan",
        agent="architect",
        name=PROMPT_DEFAULTS["architect.plan"].name,
        description=PROMPT_DEFAULTS["architect.plan"].description,
    )
    assert await repo.get_prompt("nope.none") is None


async def test_create_prompt_and_duplicate(db: Database) -> None:
    repo = PromptRepository(db)
    prompt = Prompt(id="aa.custom", agent="aa", name="Zed ✓", description=None)
    await repo.create_prompt(prompt)
    assert await repo.get_prompt("aa.custom") == prompt
    assert (await repo.list_prompts())[0] == prompt  # agent "aa" sorts first
    with pytest.raises(DuplicateKeyError):
        await repo.create_prompt(prompt)


async def test_create_version_numbers_activates_and_lists_newest_first(db: Database) -> None:
    repo = PromptRepository(db)
    before = datetime.now(UTC)
    v1 = await repo.create_version("architect.plan", "Plan v1 — ünïcode", "first")
    v2 = await repo.create_version("architect.plan", "Plan v2", None)
    other = await repo.create_version("reviewer.agentic", "Review v1", "x")
    assert (v1.version_number, v2.version_number, other.version_number) == (1, 2, 1)
    assert v1.prompt_id == "architect.plan" and v1.change_note == "first"
    assert v1.content == "Plan v1 — ünïcode"
    assert v1.created_at.utcoffset() is not None and v1.created_at >= before.replace(microsecond=0)

    prompt = await repo.get_prompt("architect.plan")
    assert prompt is not None and prompt.current_version_id == v2.id
    assert await repo.get_versions("architect.plan") == [v2, v1]
    assert await repo.get_versions("evaluator.system") == []
    assert await repo.get_version(v1.id) == v1
    assert await repo.get_version(uuid.uuid4()) is None


async def test_create_version_refusals_write_nothing(db: Database) -> None:
    repo = PromptRepository(db)
    with pytest.raises(PromptNotFoundError, match=r"ghost\.prompt") as caught:
        await repo.create_version("ghost.prompt", "text", None)
    assert isinstance(caught.value, ValueError)
    with pytest.raises(ValueError, match="empty"):
        await repo.create_version("architect.plan", "  \n\t", None)
    assert await version_count(db) == 0
    prompt = await repo.get_prompt("architect.plan")
    assert prompt is not None and prompt.current_version_id is None


def test_prompt_version_model_refuses_blank_content() -> None:
    with pytest.raises(ValueError):
        PromptVersion(prompt_id="p", version_number=1, content="   ")
    with pytest.raises(ValueError):
        PromptVersion(prompt_id="p", version_number=0, content="x")


async def test_set_active_version_and_reset(db: Database) -> None:
    repo = PromptRepository(db)
    v1 = await repo.create_version("architect.plan", "one", None)
    v2 = await repo.create_version("architect.plan", "two", None)
    foreign = await repo.create_version("evaluator.system", "eval", None)

    await repo.set_active_version("architect.plan", v1.id)
    assert await repo.get_current_version("architect.plan") == v1

    for prompt_id, version_id in [
        ("architect.plan", foreign.id),  # another prompt's version
        ("architect.plan", uuid.uuid4()),  # no such version
        ("ghost.prompt", v1.id),  # no such prompt
    ]:
        with pytest.raises(ValueError, match="is not a version of prompt"):
            await repo.set_active_version(prompt_id, version_id)
    assert await repo.get_current_version("architect.plan") == v1

    await repo.reset_to_default("architect.plan")
    await repo.reset_to_default("ghost.prompt")  # silent
    prompt = await repo.get_prompt("architect.plan")
    assert prompt is not None and prompt.current_version_id is None
    assert await repo.get_current_version("architect.plan") is None
    assert await repo.get_versions("architect.plan") == [v2, v1]  # versions kept


async def test_current_versions_by_prompt(db: Database) -> None:
    repo = PromptRepository(db)
    assert await repo.get_current_versions() == {}
    await repo.create_version("architect.plan", "one", None)
    two = await repo.create_version("architect.plan", "two", None)
    evaluator = await repo.create_version("evaluator.system", "eval", None)
    reviewer = await repo.create_version("reviewer.agentic", "rev", None)
    await repo.reset_to_default("reviewer.agentic")
    assert reviewer.version_number == 1
    assert await repo.get_current_versions() == {
        "architect.plan": two,
        "evaluator.system": evaluator,
    }
    assert await repo.get_current_version("developer.system") is None
    assert await repo.get_current_version("ghost.prompt") is None


async def test_record_workflow_prompt_upserts(db: Database) -> None:
    repo = PromptRepository(db)
    workflow_id = await add_workflow(db)
    other_workflow = await add_workflow(db)
    v1 = await repo.create_version("architect.plan", "one", None)
    v2 = await repo.create_version("architect.plan", "two", None)
    ev = await repo.create_version("evaluator.system", "eval", None)

    assert await repo.get_workflow_prompts(workflow_id) == []
    await repo.record_workflow_prompt(workflow_id, "architect.plan", v1.id)
    await repo.record_workflow_prompt(workflow_id, "evaluator.system", ev.id)
    await repo.record_workflow_prompt(workflow_id, "architect.plan", v2.id)  # replaces v1
    await repo.record_workflow_prompt(other_workflow, "architect.plan", v1.id)
    assert await repo.get_workflow_prompts(workflow_id) == [
        WorkflowPromptVersion(
            workflow_id=workflow_id, prompt_id="architect.plan", version_id=v2.id
        ),
        WorkflowPromptVersion(
            workflow_id=workflow_id, prompt_id="evaluator.system", version_id=ev.id
        ),
    ]
    assert [w.version_id for w in await repo.get_workflow_prompts(other_workflow)] == [v1.id]

    with pytest.raises(ReferenceNotFoundError):
        await repo.record_workflow_prompt(uuid.uuid4(), "architect.plan", v1.id)
    with pytest.raises(ReferenceNotFoundError):
        await repo.record_workflow_prompt(workflow_id, "architect.plan", uuid.uuid4())

    async with db.connection() as conn:  # deleting the workflow removes its audit rows
        await conn.execute(delete(schema.workflows).where(schema.workflows.c.id == workflow_id))
    assert await repo.get_workflow_prompts(workflow_id) == []


async def test_create_version_inside_a_callers_transaction_rolls_back_with_it(
    db: Database,
) -> None:
    repo = PromptRepository(db)
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await repo.bind(conn).create_version("architect.plan", "one", None)
            raise RuntimeError("caller fails after the call")
    assert await version_count(db) == 0


@pytest.fixture
async def wide_db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, min_size=20, max_size=22, pool_timeout=30)
    await database.connect()
    try:
        yield database
    finally:
        await database.close()


@pytest.mark.slow
async def test_concurrent_create_version_numbers_one_to_twenty(wide_db: Database) -> None:
    repo = PromptRepository(wide_db)
    for prompt_id in ["architect.plan", "reviewer.agentic", "evaluator.system"]:
        created = await asyncio.gather(
            *(repo.create_version(prompt_id, f"text {i}", f"note {i}") for i in range(20))
        )
        assert sorted(v.version_number for v in created) == list(range(1, 21))
        assert len({v.id for v in created}) == 20
        prompt = await repo.get_prompt(prompt_id)
        assert prompt is not None
        assert prompt.current_version_id in {v.id for v in created}
        # Creations are serialised, so the last one committed is also the highest number.
        newest = max(created, key=lambda v: v.version_number)
        assert prompt.current_version_id == newest.id
        assert [v.version_number for v in await repo.get_versions(prompt_id)] == list(
            range(20, 0, -1)
        )
