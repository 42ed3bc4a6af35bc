"""Seeding: defaults inserted once, never overwriting a row a user changed."""

from __future__ import annotations

import asyncio

from sqlalchemy import delete, func, select, update

from amelia.agents.prompts.defaults import PROMPT_DEFAULTS
from amelia.server.database import Database, schema
from amelia.server.database.seed import seed_defaults
from tests.pg import migrate_to_head


async def test_migration_seeds_prompts_and_settings(db: Database) -> None:
    async with db.connection() as conn:
        ids = (await conn.scalars(select(schema.prompts.c.id))).all()
        assert sorted(ids) == sorted(PROMPT_DEFAULTS)
        assert await conn.scalar(select(func.count()).select_from(schema.server_settings)) == 1
        row = (await conn.execute(select(schema.prompts))).mappings().first()
        assert row is not None and row["current_version_id"] is None


async def test_seeding_twice_keeps_one_row_and_never_overwrites(
    db: Database, database_url: str
) -> None:
    async with db.connection() as conn:
        await conn.execute(
            update(schema.prompts)
            .where(schema.prompts.c.id == "architect.plan")
            .values(name="My renamed prompt", description=None)
        )
        await conn.execute(update(schema.server_settings).values(max_concurrent=42))
        await conn.execute(delete(schema.prompts).where(schema.prompts.c.id == "evaluator.system"))
        await conn.run_sync(seed_defaults)
        await conn.run_sync(seed_defaults)
    await asyncio.to_thread(migrate_to_head, database_url)  # the upgrade path seeds too
    async with db.connection() as conn:
        counts = (
            await conn.execute(
                select(schema.prompts.c.id, func.count()).group_by(schema.prompts.c.id)
            )
        ).all()
        assert dict(counts) == {prompt_id: 1 for prompt_id in PROMPT_DEFAULTS}
        name = await conn.scalar(
            select(schema.prompts.c.name).where(schema.prompts.c.id == "architect.plan")
        )
        assert name == "My renamed prompt"
        assert await conn.scalar(select(schema.server_settings.c.max_concurrent)) == 42
        assert await conn.scalar(select(func.count()).select_from(schema.server_settings)) == 1
