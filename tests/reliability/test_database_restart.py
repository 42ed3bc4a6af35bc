"""PostgreSQL restarts under a running server: ten workflows mid-run, requests throughout.

The server is not restarted. Both pools must recover on their own; at most the first request
on each dead pooled connection may fail (with a 503, never a 500 or a hang); every workflow
finishes or is left recoverable (failed, with a checkpoint it resumes from); every
acknowledged write is kept and nothing is half-written: each workflow's events are numbered
1..N without gaps and match a run without faults, every agent call has its usage row, and
every checkpoint loads whole.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bench.reliability_report import ScenarioResult, record
from tests.reliability.conftest import PacedAgents
from tests.reliability.integrity import (
    event_sequence_gaps,
    event_types,
    missing_profiles,
    unloadable_checkpoints,
    usage_rows,
    wait_status,
    wait_terminal,
)
from tests.reliability.load import Load, Workload, failures, http, in_a_row
from tests.reliability.owned_pg import OwnedPostgres, reconnect
from tests.reliability.server import (
    Server,
    git_dir,
    queue_workflow,
    use_agents,
    wait_pools_idle,
)

WORKFLOWS = 10
DB_POOL_MAX = 6  # the Server defaults (tests/reliability/server.py)
CHECKPOINT_POOL_MAX = 4
POOL_TIMEOUT_S = 10.0


async def start_workflow(client: httpx.AsyncClient, worktree: Path, issue: str) -> str:
    response = await client.post(
        "/api/workflows", json={"issue_id": issue, "worktree_path": git_dir(worktree)}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def run_to_completion(client: httpx.AsyncClient, worktree: Path, issue: str) -> str:
    workflow_id = await start_workflow(client, worktree, issue)
    await wait_status(client, workflow_id, "blocked")
    assert (await client.post(f"/api/workflows/{workflow_id}/approve")).status_code == 200
    await wait_status(client, workflow_id, "completed")
    return workflow_id


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_ten_workflows_and_both_pools_survive_a_database_restart(
    owned_pg: OwnedPostgres, scenario_db: str, agents: PacedAgents, tmp_path: Path, mode: str
) -> None:
    database_url = owned_pg.url(scenario_db)
    server = await Server(database_url, tmp_path / "server").start()
    try:
        async with http(server.url, timeout=60) as client:
            await use_agents(client, agents, tmp_path)
            # A run without faults: what every workflow's event log must look like.
            control = await run_to_completion(client, tmp_path / "control", "CONTROL")
            anchor = await queue_workflow(client, tmp_path / "anchor", "ANCHOR")
            ids = [
                await start_workflow(client, tmp_path / f"w{n}", f"RESTART-{n}")
                for n in range(WORKFLOWS)
            ]
            for workflow_id in ids:
                await wait_status(client, workflow_id, "blocked")
            for workflow_id in ids:
                approved = await client.post(f"/api/workflows/{workflow_id}/approve")
                assert approved.status_code == 200, approved.text

            workload = Workload(anchor)
            load = Load(client, workload.requests()).start()
            await asyncio.sleep(1.0)  # into the developer/reviewer loops
            running = [(await client.get(f"/api/workflows/{w}")).json()["status"] for w in ids]
            _, accepting = await owned_pg.restart(down_for=2.0, mode=mode)
            await asyncio.sleep(4.0)
            outcomes = await load.stop()

            final = await wait_terminal(client, ids, timeout=180)
            resumed = [w for w, body in final.items() if body["status"] == "failed"]
            for workflow_id in resumed:  # recoverable: resume from the last checkpoint
                response = await client.post(f"/api/workflows/{workflow_id}/resume")
                assert response.status_code == 200, response.text
            final.update(await wait_terminal(client, resumed, timeout=180))
            verify = await in_a_row(client, workload.requests(), 100)
            pools = await wait_pools_idle(client)

        observer = await reconnect(owned_pg.url(scenario_db))
        async with observer:
            reference = await event_types(observer, control)
            # Events a run without faults records and this one lacks (a resumed run records
            # more: its failure and restart, and the step it repeats).
            lost_events = 0
            for workflow_id in ids:
                stored = await event_types(observer, workflow_id)
                lost_events += sum((Counter(reference) - Counter(stored)).values())
            gaps = await event_sequence_gaps(observer, [*ids, control])
            missing = await missing_profiles(observer, workload.acknowledged)
            usage = await usage_rows(observer, [*ids, control])
        unloadable = await unloadable_checkpoints(database_url, ids)
    finally:
        await server.stop()

    calls = sum(agents.calls.values())
    after = [o for o in outcomes if o.started >= accepting]
    recovered_at = min((o.ended for o in after if o.ok), default=accepting)
    checks = {
        "the restart hit workflows mid-run": running.count("in_progress") >= 5,
        "every workflow completed (resumed if it had failed)": all(
            body["status"] == "completed" for body in final.values()
        ),
        "only requests on dead pooled connections failed": len(failures(outcomes))
        <= DB_POOL_MAX + CHECKPOINT_POOL_MAX,
        "failures were 503s": all(o.status == 503 for o in failures(outcomes)),
        "no request waited past the pool timeout": max(o.seconds for o in outcomes)
        < POOL_TIMEOUT_S + 2,
        "100 requests in a row succeeded after": failures(verify) == [],
        "both pools idle after": pools == (0, 0),
        "acknowledged writes kept": missing == 0,
        "events numbered without gaps": gaps == {},
        "no event lost": lost_events == 0,
        "a usage row per agent call": usage == calls,
        "every checkpoint loads": unloadable == [],
    }
    unmet = record(
        ScenarioResult(
            scenario=f"database_restart_{mode}",
            fault=f"PostgreSQL stopped ({mode}) for 2 s under 10 running workflows",
            requests_sent=len(outcomes) + len(verify),
            failed_during_fault=len(failures(outcomes)),
            failed_after_healing=len(failures(verify)),
            recovery_s=round(max(0.0, recovered_at - accepting), 3),
            rows_checked=len(workload.acknowledged) + (WORKFLOWS + 1) * len(reference) + calls,
            rows_lost=missing + lost_events + (calls - usage),
            details={
                "workflows running at the restart": running.count("in_progress"),
                "completed without resume": WORKFLOWS - len(resumed),
                "resumed after failing": len(resumed),
                "slowest request": f"{max(o.seconds for o in outcomes):.2f} s",
            },
        ),
        checks,
    )
    assert not unmet, (unmet, failures(outcomes)[:10], final)


async def test_the_next_checkpoint_write_after_a_restart_succeeds(
    owned_pg: OwnedPostgres, scenario_db: str, agents: PacedAgents, tmp_path: Path
) -> None:
    server = await Server(owned_pg.url(scenario_db), tmp_path / "server").start()
    try:
        async with http(server.url, timeout=60) as client:
            await use_agents(client, agents, tmp_path)
            blocked = await start_workflow(client, tmp_path / "w", "CKPT-1")
            await wait_status(client, blocked, "blocked")
            checkpoint_pool = (await client.get("/api/health")).json()["checkpoint_pool"]
            assert checkpoint_pool["size"] >= 1  # pooled connections the restart will kill
            await owned_pg.restart(down_for=1.0)
            # Approving writes the decision into the checkpoint first: the first write
            # through the checkpointer's pool after the restart, on its dead connections.
            approved = await client.post(f"/api/workflows/{blocked}/approve")
            assert approved.status_code == 200, approved.text
            done = await wait_status(client, blocked, "completed")
            assert done["failure_reason"] is None
            # Nothing held on to (a background read may be in flight at any one instant).
            assert await wait_pools_idle(client) == (0, 0)
    finally:
        await server.stop()
