"""Several real `amelia serve` processes on one database, with a local agent server.

Leases are short here (3 s, renewed every second, claims polled every half second) so that
take-overs happen within a test; pools are small so three servers fit in `max_connections`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from amelia.server.database import Database
from amelia.server.database.profile_repository import ProfileRepository
from amelia.server.database.repository import WorkflowRepository
from amelia.server.database.settings_repository import SettingsRepository
from amelia.server.models.state import ServerExecutionState, WorkflowStatus, WorkflowType
from tests.e2e.serve_process import ServeProcess
from tests.orchestrator.agent_server import AgentServer
from tests.orchestrator.conftest import make_profile

LEASE_SECONDS = 3.0
HEARTBEAT_SECONDS = 1.0
CLAIM_POLL_SECONDS = 0.5


class Cluster:
    """`amelia serve` processes sharing `database_url`; started and stopped together."""

    def __init__(self, database_url: str, log_dir: Path, size: int, **env: str) -> None:
        base = {
            "AMELIA_DATABASE_URL": database_url,
            "AMELIA_LEASE_SECONDS": str(LEASE_SECONDS),
            "AMELIA_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
            "AMELIA_CLAIM_POLL_SECONDS": str(CLAIM_POLL_SECONDS),
            "AMELIA_DB_POOL_MIN_SIZE": "1",
            "AMELIA_DB_POOL_MAX_SIZE": "6",
            "AMELIA_CHECKPOINT_POOL_MIN_SIZE": "1",
            "AMELIA_CHECKPOINT_POOL_MAX_SIZE": "4",
            "AMELIA_HOME": str(log_dir / "home"),
            **env,
        }
        self.servers = [ServeProcess(base, log=log_dir / f"serve-{n}.log") for n in range(size)]

    async def start(self) -> Cluster:
        await asyncio.gather(*(asyncio.to_thread(s.start, 90) for s in self.servers))
        return self

    def stop(self) -> None:
        for server in self.servers:
            if server.process is not None and server.process.poll() is None:
                server.stop()

    def logs(self) -> str:
        return "\n".join(s.log.read_text(errors="replace") for s in self.servers if s.log.exists())

    async def process_id(self, server: ServeProcess) -> uuid.UUID:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            body = (await client.get("/api/health")).json()
        return uuid.UUID(body["process"]["id"])


@pytest.fixture
def agents() -> Iterator[AgentServer]:
    server = AgentServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def prepared_db(db: Database, agents: AgentServer) -> Database:
    """The database with an active profile whose agents are the local agent server."""
    profiles = ProfileRepository(db)
    await profiles.create_profile(make_profile("cluster", agents.url))
    await profiles.set_active("cluster")
    return db


async def set_max_concurrent(db: Database, value: int) -> None:
    await SettingsRepository(db).update_server_settings({"max_concurrent": value})


async def queue_review_workflows(db: Database, root: Path, count: int) -> dict[uuid.UUID, str]:
    """`count` queued review workflows, each on its own worktree; {id: its marker}."""
    repository = WorkflowRepository(db)
    markers: dict[uuid.UUID, str] = {}
    for n in range(count):
        workflow_id = uuid.uuid4()
        marker = f"RUN-{workflow_id.hex}"
        tree = root / f"tree-{n}"
        tree.mkdir(parents=True)
        await repository.create(
            ServerExecutionState(
                id=workflow_id,
                issue_id="LOCAL-REVIEW",
                worktree_path=str(tree),
                workflow_type=WorkflowType.REVIEW,
                profile_id="cluster",
                issue_cache={
                    "id": "LOCAL-REVIEW",
                    "title": "Local review",
                    "description": f"diff --git a/x b/x\n+change {marker}\n",
                },
                workflow_status=WorkflowStatus.PENDING,
            )
        )
        markers[workflow_id] = marker
    return markers


@pytest.fixture
async def cluster_factory(
    database_url: str, prepared_db: Database, tmp_path: Path
) -> AsyncIterator[Any]:
    clusters: list[Cluster] = []

    async def make(size: int, **env: str) -> Cluster:
        cluster = Cluster(database_url, tmp_path, size, **env)
        clusters.append(cluster)
        return await cluster.start()

    try:
        yield make
    finally:
        for cluster in clusters:
            await asyncio.to_thread(cluster.stop)
