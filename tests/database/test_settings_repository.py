"""SettingsRepository: the seeded singleton row, whitelisted and range-checked updates."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, func, select

from amelia.server.database import Database, schema
from amelia.server.database.settings_repository import (
    UPDATABLE_SETTINGS,
    ServerSettings,
    SettingsRepository,
)


async def test_migration_seeds_the_defaults(db: Database) -> None:
    settings = await SettingsRepository(db).get_server_settings()
    assert settings.log_retention_days == 30
    assert settings.checkpoint_retention_days == 0
    assert settings.websocket_idle_timeout_seconds == 300.0
    assert settings.workflow_start_timeout_seconds == 60.0
    assert isinstance(settings.websocket_idle_timeout_seconds, float)
    assert settings.max_concurrent == 5
    assert settings.stream_tool_results is False
    assert settings.created_at.utcoffset() is not None
    assert settings.updated_at.utcoffset() is not None


async def test_ensure_defaults_is_idempotent_and_recreates_a_deleted_row(db: Database) -> None:
    repo = SettingsRepository(db)
    await repo.update_server_settings({"max_concurrent": 9})
    await repo.ensure_defaults()  # existing row untouched
    assert (await repo.get_server_settings()).max_concurrent == 9

    async with db.connection() as conn:
        await conn.execute(delete(schema.server_settings))
    with pytest.raises(ValueError, match="not initialized"):
        await repo.get_server_settings()
    with pytest.raises(ValueError, match="not initialized"):
        await repo.update_server_settings({"max_concurrent": 3})

    await repo.ensure_defaults()
    await repo.ensure_defaults()
    async with db.connection() as conn:
        assert await conn.scalar(select(func.count()).select_from(schema.server_settings)) == 1
    assert (await repo.get_server_settings()).max_concurrent == 5


async def test_update_writes_every_setting_and_bumps_updated_at(db: Database) -> None:
    repo = SettingsRepository(db)
    before = await repo.get_server_settings()
    updates: dict[str, Any] = {
        "log_retention_days": 7,
        "checkpoint_retention_days": -1,
        "websocket_idle_timeout_seconds": 12.5,
        "workflow_start_timeout_seconds": 3,
        "max_concurrent": 100,
        "stream_tool_results": True,
    }
    assert set(updates) == UPDATABLE_SETTINGS
    returned = await repo.update_server_settings(updates)
    stored = await repo.get_server_settings()
    assert returned == stored
    assert stored.model_dump(include=set(updates)) == updates
    assert stored.workflow_start_timeout_seconds == 3.0
    assert stored.created_at == before.created_at
    assert stored.updated_at > before.updated_at


async def test_whole_float_is_accepted_for_an_integer_setting(db: Database) -> None:
    settings = await SettingsRepository(db).update_server_settings({"log_retention_days": 14.0})
    assert settings.log_retention_days == 14
    assert isinstance(settings.log_retention_days, int)


async def test_empty_update_returns_current_without_writing(db: Database) -> None:
    repo = SettingsRepository(db)
    before = await repo.get_server_settings()
    assert await repo.update_server_settings({}) == before
    assert (await repo.get_server_settings()).updated_at == before.updated_at


async def test_unknown_names_are_all_listed_and_nothing_is_written(db: Database) -> None:
    repo = SettingsRepository(db)
    before = await repo.get_server_settings()
    with pytest.raises(ValueError) as caught:
        await repo.update_server_settings(
            {"max_concurrent": 7, "checkpoint_path": "/x", "log_retention_max_events": 1}
        )
    message = str(caught.value)
    assert "checkpoint_path" in message
    assert "log_retention_max_events" in message
    assert await repo.get_server_settings() == before


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("max_concurrent", 0),
        ("max_concurrent", 101),
        ("log_retention_days", 0),
        ("checkpoint_retention_days", -2),
        ("websocket_idle_timeout_seconds", 0),
        ("workflow_start_timeout_seconds", -1.5),
        ("workflow_start_timeout_seconds", float("nan")),
        ("max_concurrent", 2.5),
        ("max_concurrent", True),
        ("log_retention_days", "30"),
        ("websocket_idle_timeout_seconds", None),
        ("stream_tool_results", 1),
    ],
)
async def test_invalid_values_name_the_setting_and_change_nothing(
    db: Database, name: str, value: Any
) -> None:
    repo = SettingsRepository(db)
    before = await repo.get_server_settings()
    with pytest.raises(ValueError, match=name):
        await repo.update_server_settings({"log_retention_days": 9, name: value})
    assert await repo.get_server_settings() == before


@pytest.mark.parametrize(
    ("name", "value"),
    [("max_concurrent", 1), ("max_concurrent", 100), ("checkpoint_retention_days", -1)],
)
async def test_range_bounds_are_inclusive(db: Database, name: str, value: int) -> None:
    settings = await SettingsRepository(db).update_server_settings({name: value})
    assert getattr(settings, name) == value


async def test_repository_bound_to_a_held_connection(db: Database) -> None:
    async with db.connection() as conn:
        repo = SettingsRepository(db).bind(conn)
        await repo.update_server_settings({"max_concurrent": 11})
        assert (await repo.get_server_settings()).max_concurrent == 11
    assert (await SettingsRepository(db).get_server_settings()).max_concurrent == 11


def test_model_refuses_out_of_range_values() -> None:
    with pytest.raises(ValueError):
        ServerSettings(
            log_retention_days=30,
            checkpoint_retention_days=0,
            websocket_idle_timeout_seconds=1,
            workflow_start_timeout_seconds=1,
            max_concurrent=0,
            stream_tool_results=False,
            created_at="2024-01-01T00:00:00Z",
            updated_at="2024-01-01T00:00:00Z",
        )
