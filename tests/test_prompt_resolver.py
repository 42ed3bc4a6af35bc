"""PromptResolver against the real PromptRepository: custom versions, defaults, fallbacks."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from sqlalchemy import insert
from sqlalchemy.engine import make_url

from amelia.agents.prompts.defaults import PROMPT_DEFAULTS
from amelia.agents.prompts.models import Prompt, ResolvedPrompt
from amelia.agents.prompts.resolver import PromptResolver
from amelia.server.database import Database, schema
from amelia.server.database.errors import ReferenceNotFoundError
from amelia.server.database.prompt_repository import PromptRepository
from tests.pg import drop_database


async def add_workflow(db: Database) -> uuid.UUID:
    workflow_id = uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.workflows).values(id=workflow_id, issue_id="I-9", worktree_path="/w")
        )
    return workflow_id


def default(prompt_id: str) -> ResolvedPrompt:
    return ResolvedPrompt(prompt_id=prompt_id, content=PROMPT_DEFAULTS[prompt_id].content)


async def test_default_custom_and_back_to_default(db: Database) -> None:
    repo = PromptRepository(db)
    resolver = PromptResolver(repo)
    assert await resolver.get_prompt("architect.plan") == default("architect.plan")

    version = await repo.create_version("architect.plan", "My plan format ✍", "mine")
    assert await resolver.get_prompt("architect.plan") == ResolvedPrompt(
        prompt_id="architect.plan",
        content="My plan format ✍",
        version_id=version.id,
        version_number=1,
        is_default=False,
    )
    assert await resolver.get_prompt("reviewer.agentic") == default("reviewer.agentic")

    await repo.reset_to_default("architect.plan")
    assert await resolver.get_prompt("architect.plan") == default("architect.plan")


async def test_unknown_id_raises_even_before_touching_the_database(db: Database) -> None:
    resolver = PromptResolver(PromptRepository(db))
    with pytest.raises(ValueError, match=r"no\.such"):
        await resolver.get_prompt("no.such")
    await db.close()
    with pytest.raises(ValueError, match=r"no\.such"):
        await resolver.get_prompt("no.such")


async def test_prompt_stored_but_not_in_defaults_is_still_unknown(db: Database) -> None:
    repo = PromptRepository(db)

    await repo.create_prompt(Prompt(id="extra.prompt", agent="extra", name="Extra"))
    await repo.create_version("extra.prompt", "custom", None)
    with pytest.raises(ValueError):
        await PromptResolver(repo).get_prompt("extra.prompt")
    assert "extra.prompt" not in await PromptResolver(repo).get_all_active()


async def test_get_all_active_mixes_custom_and_defaults(db: Database) -> None:
    repo = PromptRepository(db)
    await repo.create_version("evaluator.system", "old", None)
    newest = await repo.create_version("evaluator.system", "Evaluate, strictly", None)
    resolved = await PromptResolver(repo).get_all_active()
    assert list(resolved) == list(PROMPT_DEFAULTS)
    assert resolved["evaluator.system"].content == "Evaluate, strictly"
    assert resolved["evaluator.system"].version_id == newest.id
    assert resolved["evaluator.system"].version_number == 2
    assert not resolved["evaluator.system"].is_default
    others = {k: v for k, v in resolved.items() if k != "evaluator.system"}
    assert others == {k: default(k) for k in others}


async def test_record_for_workflow_records_only_custom_versions(db: Database) -> None:
    repo = PromptRepository(db)
    resolver = PromptResolver(repo)
    workflow_id = await add_workflow(db)
    plan = await repo.create_version("architect.plan", "plan", None)
    review = await repo.create_version("reviewer.agentic", "review", None)

    await resolver.record_for_workflow(workflow_id)
    recorded = await repo.get_workflow_prompts(workflow_id)
    assert {(r.prompt_id, r.version_id) for r in recorded} == {
        ("architect.plan", plan.id),
        ("reviewer.agentic", review.id),
    }

    # Given what a second workflow actually used: only that custom version is recorded.
    second = await add_workflow(db)
    used = [
        await resolver.get_prompt("architect.plan"),
        await resolver.get_prompt("developer.system"),
    ]
    await resolver.record_for_workflow(second, used)
    assert [(r.prompt_id, r.version_id) for r in await repo.get_workflow_prompts(second)] == [
        ("architect.plan", plan.id)
    ]

    # Nothing custom: nothing recorded.
    third = await add_workflow(db)
    await resolver.record_for_workflow(third, [default("architect.plan")])
    assert await repo.get_workflow_prompts(third) == []

    with pytest.raises(ReferenceNotFoundError):
        await resolver.record_for_workflow(uuid.uuid4())


async def test_falls_back_to_defaults_when_the_database_is_closed(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    repo = PromptRepository(db)
    await repo.create_version("architect.plan", "custom plan", None)
    resolver = PromptResolver(repo)
    assert not (await resolver.get_prompt("architect.plan")).is_default

    await db.close()
    with caplog.at_level(logging.WARNING, logger="amelia.agents.prompts.resolver"):
        assert await resolver.get_prompt("architect.plan") == default("architect.plan")
        assert await resolver.get_all_active() == {k: default(k) for k in PROMPT_DEFAULTS}
    assert sum("using the default" in r.getMessage() for r in caplog.records) == 2


async def test_falls_back_to_defaults_when_the_database_was_dropped(
    database_url: str, pg_admin_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    database = Database(database_url, min_size=1, max_size=2)
    await database.connect()
    try:
        repo = PromptRepository(database)
        await repo.create_version("architect.plan", "custom plan", None)
        resolver = PromptResolver(repo)
        assert (await resolver.get_prompt("architect.plan")).content == "custom plan"

        name = make_url(database_url).database
        assert name is not None
        await asyncio.to_thread(drop_database, pg_admin_url, name)

        with caplog.at_level(logging.WARNING, logger="amelia.agents.prompts.resolver"):
            # First the pooled connection is found dead, then a new one cannot be opened.
            for _ in range(3):
                assert await resolver.get_prompt("architect.plan") == default("architect.plan")
            assert (await resolver.get_all_active())["architect.plan"].is_default
        resolver_logs = [r for r in caplog.records if r.name == "amelia.agents.prompts.resolver"]
        assert len(resolver_logs) == 4
    finally:
        await database.close()
