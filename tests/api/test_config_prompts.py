"""`/api/config` and `/api/prompts...` through the real app and database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from amelia.agents.prompts.defaults import PROMPT_DEFAULTS
from amelia.core.types import AgentConfig, Profile
from amelia.server.database.profile_repository import ProfileRepository
from amelia.server.database.prompt_repository import PromptRepository
from amelia.server.services import AppServices

ARCHITECT = "architect.plan"
REVIEWER = "reviewer.agentic"


@contextmanager
def counted_statements(services: AppServices) -> Iterator[list[str]]:
    """The SQL statements the app's engine runs inside the block."""
    seen: list[str] = []
    engine = services.db.engine.sync_engine

    def record(*args: Any) -> None:
        seen.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def store_profile(services: AppServices, name: str, agents: dict[str, AgentConfig]) -> None:
    repo = ProfileRepository(services.db)
    await repo.create_profile(Profile(name=name, working_dir=f"/w/{name}", agents=agents))
    await repo.set_active(name)


# --- config -----------------------------------------------------------------------------------


async def test_config_without_an_active_profile(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/config")
    assert response.status_code == 200
    assert response.json() == {
        "working_dir": "",
        "max_concurrent": 5,
        "active_profile": "",
        "active_profile_info": None,
    }


async def test_config_shows_the_active_profiles_developer(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    await store_profile(
        services,
        "main",
        {
            "architect": AgentConfig(driver="api", model="m/arch"),
            "developer": AgentConfig(driver="cli", model="opus", options={"command": ["c"]}),
        },
    )
    response = await client.get("/api/config")
    assert response.status_code == 200
    assert response.json() == {
        "working_dir": "/w/main",
        "max_concurrent": 5,
        "active_profile": "main",
        "active_profile_info": {"name": "main", "driver": "cli", "model": "opus"},
    }


async def test_config_falls_back_to_the_first_agent(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    await store_profile(
        services,
        "nodev",
        {
            "reviewer": AgentConfig(driver="api", model="m/rev"),
            "architect": AgentConfig(driver="cli", model="m/arch", options={"command": ["c"]}),
        },
    )
    info = (await client.get("/api/config")).json()["active_profile_info"]
    assert info == {"name": "nodev", "driver": "api", "model": "m/rev"}


async def test_config_reads_max_concurrent_live(client: httpx.AsyncClient) -> None:
    assert (await client.put("/api/settings", json={"max_concurrent": 17})).status_code == 200
    assert (await client.get("/api/config")).json()["max_concurrent"] == 17


# --- prompts ----------------------------------------------------------------------------------


async def test_list_prompts_without_custom_versions(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/prompts")
    assert response.status_code == 200
    prompts = {p["id"]: p for p in response.json()["prompts"]}
    assert set(prompts) == set(PROMPT_DEFAULTS)
    architect = prompts[ARCHITECT]
    assert architect["agent"] == PROMPT_DEFAULTS[ARCHITECT].agent
    assert architect["name"] == PROMPT_DEFAULTS[ARCHITECT].name
    assert architect["current_version_id"] is None
    assert architect["current_version_number"] is None


async def test_list_prompts_gives_version_numbers_in_two_statements(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    repo = PromptRepository(services.db)
    for prompt_id, count in ((ARCHITECT, 2), (REVIEWER, 1), ("evaluator.system", 3)):
        for n in range(count):
            latest = await repo.create_version(prompt_id, f"text {n}")
    with counted_statements(services) as statements:
        response = await client.get("/api/prompts")
    assert response.status_code == 200
    # All prompts, then all active versions: no per-prompt lookups.
    assert len(statements) == 2
    prompts = {p["id"]: p for p in response.json()["prompts"]}
    assert prompts[ARCHITECT]["current_version_number"] == 2
    assert prompts[REVIEWER]["current_version_number"] == 1
    assert prompts["evaluator.system"]["current_version_number"] == 3
    assert prompts["evaluator.system"]["current_version_id"] == str(latest.id)
    assert prompts["developer.system"]["current_version_number"] is None


async def test_prompt_detail_lists_versions_newest_first(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    repo = PromptRepository(services.db)
    first = await repo.create_version(ARCHITECT, "one", "first try")
    second = await repo.create_version(ARCHITECT, "two")
    response = await client.get(f"/api/prompts/{ARCHITECT}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == ARCHITECT
    assert body["current_version_id"] == str(second.id)
    assert [v["id"] for v in body["versions"]] == [str(second.id), str(first.id)]
    assert body["versions"][1]["change_note"] == "first try"
    assert body["versions"][1]["version_number"] == 1
    assert "content" not in body["versions"][0]
    assert body["versions"][0]["created_at"].startswith(str(second.created_at.year))


async def test_prompt_detail_unknown_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/prompts/nobody.nothing")
    assert response.status_code == 404
    assert "detail" in response.json()


async def test_versions_list(client: httpx.AsyncClient, services: AppServices) -> None:
    assert (await client.get(f"/api/prompts/{REVIEWER}/versions")).json() == {"versions": []}
    repo = PromptRepository(services.db)
    await repo.create_version(REVIEWER, "a")
    await repo.create_version(REVIEWER, "b")
    response = await client.get(f"/api/prompts/{REVIEWER}/versions")
    assert response.status_code == 200
    assert [v["version_number"] for v in response.json()["versions"]] == [2, 1]
    assert (await client.get("/api/prompts/nobody.nothing/versions")).status_code == 404


async def test_get_version(client: httpx.AsyncClient, services: AppServices) -> None:
    version = await PromptRepository(services.db).create_version(ARCHITECT, "plan text", "n")
    response = await client.get(f"/api/prompts/{ARCHITECT}/versions/{version.id}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(version.id)
    assert body["prompt_id"] == ARCHITECT
    assert body["version_number"] == 1
    assert body["content"] == "plan text"
    assert body["change_note"] == "n"
    assert body["created_at"]


async def test_get_version_errors(client: httpx.AsyncClient, services: AppServices) -> None:
    version = await PromptRepository(services.db).create_version(ARCHITECT, "plan text")
    other_prompt = await client.get(f"/api/prompts/{REVIEWER}/versions/{version.id}")
    assert other_prompt.status_code == 404
    unknown = await client.get(f"/api/prompts/{ARCHITECT}/versions/{uuid.uuid4()}")
    assert unknown.status_code == 404
    malformed = await client.get(f"/api/prompts/{ARCHITECT}/versions/not-a-uuid")
    assert malformed.status_code == 422


async def test_create_version_makes_it_active(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    first = await client.post(
        f"/api/prompts/{ARCHITECT}/versions", json={"content": "v1", "change_note": "start"}
    )
    assert first.status_code == 201, first.text
    second = await client.post(f"/api/prompts/{ARCHITECT}/versions", json={"content": "v2"})
    assert second.status_code == 201
    body = second.json()
    assert body["version_number"] == 2
    assert body["content"] == "v2"
    assert body["prompt_id"] == ARCHITECT
    assert body["change_note"] is None
    assert first.json()["change_note"] == "start"
    current = await PromptRepository(services.db).get_current_version(ARCHITECT)
    assert current is not None and str(current.id) == body["id"]


@pytest.mark.parametrize(
    "body",
    [{"content": "   \n\t"}, {"content": ""}, {}, {"content": "a\x00b"}, {"content": "x", "y": 1}],
)
async def test_create_version_invalid_body_is_422(
    client: httpx.AsyncClient, services: AppServices, body: dict[str, Any]
) -> None:
    response = await client.post(f"/api/prompts/{ARCHITECT}/versions", json=body)
    assert response.status_code == 422
    assert await PromptRepository(services.db).get_versions(ARCHITECT) == []


async def test_create_version_for_unknown_prompt_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/prompts/nobody.nothing/versions", json={"content": "x"})
    assert response.status_code == 404
    assert "detail" in response.json()


async def test_reset_returns_to_the_default_and_keeps_versions(
    client: httpx.AsyncClient, services: AppServices
) -> None:
    repo = PromptRepository(services.db)
    await repo.create_version(ARCHITECT, "custom")
    response = await client.post(f"/api/prompts/{ARCHITECT}/reset")
    assert response.status_code == 200
    assert ARCHITECT in response.json()["message"]
    assert await repo.get_current_version(ARCHITECT) is None
    assert len(await repo.get_versions(ARCHITECT)) == 1
    assert (await client.post("/api/prompts/nobody.nothing/reset")).status_code == 404


async def test_default_prompt(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/api/prompts/{REVIEWER}/default")
    assert response.status_code == 200
    default = PROMPT_DEFAULTS[REVIEWER]
    assert response.json() == {
        "prompt_id": REVIEWER,
        "content": default.content,
        "name": default.name,
        "description": default.description,
    }
    missing = await client.get("/api/prompts/nobody.nothing/default")
    assert missing.status_code == 404
