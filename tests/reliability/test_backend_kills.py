"""Every backend of the server terminated every 2 s for 60 s, under load.

`pg_terminate_backend` on every connection the server holds (both pools, found by their
`application_name`), while clients send the standard mix and review workflows run. No
request may hang past the statement timeout plus one second; afterwards 200 requests in a
row succeed, both pools report nothing checked out, and every acknowledged write is there.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from bench.reliability_report import ScenarioResult, record
from tests.reliability.conftest import PacedAgents
from tests.reliability.integrity import event_sequence_gaps, missing_profiles, wait_terminal
from tests.reliability.load import Load, Workload, failures, http, in_a_row, percentile
from tests.reliability.owned_pg import OwnedPostgres, observer
from tests.reliability.server import (
    Server,
    queue_workflow,
    terminate_ours,
    use_agents,
    wait_pools_idle,
)

KILL_EVERY_S = 2.0
KILL_FOR_S = 60.0
STATEMENT_TIMEOUT_MS = 5000
DIFF = "--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-print('hi')\n+print('hello')\n"


async def start_reviews(
    client: httpx.AsyncClient, worktree: Path, until: float, started: list[str]
) -> None:
    """A review workflow (no approval step) every 3 s, so the checkpointer stays busy."""
    while time.monotonic() < until:
        try:
            response = await client.post(
                "/api/workflows/review",
                json={"diff_content": DIFF, "worktree_path": str(worktree)},
            )
        except httpx.HTTPError:
            response = None
        if response is not None and response.status_code == 201:
            started.append(str(response.json()["id"]))
        await asyncio.sleep(3.0)


async def test_terminating_every_backend_every_two_seconds_for_a_minute(
    owned_pg: OwnedPostgres, scenario_db: str, agents: PacedAgents, tmp_path: Path
) -> None:
    server = await Server(
        owned_pg.url(scenario_db), tmp_path / "server", db_statement_timeout_ms=STATEMENT_TIMEOUT_MS
    ).start()
    deadline_s = STATEMENT_TIMEOUT_MS / 1000 + 1
    try:
        async with (
            http(server.url, timeout=120) as client,
            await observer(owned_pg.url(scenario_db)) as watcher,
        ):
            await use_agents(client, agents, tmp_path)
            anchor = await queue_workflow(client, tmp_path / "anchor", "ANCHOR")
            workload = Workload(anchor)
            reviews: list[str] = []
            (tmp_path / "reviews").mkdir()
            load = Load(client, workload.requests(), workers=4).start()
            started = time.monotonic()
            reviewer = asyncio.create_task(
                start_reviews(client, tmp_path / "reviews", started + KILL_FOR_S, reviews)
            )
            kills = []
            while time.monotonic() < started + KILL_FOR_S:
                kills.append(await terminate_ours(watcher, server.application_name))
                await asyncio.sleep(KILL_EVERY_S)
            healed = time.monotonic()
            await reviewer
            outcomes = await load.stop()

            final = await wait_terminal(client, reviews, timeout=120)
            resumed = [w for w, body in final.items() if body["status"] == "failed"]
            for workflow_id in resumed:
                response = await client.post(f"/api/workflows/{workflow_id}/resume")
                assert response.status_code == 200, (final[workflow_id], response.text)
            final.update(await wait_terminal(client, resumed, timeout=120))
            verify = await in_a_row(client, workload.requests(), 200)
            pools = await wait_pools_idle(client)
            missing = await missing_profiles(watcher, workload.acknowledged)
            gaps = await event_sequence_gaps(watcher, reviews)
    finally:
        await server.stop()

    after = [o for o in outcomes if o.started >= healed]
    slowest = max(o.seconds for o in outcomes)
    checks = {
        "backends killed every round": sum(kills) >= KILL_FOR_S / KILL_EVERY_S,
        f"no request past the statement timeout + 1 s ({deadline_s:.0f} s)": slowest < deadline_s,
        "failures were 503s": all(o.status == 503 for o in failures(outcomes)),
        "200 requests in a row succeeded after": failures(verify) == [],
        "both pools idle after": pools == (0, 0),
        "acknowledged writes kept": missing == 0,
        "events numbered without gaps": gaps == {},
        "every review workflow completed": all(
            body["status"] == "completed" for body in final.values()
        ),
    }
    unmet = record(
        ScenarioResult(
            scenario="backends_killed",
            fault=f"pg_terminate_backend on all our backends every 2 s for {KILL_FOR_S:.0f} s",
            requests_sent=len(outcomes) + len(verify),
            failed_during_fault=len(failures(outcomes)),
            failed_after_healing=len(failures(verify)),
            recovery_s=round(
                max(0.0, min((o.ended for o in after if o.ok), default=healed) - healed), 3
            ),
            rows_checked=len(workload.acknowledged) + len(reviews),
            rows_lost=missing + len(gaps),
            details={
                "backends terminated": sum(kills),
                "review workflows": len(reviews),
                "resumed after failing": len(resumed),
                "slowest request": f"{slowest:.2f} s (deadline {deadline_s:.0f} s)",
                "p99 latency": f"{percentile([o.seconds for o in outcomes], 0.99):.3f} s",
            },
        ),
        checks,
    )
    assert not unmet, (unmet, failures(outcomes)[:5], final)
