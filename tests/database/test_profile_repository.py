"""ProfileRepository: JSONB agents round trips, whitelisted updates, one active profile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from amelia.core.types import AgentConfig, DriverType, Profile, RetryConfig, TrackerType
from amelia.server.database import Database, schema
from amelia.server.database.errors import DuplicateKeyError
from amelia.server.database.profile_repository import ProfileRecord, ProfileRepository

NESTED_OPTIONS: dict[str, Any] = {
    "base_url": "https://openrouter.ai/api/v1",
    "api_key_env": "OPENROUTER_API_KEY",
    "headers": {"X-Title": "Amélia ✨", "nested": {"deep": [1, 2.5, None, True, "日本語"]}},
    "temperature": 0.2,
}


def make_profile(name: str = "work", **overrides: Any) -> Profile:
    fields: dict[str, Any] = {
        "name": name,
        "tracker": TrackerType.NOOP,
        "working_dir": "/home/dev/répertoire",
        "agents": {
            "architect": AgentConfig(
                driver=DriverType.API, model="openai/gpt-5", options=NESTED_OPTIONS
            ),
            "developer": AgentConfig(
                driver=DriverType.CLI, model="sonnet", options={"command": ["claude", "-p"]}
            ),
            "reviewer": AgentConfig(driver=DriverType.CLI, model="opus"),
        },
    }
    fields.update(overrides)
    return Profile(**fields)


async def active_ids(db: Database) -> list[str]:
    async with db.connection() as conn:
        ids = await conn.scalars(select(schema.profiles.c.id).where(schema.profiles.c.is_active))
        return sorted(ids)


async def test_create_and_get_round_trip_nested_unicode_agents(db: Database) -> None:
    repo = ProfileRepository(db)
    profile = make_profile(
        plan_output_dir="plans/ñ", plan_path_pattern="plans/{issue_key}.md", tracker="github"
    )
    created = await repo.create_profile(profile)
    assert created == profile
    fetched = await repo.get_profile("work")
    assert fetched == profile
    assert fetched is not None
    assert fetched.agents["architect"].options == NESTED_OPTIONS
    assert fetched.tracker is TrackerType.GITHUB

    async with db.connection() as conn:
        row = (
            (await conn.execute(select(schema.profiles).where(schema.profiles.c.id == "work")))
            .mappings()
            .one()
        )
    # The stored JSONB shape is {name: {driver, model, options}}.
    assert row["agents"]["developer"] == {
        "driver": "cli",
        "model": "sonnet",
        "options": {"command": ["claude", "-p"]},
    }
    assert row["agents"]["reviewer"]["options"] == {}
    assert row["is_active"] is False
    assert row["created_at"].utcoffset() is not None
    record = ProfileRecord.model_validate(dict(row))
    assert record.agents["architect"]["options"] == NESTED_OPTIONS


async def test_retry_is_not_persisted(db: Database) -> None:
    repo = ProfileRepository(db)
    created = await repo.create_profile(make_profile(retry=RetryConfig(max_retries=9)))
    assert created.retry == RetryConfig()
    fetched = await repo.get_profile("work")
    assert fetched is not None and fetched.retry == RetryConfig()


async def test_column_defaults_apply(db: Database) -> None:
    repo = ProfileRepository(db)
    created = await repo.create_profile(Profile(name="bare", working_dir="/w"))
    assert created.plan_output_dir == "docs/plans"
    assert created.plan_path_pattern == "docs/plans/{date}-{issue_key}.md"
    assert created.agents == {}
    assert created.tracker is TrackerType.NOOP


async def test_duplicate_name_raises_duplicate_key(db: Database) -> None:
    repo = ProfileRepository(db)
    await repo.create_profile(make_profile())
    with pytest.raises(DuplicateKeyError):
        await repo.create_profile(make_profile(working_dir="/elsewhere"))
    fetched = await repo.get_profile("work")
    assert fetched is not None and fetched.working_dir == "/home/dev/répertoire"


async def test_list_is_ordered_by_name_and_missing_reads_are_none(db: Database) -> None:
    repo = ProfileRepository(db)
    assert await repo.list_profiles() == []
    assert await repo.get_profile("nope") is None
    assert await repo.get_active_profile() is None
    for name in ["zeta", "alpha", "Mid", "beta"]:
        await repo.create_profile(make_profile(name))
    names = [p.name for p in await repo.list_profiles()]
    async with db.connection() as conn:
        expected = list(await conn.scalars(select(schema.profiles.c.id).order_by("id")))
    assert names == expected
    assert set(names) == {"zeta", "alpha", "Mid", "beta"}
    assert await repo.get_active_profile() is None  # creation never activates


async def test_update_each_field_and_agents_as_dicts_or_models(db: Database) -> None:
    repo = ProfileRepository(db)
    await repo.create_profile(make_profile())
    async with db.connection() as conn:
        before = await conn.scalar(select(schema.profiles.c.updated_at))

    updated = await repo.update_profile(
        "work",
        {
            "tracker": "jira",
            "working_dir": "/new",
            "plan_output_dir": "out",
            "plan_path_pattern": "out/{issue_key}.md",
            "agents": {
                "architect": {"driver": "api", "model": "m", "options": {"k": {"ü": [1]}}},
                "developer": AgentConfig(driver=DriverType.CLI, model="x"),
            },
        },
    )
    assert updated.tracker is TrackerType.JIRA
    assert updated.working_dir == "/new"
    assert updated.plan_output_dir == "out"
    assert updated.plan_path_pattern == "out/{issue_key}.md"
    assert set(updated.agents) == {"architect", "developer"}
    assert updated.agents["architect"].options == {"k": {"ü": [1]}}
    assert updated.agents["developer"] == AgentConfig(driver=DriverType.CLI, model="x")
    assert await repo.get_profile("work") == updated
    async with db.connection() as conn:
        after = await conn.scalar(select(schema.profiles.c.updated_at))
    assert before is not None and after is not None and after > before

    only_dir = await repo.update_profile("work", {"working_dir": "/again"})
    assert only_dir.agents == updated.agents and only_dir.tracker is TrackerType.JIRA


async def test_update_refusals(db: Database) -> None:
    repo = ProfileRepository(db)
    await repo.create_profile(make_profile())
    original = await repo.get_profile("work")

    with pytest.raises(ValueError) as caught:
        await repo.update_profile("work", {"is_active": True, "name": "x", "working_dir": "/y"})
    assert "is_active" in str(caught.value) and "name" in str(caught.value)
    with pytest.raises(ValueError, match="tracker"):
        await repo.update_profile("work", {"tracker": "gitlab"})
    with pytest.raises(ValueError):
        await repo.update_profile("work", {"agents": {"dev": {"driver": "claude", "model": "m"}}})
    with pytest.raises(ValueError, match="working_dir"):
        await repo.update_profile("work", {"working_dir": None})
    assert await repo.get_profile("work") == original

    assert await repo.update_profile("work", {}) == original
    with pytest.raises(ValueError, match="Profile not found"):
        await repo.update_profile("ghost", {})
    with pytest.raises(ValueError, match="Profile not found"):
        await repo.update_profile("ghost", {"working_dir": "/z"})


async def test_delete_profile(db: Database) -> None:
    repo = ProfileRepository(db)
    await repo.create_profile(make_profile())
    await repo.set_active("work")
    assert await repo.delete_profile("work") is True
    assert await repo.delete_profile("work") is False
    assert await repo.get_profile("work") is None
    assert await repo.get_active_profile() is None


async def test_set_active_switches_and_missing_target_changes_nothing(db: Database) -> None:
    repo = ProfileRepository(db)
    for name in ["a", "b", "c"]:
        await repo.create_profile(make_profile(name))
    await repo.set_active("a")
    assert await active_ids(db) == ["a"]
    await repo.set_active("b")
    assert await active_ids(db) == ["b"]
    active = await repo.get_active_profile()
    assert active is not None and active.name == "b"
    await repo.set_active("b")  # already active: still the only one
    assert await active_ids(db) == ["b"]

    with pytest.raises(ValueError, match="Profile not found"):
        await repo.set_active("ghost")
    assert await active_ids(db) == ["b"]  # the clearing was rolled back


async def test_set_active_inside_a_callers_transaction(db: Database) -> None:
    repo = ProfileRepository(db)
    await repo.create_profile(make_profile("a"))
    await repo.create_profile(make_profile("b"))
    await repo.set_active("a")
    async with db.transaction() as conn:
        bound = repo.bind(conn)
        await bound.set_active("b")
        with pytest.raises(ValueError):
            await bound.set_active("ghost")  # a savepoint: only this call is undone
        assert (await bound.get_active_profile()) is not None
    assert await active_ids(db) == ["b"]


@pytest.fixture
async def wide_db(database_url: str) -> AsyncIterator[Database]:
    """A pool wide enough for 20 calls on 20 separate connections at once."""
    database = Database(database_url, min_size=20, max_size=22, pool_timeout=30)
    await database.connect()
    try:
        yield database
    finally:
        await database.close()


@pytest.mark.slow
async def test_concurrent_set_active_leaves_exactly_one_active(wide_db: Database) -> None:
    repo = ProfileRepository(wide_db)
    names = [f"p{i:02d}" for i in range(20)]
    for name in names:
        await repo.create_profile(make_profile(name))

    for _ in range(20):
        results = await asyncio.gather(
            *(repo.set_active(name) for name in names), return_exceptions=True
        )
        assert [r for r in results if r is not None] == []
        active = await active_ids(wide_db)
        assert len(active) == 1 and active[0] in names
        async with wide_db.connection() as conn:
            total = await conn.scalar(select(func.count()).select_from(schema.profiles))
        assert total == 20


def test_get_agent_config_and_retry_ranges() -> None:
    profile = make_profile()
    assert profile.get_agent_config("reviewer").model == "opus"
    with pytest.raises(ValueError, match="evaluator"):
        profile.get_agent_config("evaluator")
    with pytest.raises(ValueError):
        RetryConfig(max_retries=11)
    with pytest.raises(ValueError):
        RetryConfig(base_delay=0.05)
    with pytest.raises(ValueError):
        RetryConfig(max_delay=301)
    with pytest.raises(ValidationError):
        profile.name = "y"  # type: ignore[misc]  # frozen
