"""Checkpoint bytes against loop iterations: a review loop run N and 2N times, real graph,
real saver, the `api` driver talking to the local scripted agent server."""

from __future__ import annotations

import asyncio
from typing import Any

from amelia.server.checkpoint import CheckpointStore, setup_checkpoint_tables
from amelia.server.database import Database, ProfileRepository
from amelia.server.events.bus import EventBus
from amelia.server.orchestrator.service import OrchestratorService
from tests.orchestrator.agent_server import AgentServer
from tests.orchestrator.conftest import make_profile
from tests.orchestrator.test_checkpoint_growth import run_review_loop

PASSES = (5, 10, 20)


async def run(url: str, scratch: str) -> dict[str, Any]:
    """Thread bytes (checkpoints + blobs + writes) after each number of review passes."""
    from pathlib import Path

    await setup_checkpoint_tables(url)
    agents = AgentServer().start()
    db = Database(url, min_size=1, max_size=4)
    await db.connect()
    store = CheckpointStore(url, min_size=1, max_size=4)
    await store.open()
    try:
        await ProfileRepository(db).create_profile(make_profile("test", agents.url))
        service = OrchestratorService(db, store.saver, EventBus())
        sizes = {}
        for passes in PASSES:
            sizes[passes] = await run_review_loop(service, store, db, agents, Path(scratch), passes)
    finally:
        await store.close()
        await db.close()
        agents.stop()
    ratios = {f"{2 * n}/{n}": sizes[2 * n] / sizes[n] for n in PASSES if 2 * n in sizes}
    return {"bytes_by_passes": sizes, "ratios": ratios}


def render(section: dict[str, Any]) -> list[str]:
    sizes = section["bytes_by_passes"]
    lines = [
        "## Checkpoint size against loop iterations",
        "",
        "A review loop (reviewer -> evaluator -> developer) run N times on the real graph and "
        "saver; bytes of the thread's rows in checkpoints, checkpoint_blobs and "
        "checkpoint_writes. Goal: 2N iterations under 2.5x the bytes of N.",
        "",
        "| Review passes | Thread bytes |",
        "|---:|---:|",
    ]
    lines += [f"| {n} | {size:,} |" for n, size in sizes.items()]
    ratios = ", ".join(f"{k}: **{v:.2f}x**" for k, v in section["ratios"].items())
    lines += ["", f"- Ratios: {ratios}.", ""]
    return lines


def main() -> None:  # pragma: no cover - manual use
    import tempfile

    from bench.common import bench_database

    with bench_database() as url, tempfile.TemporaryDirectory() as scratch:
        print(asyncio.run(run(url, scratch)))


if __name__ == "__main__":  # pragma: no cover
    main()
