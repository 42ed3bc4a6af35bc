"""Claiming work across processes: each run once, `max_concurrent` over all of them."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from amelia.server.database import Database
from amelia.server.database.schema import workflow_log, workflows
from amelia.server.models.events import EventType
from tests.cluster.conftest import queue_review_workflows, set_max_concurrent
from tests.orchestrator.agent_server import AgentServer

MAX_CONCURRENT = 6
WORKFLOWS = 2000

_LIVE_RUNS = select(func.count(), func.array_agg(workflows.c.owner_id.distinct())).where(
    workflows.c.status == "in_progress",
    workflows.c.owner_id.is_not(None),
    workflows.c.lease_expires_at > func.clock_timestamp(),
)


async def sample_live_runs(db: Database, samples: list[int], owners: set[Any]) -> None:
    """Count the live runs of all processes, every 20 ms, until cancelled."""
    while True:
        async with db.connection() as conn:
            count, seen = (await conn.execute(_LIVE_RUNS)).one()
        samples.append(int(count))
        owners.update(owner for owner in seen or () if owner is not None)
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_two_thousand_queued_workflows_each_run_once_within_max_concurrent(
    cluster_factory: Any, prepared_db: Database, agents: AgentServer, tmp_path: Path
) -> None:
    db = prepared_db
    await set_max_concurrent(db, MAX_CONCURRENT)
    markers = await queue_review_workflows(db, tmp_path / "trees", WORKFLOWS)
    # A long lease: on two loaded cores a short one could expire under a busy process, and a
    # take-over (legitimate then) would run a step twice; take-overs have their own tests.
    cluster = await cluster_factory(3, AMELIA_LEASE_SECONDS="30", AMELIA_HEARTBEAT_SECONDS="3")
    agents.delay_seconds = 0.01  # runs overlap, so the limit is really exercised

    samples: list[int] = []
    owners: set[Any] = set()
    sampler = asyncio.create_task(sample_live_runs(db, samples, owners))
    ids = list(markers)
    thirds = [ids[n::3] for n in range(3)]
    try:
        async with httpx.AsyncClient(timeout=900) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{server.url}/api/workflows/start-batch",
                        json={"workflow_ids": [str(i) for i in chunk]},
                    )
                    for server, chunk in zip(cluster.servers, thirds, strict=True)
                )
            )
        for answer, chunk in zip(answers, thirds, strict=True):
            assert answer.status_code == 200, answer.text
            assert answer.json()["errors"] == {}
            assert len(answer.json()["started"]) == len(chunk)

        deadline = time.monotonic() + 900
        while True:
            async with db.connection() as conn:
                done = await conn.scalar(
                    select(func.count()).where(
                        workflows.c.status.in_(["completed", "failed", "cancelled"])
                    )
                )
            if done == WORKFLOWS:
                break
            assert time.monotonic() < deadline, f"only {done} of {WORKFLOWS} finished"
            await asyncio.sleep(0.5)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)

    async with db.connection() as conn:
        statuses = dict(
            (await conn.execute(select(workflows.c.status, func.count()).group_by("status"))).all()
        )
        completed_events = dict(
            (
                await conn.execute(
                    select(workflow_log.c.workflow_id, func.count())
                    .where(workflow_log.c.event_type == EventType.WORKFLOW_COMPLETED.value)
                    .group_by(workflow_log.c.workflow_id)
                )
            ).all()
        )
        fences = dict((await conn.execute(select(workflows.c.id, workflows.c.fence))).all())
    assert statuses == {"completed": WORKFLOWS}
    # Each workflow was claimed exactly once (every claim raises its fence by one) ...
    assert Counter(fences.values()) == {1: WORKFLOWS}
    assert completed_events == dict.fromkeys(ids, 1)
    # ... and called its reviewer once, unless its run retried a step after a transient
    # error (logged; the retry resumes the same run from its checkpoint).
    logs = cluster.logs()
    retried = {uuid.UUID(m) for m in re.findall(r"workflow ([0-9a-f-]{36}): .*; retry \d", logs)}
    assert len(retried) <= WORKFLOWS // 100, retried
    calls = {wid: agents.marker_calls[("reviewer", markers[wid])] for wid in ids}
    assert all(calls[wid] == 1 for wid in ids if wid not in retried), Counter(calls.values())
    assert all(1 <= calls[wid] <= 3 for wid in retried)
    # Never more than max_concurrent at once, seen from the database and from the agents.
    assert samples and max(samples) <= MAX_CONCURRENT
    assert max(samples) >= 2
    assert agents.max_in_flight <= MAX_CONCURRENT
    assert len(owners) >= 2, "the work was not shared between the processes"
    assert "deadlock" not in cluster.logs().lower()


@pytest.mark.slow
async def test_one_worktree_started_on_two_processes_at_once(
    cluster_factory: Any, prepared_db: Database, tmp_path: Path
) -> None:
    cluster = await cluster_factory(2)
    tree = tmp_path / "shared-tree"
    (tree / ".git").mkdir(parents=True)
    body = {"issue_id": "SAME-1", "worktree_path": str(tree), "start": True}
    async with httpx.AsyncClient(timeout=60) as client:
        answers = await asyncio.gather(
            *(client.post(f"{server.url}/api/workflows", json=body) for server in cluster.servers)
        )
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [201, 409], [a.text for a in answers]
    loser = next(a for a in answers if a.status_code == 409).json()
    winner = uuid.UUID(next(a for a in answers if a.status_code == 201).json()["id"])
    assert str(tree) in str(loser)
    async with prepared_db.connection() as conn:
        rows = (
            await conn.execute(select(workflows.c.id).where(workflows.c.worktree_path == str(tree)))
        ).all()
    assert [row.id for row in rows] == [winner]
