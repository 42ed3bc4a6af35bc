"""`/api/settings` and `/api/profiles...` through the real app and database."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from amelia.server.database.profile_repository import ProfileRepository
from amelia.server.database.schema import server_settings
from amelia.server.database.settings_repository import SettingsRepository
from amelia.server.services import AppServices

DEFAULT_SETTINGS = {
    "log_retention_days": 30,
    "checkpoint_retention_days": 0,
    "websocket_idle_timeout_seconds": 300.0,
    "workflow_start_timeout_seconds": 60.0,
    "max_concurrent": 5,
    "stream_tool_results": False,
}


def profile_body(profile_id: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": profile_id,
        "working_dir": f"/repos/{profile_id}",
        "agents": {
            "architect": {"driver": "api", "model": "m/arch", "options": {"base_url": "http://x"}},
            "developer": {"driver": "cli", "model": "opus", "options": {"command": ["claude"]}},
        },
    }
    body.update(overrides)
    return body


async def create(client: httpx.AsyncClient, profile_id: str, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/api/profiles", json=profile_body(profile_id, **overrides))
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


# --- settings ---------------------------------------------------------------------------------


async def test_get_settings_returns_the_stored_values_without_timestamps(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/settings")
    assert response.status_code == 200
    assert response.json() == DEFAULT_SETTINGS


async def test_get_settings_without_the_row_is_400(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    async with services.db.connection() as conn:
        await conn.execute(delete(server_settings))
    response = await client.get("/api/settings")
    assert response.status_code == 400
    assert response.json()["code"] == "INVALID_VALUE"


async def test_put_settings_changes_given_fields_and_drops_nulls(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    response = await client.put(
        "/api/settings",
        json={
            "max_concurrent": 100,
            "checkpoint_retention_days": -1,
            "websocket_idle_timeout_seconds": 0.5,
            "stream_tool_results": True,
            "log_retention_days": None,
        },
    )
    assert response.status_code == 200, response.text
    expected = {
        **DEFAULT_SETTINGS,
        "max_concurrent": 100,
        "checkpoint_retention_days": -1,
        "websocket_idle_timeout_seconds": 0.5,
        "stream_tool_results": True,
    }
    assert response.json() == expected
    stored = await SettingsRepository(services.db).get_server_settings()
    assert stored.max_concurrent == 100
    assert stored.log_retention_days == 30  # null meant "unchanged"
    assert stored.websocket_idle_timeout_seconds == 0.5
    # An empty body changes nothing and answers the current settings.
    assert (await client.put("/api/settings", json={})).json() == expected


@pytest.mark.parametrize(
    "body",
    [
        {"max_concurrent": 0},
        {"max_concurrent": 101},
        {"log_retention_days": 0},
        {"checkpoint_retention_days": -2},
        {"websocket_idle_timeout_seconds": 0},
        {"workflow_start_timeout_seconds": -1.5},
        {"max_concurrent": "many"},
        {"max_concurrent": True},
        {"max_concurrent": 2.5},
        {"stream_tool_results": "maybe"},
        {"no_such_setting": 1},
        {"max_concurrent": 7, "no_such_setting": 1},
    ],
)
async def test_put_settings_out_of_range_or_unknown_is_422_and_changes_nothing(
    client: httpx.AsyncClient, services: AppServices, body: dict[str, Any]
) -> None:
    response = await client.put("/api/settings", json=body)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()
    stored = await SettingsRepository(services.db).get_server_settings()
    assert stored.max_concurrent == 5
    assert stored.log_retention_days == 30


# --- profiles ---------------------------------------------------------------------------------


async def test_profiles_list_is_empty_at_first(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/profiles")
    assert response.status_code == 200
    assert response.json() == []


async def test_create_profile_stores_it_inactive(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    body = await create(client, "work_1")
    assert body == {
        "id": "work_1",
        "tracker": "noop",
        "working_dir": "/repos/work_1",
        "plan_output_dir": "docs/plans",
        "plan_path_pattern": "docs/plans/{date}-{issue_key}.md",
        "agents": profile_body("work_1")["agents"],
        "is_active": False,
    }
    stored = await ProfileRepository(services.db).get_profile("work_1")
    assert stored is not None
    assert stored.agents["developer"].options == {"command": ["claude"]}
    assert await ProfileRepository(services.db).get_active_profile() is None


async def test_create_duplicate_profile_is_409(client: httpx.AsyncClient) -> None:
    await create(client, "dup")
    response = await client.post("/api/profiles", json=profile_body("dup", working_dir="/other"))
    assert response.status_code == 409
    assert response.json() == {"detail": "Profile already exists"}


@pytest.mark.parametrize(
    "overrides",
    [
        {"id": "Upper"},
        {"id": "has space"},
        {"id": "a/b"},
        {"id": ""},
        {"id": "x" * 101},
        {"working_dir": ""},
        {"working_dir": "/bad\x00path"},
        {"tracker": "trello"},
        {"agents": {"developer": {"driver": "sdk", "model": "m"}}},
        {"agents": {"developer": {"driver": "api", "model": ""}}},
        {"agents": {"developer": {"driver": "api"}}},
        {"agents": {"developer": {"driver": "api", "model": "m", "options": {"k": "\x00"}}}},
        {"sandbox": {}},
    ],
)
async def test_create_invalid_profile_is_422(
    client: httpx.AsyncClient, services: AppServices, overrides: dict[str, Any]
) -> None:
    response = await client.post("/api/profiles", json=profile_body("valid", **overrides))
    assert response.status_code == 422, response.text
    assert await ProfileRepository(services.db).list_profiles() == []


async def test_create_profile_without_working_dir_is_422(client: httpx.AsyncClient) -> None:
    body = profile_body("nowd")
    del body["working_dir"]
    assert (await client.post("/api/profiles", json=body)).status_code == 422


async def test_get_profile_and_its_active_flag(client: httpx.AsyncClient) -> None:
    await create(client, "one")
    await create(client, "two")
    assert (await client.post("/api/profiles/two/activate")).status_code == 200
    one = await client.get("/api/profiles/one")
    two = await client.get("/api/profiles/two")
    assert one.status_code == two.status_code == 200
    assert one.json()["is_active"] is False
    assert two.json()["is_active"] is True
    assert two.json()["agents"]["architect"]["model"] == "m/arch"


async def test_get_unknown_profile_is_404_and_malformed_id_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/profiles/ghost")
    assert response.status_code == 404
    assert response.json() == {"detail": "Profile not found: ghost"}
    assert (await client.get("/api/profiles/Not-Lower")).status_code == 422


async def test_list_profiles_orders_by_name_and_flags_the_active_one(
    client: httpx.AsyncClient,
) -> None:
    for name in ("charlie", "alpha", "bravo"):
        await create(client, name)
    await client.post("/api/profiles/bravo/activate")
    response = await client.get("/api/profiles")
    assert response.status_code == 200
    listed = [(p["id"], p["is_active"]) for p in response.json()]
    assert listed == [("alpha", False), ("bravo", True), ("charlie", False)]


async def test_update_profile_changes_given_fields_and_replaces_agents(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    await create(client, "upd")
    await client.post("/api/profiles/upd/activate")
    new_agents = {"reviewer": {"driver": "api", "model": "m/rev", "options": {}}}
    response = await client.put(
        "/api/profiles/upd",
        json={"working_dir": "/moved", "agents": new_agents, "plan_output_dir": None},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["working_dir"] == "/moved"
    assert body["plan_output_dir"] == "docs/plans"
    assert body["agents"] == new_agents  # the whole map was replaced
    assert body["is_active"] is True
    stored = await ProfileRepository(services.db).get_profile("upd")
    assert stored is not None
    assert stored.working_dir == "/moved"
    assert set(stored.agents) == {"reviewer"}
    # An empty body changes nothing.
    unchanged = await client.put("/api/profiles/upd", json={})
    assert unchanged.status_code == 200
    assert unchanged.json() == body


async def test_update_unknown_profile_is_404_and_invalid_body_422(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put("/api/profiles/ghost", json={"working_dir": "/x"})
    assert response.status_code == 404
    assert response.json() == {"detail": "Profile not found: ghost"}
    await create(client, "strict")
    bad_driver = {"agents": {"developer": {"driver": "local", "model": "m"}}}
    assert (await client.put("/api/profiles/strict", json=bad_driver)).status_code == 422
    assert (await client.put("/api/profiles/strict", json={"id": "renamed"})).status_code == 422
    assert (await client.put("/api/profiles/strict", json={"tracker": "x"})).status_code == 422


async def test_delete_profile(client: httpx.AsyncClient, services: AppServices) -> None:
    await create(client, "gone")
    response = await client.delete("/api/profiles/gone")
    assert response.status_code == 204
    assert response.content == b""
    assert await ProfileRepository(services.db).get_profile("gone") is None
    missing = await client.delete("/api/profiles/gone")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Profile not found: gone"}


async def test_activate_profile_switches_the_active_one(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    await create(client, "first")
    await create(client, "second")
    assert (await client.post("/api/profiles/first/activate")).json()["is_active"] is True
    response = await client.post("/api/profiles/second/activate")
    assert response.status_code == 200
    assert response.json()["id"] == "second"
    assert response.json()["is_active"] is True
    active = await ProfileRepository(services.db).get_active_profile()
    assert active is not None and active.name == "second"
    listed = {p["id"]: p["is_active"] for p in (await client.get("/api/profiles")).json()}
    assert listed == {"first": False, "second": True}


async def test_activate_unknown_profile_is_404_and_keeps_the_active_one(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    await create(client, "kept")
    await client.post("/api/profiles/kept/activate")
    response = await client.post("/api/profiles/ghost/activate")
    assert response.status_code == 404
    assert response.json() == {"detail": "Profile not found: ghost"}
    active = await ProfileRepository(services.db).get_active_profile()
    assert active is not None and active.name == "kept"
