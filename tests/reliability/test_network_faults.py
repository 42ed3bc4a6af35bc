"""Network faults between the server and PostgreSQL, through a TCP proxy of our own.

- 2 s added to every round trip: the p95 latency stays under the pool timeout, no errors.
- A 60 s blackhole: requests fail fast with a 503 that says why (the first ones within the
  statement timeout plus one second, the rest at once), never hang; within 10 s of healing
  the server answers again, then every request succeeds.
- Every idle pooled connection reset: the next request of every kind succeeds, including a
  checkpoint write.
- A checkpoint write under a blackhole (plain, and fenced inside a run) fails within the
  statement timeout plus one second with a clear error, not a hang; its connection is
  discarded; the next write after healing succeeds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import empty_checkpoint

from amelia.server.checkpoint import CheckpointStore, setup_checkpoint_tables, thread_config
from amelia.server.checkpoint_saver import CheckpointTimeout, PooledPostgresSaver
from amelia.server.cluster.fencing import RunToken, running
from bench.reliability_report import ScenarioResult, record
from tests.reliability.conftest import PacedAgents
from tests.reliability.integrity import missing_profiles, wait_status
from tests.reliability.load import (
    Load,
    Outcome,
    Workload,
    failures,
    first_success_after,
    http,
    in_a_row,
    percentile,
    send,
)
from tests.reliability.owned_pg import OwnedPostgres, observer
from tests.reliability.server import (
    Server,
    git_dir,
    queue_workflow,
    use_agents,
    wait_pools_idle,
)
from tests.reliability.tcp_proxy import TcpProxy

STATEMENT_TIMEOUT_MS = 5000
POOL_TIMEOUT_S = 10.0
LATENCY_S = 2.0
BLACKHOLE_S = 60.0
RECOVERY_BOUND_S = 10.0
POOL_SIZE = 6
WARM_UP_S = 8.0


@asynccontextmanager
async def proxied_server(
    owned_pg: OwnedPostgres, database: str, directory: Path
) -> AsyncIterator[tuple[Server, TcpProxy]]:
    async with TcpProxy("127.0.0.1", owned_pg.port) as proxy:
        server = Server(
            owned_pg.url(database, port=proxy.port),
            directory,
            db_statement_timeout_ms=STATEMENT_TIMEOUT_MS,
            db_pool_timeout_seconds=POOL_TIMEOUT_S,
            db_pool_min_size=POOL_SIZE,
            db_pool_max_size=POOL_SIZE,
        )
        await server.start()
        try:
            yield server, proxy
        finally:
            proxy.heal()
            await server.stop()


async def warm_up(client: httpx.AsyncClient, workload: Workload) -> None:
    """Every pooled connection opened and every statement of the mix prepared on it."""
    load = Load(client, workload.requests(), workers=POOL_SIZE, pause=0).start()
    await asyncio.sleep(WARM_UP_S)
    outcomes = await load.stop()
    assert failures(outcomes) == []


async def test_two_seconds_of_added_latency(
    owned_pg: OwnedPostgres, scenario_db: str, agents: PacedAgents, tmp_path: Path
) -> None:
    async with proxied_server(owned_pg, scenario_db, tmp_path / "server") as (server, proxy):
        async with http(server.url, timeout=60) as client:
            await use_agents(client, agents, tmp_path)
            workload = Workload(await queue_workflow(client, tmp_path / "anchor", "ANCHOR"))
            await warm_up(client, workload)
            proxy.latency_s = LATENCY_S
            load = Load(client, workload.requests(), workers=2).start()
            await asyncio.sleep(30.0)
            outcomes = await load.stop()
            proxy.latency_s = 0.0
            verify = await in_a_row(client, workload.requests(), 100)
            pools = await wait_pools_idle(client)
        async with await observer(owned_pg.url(scenario_db)) as watcher:
            missing = await missing_profiles(watcher, workload.acknowledged)

    seconds = [o.seconds for o in outcomes]
    p95 = percentile(seconds, 0.95)
    checks = {
        "p95 under the pool timeout": p95 < POOL_TIMEOUT_S,
        "no errors": failures(outcomes) == [] and len(outcomes) >= 10,
        "100 requests in a row succeeded after": failures(verify) == [],
        "both pools idle after": pools == (0, 0),
        "acknowledged writes kept": missing == 0,
    }
    unmet = record(
        ScenarioResult(
            scenario="network_latency",
            fault=f"{LATENCY_S:.0f} s added to every round trip for 30 s",
            requests_sent=len(outcomes) + len(verify),
            failed_during_fault=len(failures(outcomes)),
            failed_after_healing=len(failures(verify)),
            recovery_s=None,
            rows_checked=len(workload.acknowledged),
            rows_lost=missing,
            details={
                "p50": f"{percentile(seconds, 0.5):.2f} s",
                "p95": f"{p95:.2f} s (pool timeout {POOL_TIMEOUT_S:.0f} s)",
                "max": f"{max(seconds):.2f} s",
            },
        ),
        checks,
    )
    assert not unmet, unmet


async def test_a_sixty_second_blackhole(
    owned_pg: OwnedPostgres, scenario_db: str, agents: PacedAgents, tmp_path: Path
) -> None:
    deadline_s = STATEMENT_TIMEOUT_MS / 1000 + 1
    async with proxied_server(owned_pg, scenario_db, tmp_path / "server") as (server, proxy):
        async with http(server.url, timeout=120) as client:
            await use_agents(client, agents, tmp_path)
            workload = Workload(await queue_workflow(client, tmp_path / "anchor", "ANCHOR"))
            await warm_up(client, workload)
            load = Load(client, workload.requests(), workers=4).start()
            await asyncio.sleep(1.0)
            proxy.blackhole()
            blackholed = time.monotonic()
            await asyncio.sleep(BLACKHOLE_S)
            proxy.heal()
            healed = time.monotonic()
            recovery = await first_success_after(
                client, workload.list_workflows, healed, RECOVERY_BOUND_S + 5
            )
            outcomes = await load.stop()
            verify = await in_a_row(client, workload.requests(), 100)
            pools = await wait_pools_idle(client)
        async with await observer(owned_pg.url(scenario_db)) as watcher:
            missing = await missing_profiles(watcher, workload.acknowledged)

    # Every request the blackhole touched: those in flight when it began (the first wave:
    # their statements never get an answer) and those sent during it.
    during = [o for o in outcomes if o.ended > blackholed + 0.1 and o.started < healed]
    first_wave = [o for o in during if o.started < blackholed + 0.1]
    later = [o for o in during if o.started >= blackholed + deadline_s]
    slowest = max(o.seconds for o in during)
    # Failing fast: the requests in flight when it began wait for their statement deadline,
    # then (once the outage is known) every request is answered at once.
    checks = {
        "every failure a 503 with its reason": all(
            o.status == 503 and reason_is_clear(o) for o in failures(during)
        ),
        "requests in flight got no answer (503)": failures(first_wave) == first_wave != [],
        "requests sent during it all 503": all(
            o.status == 503 for o in during if o.started > blackholed + 0.1
        ),
        f"none slower than the statement deadline ({deadline_s:.0f} s) + 2 s": slowest
        < deadline_s + 2,
        "fast once known (p95 < 0.5 s)": len(later) > 100
        and percentile([o.seconds for o in later], 0.95) < 0.5,
        f"recovered within {RECOVERY_BOUND_S:.0f} s of healing": recovery < RECOVERY_BOUND_S,
        "100 requests in a row succeeded after": failures(verify) == [],
        "both pools idle after": pools == (0, 0),
        "acknowledged writes kept": missing == 0,
    }
    unmet = record(
        ScenarioResult(
            scenario="network_blackhole",
            fault=f"no packet delivered either way for {BLACKHOLE_S:.0f} s",
            requests_sent=len(outcomes) + len(verify),
            failed_during_fault=len(failures(outcomes)),
            failed_after_healing=len(failures(verify)),
            recovery_s=round(recovery, 3),
            rows_checked=len(workload.acknowledged),
            rows_lost=missing,
            details={
                "requests during the blackhole": len(during),
                "in flight when it began": len(first_wave),
                "slowest failure": f"{slowest:.2f} s (statement deadline {deadline_s:.0f} s)",
                "p95 failure after the first wave": (
                    f"{percentile([o.seconds for o in later], 0.95) * 1000:.0f} ms"
                ),
            },
        ),
        checks,
    )
    assert not unmet, (unmet, [o for o in during if o.status != 503][:5])


def reason_is_clear(outcome: Outcome) -> bool:
    return outcome.error == "DATABASE_UNAVAILABLE"


async def test_resetting_every_idle_pooled_connection(
    owned_pg: OwnedPostgres, scenario_db: str, agents: PacedAgents, tmp_path: Path
) -> None:
    async with proxied_server(owned_pg, scenario_db, tmp_path / "server") as (server, proxy):
        async with http(server.url, timeout=60) as client:
            await use_agents(client, agents, tmp_path)
            workload = Workload(await queue_workflow(client, tmp_path / "anchor", "ANCHOR"))
            blocked_id = (
                await client.post(
                    "/api/workflows",
                    json={"issue_id": "RESET-1", "worktree_path": git_dir(tmp_path / "w")},
                )
            ).json()["id"]
            await wait_status(client, blocked_id, "blocked")
            await warm_up(client, workload)
            await wait_pools_idle(client)
            await asyncio.sleep(0.5)
            reset = proxy.reset_idle(0.3)
            # The very next request of every kind, one after another, then a checkpoint
            # write (approving writes the decision into the workflow's checkpoint).
            outcomes = [
                await send(client, kind, request, 0) for kind, request in workload.requests()
            ]
            approve = await client.post(f"/api/workflows/{blocked_id}/approve")
            outcomes.append(
                Outcome(
                    "approve",
                    0.0,
                    0.0,
                    approve.status_code,
                    None if approve.is_success else approve.text,
                )
            )
            done = await wait_status(client, blocked_id, "completed")
            verify = await in_a_row(client, workload.requests(), 100)
        async with await observer(owned_pg.url(scenario_db)) as watcher:
            missing = await missing_profiles(watcher, workload.acknowledged)

    checks = {
        "both pools' connections were reset": reset >= POOL_SIZE,
        "the next request of every kind succeeded": failures(outcomes) == [],
        "100 requests in a row succeeded after": failures(verify) == [],
        "acknowledged writes kept": missing == 0,
    }
    unmet = record(
        ScenarioResult(
            scenario="network_idle_reset",
            fault="every idle pooled connection reset (RST) by the network",
            requests_sent=len(outcomes) + len(verify),
            failed_during_fault=len(failures(outcomes)),
            failed_after_healing=len(failures(verify)),
            recovery_s=0.0,
            rows_checked=len(workload.acknowledged) + 1,
            rows_lost=missing + (done["status"] != "completed"),
            details={"connections reset": reset},
        ),
        checks,
    )
    assert not unmet, (unmet, failures(outcomes))


CHECKPOINT_STATEMENT_TIMEOUT_MS = 2000


async def put_checkpoint(saver: PooledPostgresSaver, thread_id: str, value: int) -> None:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"value": value}
    checkpoint["channel_versions"] = {"value": str(value)}
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    await saver.aput(config, checkpoint, {"source": "loop", "step": value}, {"value": str(value)})


async def latest_value(saver: PooledPostgresSaver, thread_id: str) -> object:
    loaded = await saver.aget_tuple(thread_config(thread_id))
    return None if loaded is None else loaded.checkpoint["channel_values"].get("value")


async def timed_write(
    saver: PooledPostgresSaver, thread_id: str, token: RunToken | None, bound: float
) -> tuple[float, BaseException | None]:
    """(seconds, what the write raised) for one write that must not outlive `bound`."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(bound):  # past this it hung: the finding itself
            if token is None:
                await put_checkpoint(saver, thread_id, 2)
            else:
                with running(token):
                    await put_checkpoint(saver, thread_id, 2)
    except Exception as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


async def test_a_checkpoint_write_under_a_blackhole_fails_within_its_deadline(
    owned_pg: OwnedPostgres, scenario_db: str
) -> None:
    deadline_s = CHECKPOINT_STATEMENT_TIMEOUT_MS / 1000 + 1
    direct = owned_pg.url(scenario_db)
    await setup_checkpoint_tables(direct)
    # A workflow row whose fence the run's writes carry (fenced writes check it first).
    workflow_id = uuid.uuid4()
    async with await observer(direct) as watcher:
        await watcher.execute(
            "INSERT INTO workflows (id, issue_id, worktree_path, fence) VALUES (%s, %s, %s, 7)",
            (workflow_id, "CKPT-DEADLINE", f"/tmp/{workflow_id}"),
        )
    token = RunToken(workflow_id=workflow_id, fence=7)
    plain, fenced = str(uuid.uuid4()), str(workflow_id)
    async with TcpProxy("127.0.0.1", owned_pg.port) as proxy:
        store = CheckpointStore(
            owned_pg.url(scenario_db, port=proxy.port),
            min_size=2,
            max_size=2,
            statement_timeout_ms=CHECKPOINT_STATEMENT_TIMEOUT_MS,
            application_name="reliability-checkpoint-deadline",
        )
        async with store:
            saver = store.saver
            await put_checkpoint(saver, plain, 1)
            with running(token):
                await put_checkpoint(saver, fenced, 1)
            bad_before = store.pool.get_stats().get("returns_bad", 0)

            proxy.blackhole()
            # Both pooled connections are idle and look fine: each write gets one at once
            # and sends its statement into the blackhole.
            results = await asyncio.gather(
                timed_write(saver, plain, None, deadline_s + 5),
                timed_write(saver, fenced, token, deadline_s + 5),
            )
            discarded = store.pool.get_stats().get("returns_bad", 0) - bad_before
            proxy.heal()

            # The next writes after healing succeed, on connections the pool opened anew.
            await put_checkpoint(saver, plain, 3)
            with running(token):
                await put_checkpoint(saver, fenced, 3)
            values = (await latest_value(saver, plain), await latest_value(saver, fenced))

    for seconds, error in results:
        assert isinstance(error, CheckpointTimeout), (seconds, repr(error))
        assert "did not answer" in str(error) and f"{deadline_s:g} s" in str(error)
        assert deadline_s - 0.5 < seconds < deadline_s + 1, seconds
    assert discarded == 2, "each timed-out connection is discarded, not pooled again"
    assert values == (3, 3)
