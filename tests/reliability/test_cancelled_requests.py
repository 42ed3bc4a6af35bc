"""500 requests cancelled at random points: nothing checked out, idle in transaction, locked.

The app runs in this process (real lifespan, real PostgreSQL) behind httpx's ASGI transport,
so cancelling the client's task cancels the request's handler wherever it is: waiting for a
pooled connection, between the statements of a transaction, inside a checkpoint write.
Afterwards both pools report nothing checked out, and `pg_stat_activity` and `pg_locks`
show no backend of ours idle in a transaction and no lock held.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from amelia.server.services import AppServices
from bench.reliability_report import ScenarioResult, record
from tests.reliability.conftest import PacedAgents
from tests.reliability.integrity import missing_profiles, wait_status
from tests.reliability.load import Request, Workload, failures, in_a_row
from tests.reliability.owned_pg import OwnedPostgres, observer
from tests.reliability.server import (
    git_dir,
    idle_in_transaction,
    in_process_app,
    locks_held,
    queue_workflow,
    use_agents,
)

REQUESTS = 500
AT_ONCE = 10
# Each request is cancelled at a random moment within this many seconds of its start. Most
# requests take longer here, so most are cut off mid-way (at 40 ms a fast machine finished
# well over half of them first, and the scenario then tested too little).
CUT_WITHIN_S = 0.02
BLOCKED_WORKFLOWS = 12


@pytest.fixture
async def app_client(
    owned_pg: OwnedPostgres, scenario_db: str, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    name = f"amelia-cancel-{uuid.uuid4().hex[:6]}"
    async with in_process_app(
        owned_pg.url(scenario_db), tmp_path / "home", db_application_name=name
    ) as pair:
        yield pair


def checked_out(services: AppServices) -> tuple[int, int]:
    stats = services.checkpoints.pool.get_stats()
    checkpoint = int(stats.get("pool_size", 0)) - int(stats.get("pool_available", 0))
    return int(services.db.pool_status()["checked_out"]), checkpoint


async def settle(services: AppServices, app_name: str, url: str) -> dict[str, Any]:
    """Poll (up to 10 s) until nothing is checked out, idle in transaction or locked."""
    async with await observer(url) as watcher:
        state: dict[str, Any] = {}
        for _ in range(100):
            state = {
                "checked_out": checked_out(services),
                "idle_in_transaction": await idle_in_transaction(watcher, app_name),
                "locks": [
                    row
                    for row in await locks_held(watcher, app_name)
                    if row["locktype"] != "advisory"
                ],
            }
            quiet = not state["idle_in_transaction"] and not state["locks"]
            if state["checked_out"] == (0, 0) and quiet:
                return state
            await asyncio.sleep(0.1)
    return state


async def test_five_hundred_requests_cancelled_at_random_points(
    app_client: tuple[FastAPI, httpx.AsyncClient],
    owned_pg: OwnedPostgres,
    scenario_db: str,
    agents: PacedAgents,
    tmp_path: Path,
) -> None:
    app, client = app_client
    services: AppServices = app.state.services
    app_name = services.config.db_application_name
    await use_agents(client, agents, tmp_path)
    workload = Workload(await queue_workflow(client, tmp_path / "anchor", "ANCHOR"))
    blocked = []
    for n in range(BLOCKED_WORKFLOWS):
        response = await client.post(
            "/api/workflows",
            json={"issue_id": f"CANCEL-{n}", "worktree_path": git_dir(tmp_path / f"w{n}")},
        )
        assert response.status_code == 201, response.text
        blocked.append(response.json()["id"])
    for workflow_id in blocked:
        await wait_status(client, workflow_id, "blocked")

    async def activate(http: httpx.AsyncClient, n: int) -> httpx.Response:
        return await http.post("/api/profiles/rel/activate")

    async def put_settings(http: httpx.AsyncClient, n: int) -> httpx.Response:
        return await http.put("/api/settings", json={"max_concurrent": 20 + n % 2})

    async def queue(http: httpx.AsyncClient, n: int) -> httpx.Response:
        return await http.post(
            "/api/workflows",
            json={
                "issue_id": f"Q-{n}",
                "worktree_path": str(tmp_path / "anchor"),
                "start": False,
            },
        )

    async def approve(http: httpx.AsyncClient, n: int) -> httpx.Response:
        # Writes the decision into the checkpoint: the checkpointer's pool is cancelled too.
        return await http.post(f"/api/workflows/{blocked[n % len(blocked)]}/approve")

    mix: list[tuple[str, Request]] = [
        *workload.requests(),
        ("activate", activate),
        ("settings-put", put_settings),
        ("queue", queue),
        ("approve", approve),
    ]
    rng = random.Random(8)
    cancelled = completed = 0

    async def one(n: int) -> None:
        nonlocal cancelled, completed
        _, request = mix[n % len(mix)]
        task = asyncio.create_task(request(client, n))
        await asyncio.sleep(rng.uniform(0, CUT_WITHIN_S))
        if task.done():
            completed += 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    for start in range(0, REQUESTS, AT_ONCE):
        await asyncio.gather(*(one(n) for n in range(start, min(start + AT_ONCE, REQUESTS))))
    cancelled = REQUESTS - completed
    state = await settle(services, app_name, owned_pg.url(scenario_db))
    verify = await in_a_row(client, workload.requests(), 100)
    async with await observer(owned_pg.url(scenario_db)) as watcher:
        missing = await missing_profiles(watcher, workload.acknowledged)

    leaked = sum(state["checked_out"]) + len(state["idle_in_transaction"]) + len(state["locks"])
    checks = {
        "most requests were cut off": cancelled > REQUESTS / 2,
        "nothing checked out": state["checked_out"] == (0, 0),
        "no backend idle in transaction": state["idle_in_transaction"] == [],
        "no lock held": state["locks"] == [],
        "100 requests in a row succeeded after": failures(verify) == [],
        "acknowledged writes kept": missing == 0,
    }
    unmet = record(
        ScenarioResult(
            scenario="cancelled_requests",
            fault=f"{REQUESTS} requests cancelled at random points "
            f"(0-{CUT_WITHIN_S * 1000:.0f} ms in)",
            requests_sent=REQUESTS + len(verify),
            failed_during_fault=cancelled,
            failed_after_healing=len(failures(verify)),
            recovery_s=None,
            rows_checked=len(workload.acknowledged),
            rows_lost=missing,
            details={
                "cancelled before finishing": cancelled,
                "connections, transactions or locks left behind": leaked,
            },
        ),
        checks,
    )
    assert not unmet, (unmet, state)
