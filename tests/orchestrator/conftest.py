"""Fixtures for orchestrator tests: a scripted agent server, a real saver, a real service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from amelia.core.types import AgentConfig, Profile
from amelia.server.checkpoint import CheckpointStore, setup_checkpoint_tables
from amelia.server.database import Database
from amelia.server.database.profile_repository import ProfileRepository
from amelia.server.events.bus import EventBus
from amelia.server.models.events import WorkflowEvent
from amelia.server.orchestrator.service import OrchestratorService
from tests.orchestrator.agent_server import AgentServer

AGENTS = ("architect", "developer", "reviewer", "evaluator", "brainstormer")


@pytest.fixture
def agents() -> Iterator[AgentServer]:
    server = AgentServer().start()
    try:
        yield server
    finally:
        server.stop()


def make_profile(name: str, base_url: str, working_dir: str = "/tmp") -> Profile:
    options = {"base_url": base_url, "read_timeout": 60, "max_retries": 0}
    return Profile(
        name=name,
        working_dir=working_dir,
        agents={
            agent: AgentConfig(driver="api", model="test/model", options=options)
            for agent in AGENTS
        },
    )


@pytest.fixture
def worktree(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    (path / ".git").mkdir(parents=True)
    return path


@pytest.fixture
async def checkpoints(database_url: str) -> AsyncIterator[CheckpointStore]:
    await setup_checkpoint_tables(database_url)
    store = CheckpointStore(database_url, min_size=1, max_size=4)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def orchestrator(
    db: Database, checkpoints: CheckpointStore, agents: AgentServer
) -> AsyncIterator[OrchestratorService]:
    profiles = ProfileRepository(db)
    await profiles.create_profile(make_profile("test", agents.url))
    await profiles.set_active("test")
    service = OrchestratorService(db, checkpoints.saver, EventBus())
    try:
        yield service
    finally:
        await service.cancel_all_workflows(timeout=5)


@pytest.fixture
def events(orchestrator: OrchestratorService) -> list[WorkflowEvent]:
    seen: list[WorkflowEvent] = []
    orchestrator._bus.subscribe(seen.append)
    return seen
