"""Commands reach a run wherever it runs: replan, approve, reject and cancel on any process."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from amelia.server.database import Database
from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.events import EventType
from tests.cluster.conftest import HEARTBEAT_SECONDS
from tests.cluster.test_takeover import owners, statuses, wait_until
from tests.orchestrator.agent_server import AgentServer


async def running_on(server: Any) -> list[str]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        running: list[str] = (await client.get("/api/health")).json()["process"]["running"]
    return running


@pytest.mark.slow
async def test_commands_sent_to_either_process_act_on_the_run(
    cluster_factory: Any, prepared_db: Database, agents: AgentServer, tmp_path: Path
) -> None:
    db = prepared_db
    cluster = await cluster_factory(2)
    a, b = cluster.servers
    a_id, b_id = await cluster.process_id(a), await cluster.process_id(b)
    tree = tmp_path / "tree"
    (tree / ".git").mkdir(parents=True)
    ca = httpx.AsyncClient(base_url=a.url, timeout=60)
    cb = httpx.AsyncClient(base_url=b.url, timeout=60)
    async with ca, cb:
        created = await ca.post(
            "/api/workflows", json={"issue_id": "CMD-1", "worktree_path": str(tree)}
        )
        assert created.status_code == 201, created.text
        wid = uuid.UUID(created.json()["id"])

        async def blocked() -> bool:
            return (await statuses(db, [wid]))[wid] == "blocked"

        await wait_until(blocked, 60, "the first plan")
        # Replan through B: B plans again (it claimed the run with the status change).
        assert (await cb.post(f"/api/workflows/{wid}/replan")).status_code == 200
        await wait_until(blocked, 60, "the second plan")
        assert agents.calls["architect"] == 2

        # Approve through A: the run continues on A, whose developer step then hangs.
        agents.hold_developer.clear()
        assert (await ca.post(f"/api/workflows/{wid}/approve")).status_code == 200

        async def developing() -> bool:
            return agents.calls["developer"] == 1

        await wait_until(developing, 60, "the developer step")
        assert (await owners(db, [wid]))[wid] == a_id
        assert await running_on(a) == [str(wid)]

        # Cancel through B: A, the owner, stops the run.
        sent = time.monotonic()
        assert (await cb.post(f"/api/workflows/{wid}/cancel")).status_code == 200

        async def stopped_on_a() -> bool:
            return await running_on(a) == []

        await wait_until(stopped_on_a, 10, "the owner to stop the run")
        assert time.monotonic() - sent < HEARTBEAT_SECONDS + 2
        agents.hold_developer.set()
        events = await WorkflowRepository(db).get_recent_events(wid, 1000)
        assert events[-1].event_type == EventType.WORKFLOW_CANCELLED
        assert (await statuses(db, [wid]))[wid] == "cancelled"
        assert (await owners(db, [wid]))[wid] is None

        # Reject through B a plan that A made.
        second = tmp_path / "second"
        (second / ".git").mkdir(parents=True)
        created = await ca.post(
            "/api/workflows", json={"issue_id": "CMD-2", "worktree_path": str(second)}
        )
        wid2 = uuid.UUID(created.json()["id"])

        async def blocked2() -> bool:
            return (await statuses(db, [wid2]))[wid2] == "blocked"

        await wait_until(blocked2, 60, "the plan of the second workflow")
        answer = await cb.post(f"/api/workflows/{wid2}/reject", json={"feedback": "no"})
        assert answer.status_code == 200, answer.text
        assert (await statuses(db, [wid2]))[wid2] == "failed"
        # Rejecting again through A: the state moved on, a clear 422.
        again = await ca.post(f"/api/workflows/{wid2}/reject", json={"feedback": "no"})
        assert again.status_code == 422
    assert b_id != a_id
    await_events = await WorkflowRepository(db).get_recent_events(wid, 1000)
    assert [e.event_type for e in await_events].count(EventType.WORKFLOW_CANCELLED) == 1
