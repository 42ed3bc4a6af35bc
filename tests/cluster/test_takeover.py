"""A process dies or stalls while it owns runs: the others take over, the stale one is fenced."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from amelia.server.checkpoint import thread_id_for
from amelia.server.database import Database
from amelia.server.database.schema import workflow_log, workflows
from amelia.server.models.events import EventType
from tests.cluster.conftest import CLAIM_POLL_SECONDS, LEASE_SECONDS, set_max_concurrent
from tests.orchestrator.agent_server import AgentServer

WORKFLOWS = 3


async def wait_until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def owners(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    async with db.connection() as conn:
        rows = (
            await conn.execute(
                select(workflows.c.id, workflows.c.owner_id).where(workflows.c.id.in_(ids))
            )
        ).all()
    return {row.id: row.owner_id for row in rows}


async def statuses(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, str]:
    async with db.connection() as conn:
        rows = (
            await conn.execute(
                select(workflows.c.id, workflows.c.status).where(workflows.c.id.in_(ids))
            )
        ).all()
    return {row.id: row.status for row in rows}


async def event_counts(db: Database, workflow_id: uuid.UUID) -> dict[str, int]:
    async with db.connection() as conn:
        rows = (
            await conn.execute(
                select(workflow_log.c.event_type, func.count())
                .where(workflow_log.c.workflow_id == workflow_id)
                .group_by(workflow_log.c.event_type)
            )
        ).all()
    return {row[0]: row[1] for row in rows}


@pytest.mark.slow
async def test_sigkill_of_an_owner_others_finish_its_runs_from_their_checkpoints(
    cluster_factory: Any, prepared_db: Database, agents: AgentServer, tmp_path: Path
) -> None:
    db = prepared_db
    await set_max_concurrent(db, 10)
    cluster = await cluster_factory(3)
    victim = cluster.servers[0]
    victim_id = await cluster.process_id(victim)
    ids: list[uuid.UUID] = []
    async with httpx.AsyncClient(base_url=victim.url, timeout=60) as client:
        for n in range(WORKFLOWS):
            tree = tmp_path / f"tree-{n}"
            (tree / ".git").mkdir(parents=True)
            answer = await client.post(
                "/api/workflows", json={"issue_id": f"KILL-{n}", "worktree_path": str(tree)}
            )
            assert answer.status_code == 201, answer.text
            ids.append(uuid.UUID(answer.json()["id"]))

        async def all_blocked() -> bool:
            return set((await statuses(db, ids)).values()) == {"blocked"}

        await wait_until(all_blocked, 60, "the plans")
        agents.hold_developer.clear()  # the developer steps hang: the runs are mid-step
        for workflow_id in ids:
            assert (await client.post(f"/api/workflows/{workflow_id}/approve")).status_code == 200

    async def developers_started() -> bool:
        return agents.calls["developer"] == WORKFLOWS

    await wait_until(developers_started, 60, "the developer steps")
    assert set((await owners(db, ids)).values()) == {victim_id}

    os.kill(victim.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
    killed_at = time.monotonic()
    agents.hold_developer.set()
    taken: dict[uuid.UUID, float] = {}

    async def all_taken_over() -> bool:
        for workflow_id, owner in (await owners(db, ids)).items():
            if owner not in (None, victim_id) and workflow_id not in taken:
                taken[workflow_id] = time.monotonic() - killed_at
        done = {w for w, s in (await statuses(db, ids)).items() if s == "completed"}
        return len(set(taken) | done) == WORKFLOWS

    await wait_until(all_taken_over, LEASE_SECONDS + 30, "the take-over")

    async def all_completed() -> bool:
        return set((await statuses(db, ids)).values()) == {"completed"}

    await wait_until(all_completed, 120, "the runs to finish")
    # Within one lease (from the last renewal) plus one poll interval, plus scheduling slack.
    assert taken and max(taken.values()) <= LEASE_SECONDS + CLAIM_POLL_SECONDS + 1.5, taken
    # From the last checkpoint: plans were not made again; only the step in flight reran.
    assert agents.calls["architect"] == WORKFLOWS
    assert agents.calls["developer"] == 2 * WORKFLOWS
    assert agents.calls["reviewer"] == WORKFLOWS
    for workflow_id in ids:
        assert (await event_counts(db, workflow_id))[EventType.WORKFLOW_COMPLETED.value] == 1
    # The processes view of any survivor: the killed one is no longer alive.
    async with httpx.AsyncClient(base_url=cluster.servers[1].url, timeout=30) as client:
        health = (await client.get("/api/health")).json()
    processes = {p["id"]: p for p in health["processes"]}
    assert processes[str(victim_id)]["alive"] is False
    assert processes[str(victim_id)]["owned_workflows"] == []
    assert sorted(p["alive"] for p in processes.values()) == [False, True, True]


async def checkpoint_rows(db: Database, workflow_id: uuid.UUID) -> int:
    """Rows of the workflow's thread in the saver's checkpoint and pending-write tables."""
    statement = text(
        "SELECT (SELECT count(*) FROM checkpoints WHERE thread_id = :thread)"
        " + (SELECT count(*) FROM checkpoint_writes WHERE thread_id = :thread)"
    )
    async with db.connection() as conn:
        return int(await conn.scalar(statement, {"thread": thread_id_for(workflow_id)}) or 0)


@pytest.mark.slow
async def test_sigstop_past_the_lease_then_continue_late_writes_are_refused(
    cluster_factory: Any, prepared_db: Database, agents: AgentServer, tmp_path: Path
) -> None:
    db = prepared_db
    cluster = await cluster_factory(2)
    first = cluster.servers[0]
    ids = {await cluster.process_id(server): server for server in cluster.servers}
    tree = tmp_path / "tree"
    tree.mkdir()
    agents.hold_reviewer.clear()
    async with httpx.AsyncClient(base_url=first.url, timeout=60) as client:
        answer = await client.post(
            "/api/workflows/review",
            json={"diff_content": "diff --git a/x b/x\n+x RUN-abc\n", "worktree_path": str(tree)},
        )
    assert answer.status_code == 201, answer.text
    workflow_id = uuid.UUID(answer.json()["id"])

    async def stalled_is_reviewing() -> bool:
        return agents.reviewer_calls_waiting == 1

    await wait_until(stalled_is_reviewing, 60, "the first review call")
    # Either process may have claimed the new run first: the owner is the one to stall.
    stalled_id = (await owners(db, [workflow_id]))[workflow_id]
    stalled = ids.pop(stalled_id)
    [(other_id, _other)] = ids.items()

    os.kill(stalled.process.pid, signal.SIGSTOP)  # type: ignore[union-attr]
    try:

        async def taken_over() -> bool:
            owner = (await owners(db, [workflow_id]))[workflow_id]
            return owner == other_id and agents.reviewer_calls_waiting == 2

        await wait_until(taken_over, LEASE_SECONDS + 30, "the take-over")
        agents.hold_reviewer.set()  # both review calls are answered; the stalled one waits

        async def completed() -> bool:
            return (await statuses(db, [workflow_id]))[workflow_id] == "completed"

        await wait_until(completed, 60, "the new owner's result")
        before = await event_counts(db, workflow_id)
        rows_before = await checkpoint_rows(db, workflow_id)
    finally:
        os.kill(stalled.process.pid, signal.SIGCONT)  # type: ignore[union-attr]

    async def stopped_its_run() -> bool:
        # Whichever comes first after SIGCONT: a late write refused by its stale fence, or
        # the lease renewal finding the run gone (then the run stops before writing).
        log = stalled.log.read_text()
        return "is stale" in log or "no longer owns the run" in log

    await wait_until(stopped_its_run, 30, "the stalled process to stop its run")
    await asyncio.sleep(1.0)  # let anything else it might write arrive
    async with httpx.AsyncClient(base_url=stalled.url, timeout=10) as client:
        process = (await client.get("/api/health")).json()["process"]
    assert process["running"] == []
    # Nothing it did after waking landed: the new owner's result stands, recorded once.
    assert await event_counts(db, workflow_id) == before
    assert before[EventType.WORKFLOW_COMPLETED.value] == 1
    assert await checkpoint_rows(db, workflow_id) == rows_before
    assert (await statuses(db, [workflow_id]))[workflow_id] == "completed"
    assert agents.calls["reviewer"] == 2
