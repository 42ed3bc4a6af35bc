"""A server-like process for the restart tests: runs workflows until it is killed.

Usage: python -m tests.orchestrator.worker DATABASE_URL WORKTREE_A WORKTREE_B

Starts workflow A and approves its plan (so it runs on into the developer step), starts
workflow B and leaves it blocked for approval, prints {"a": id, "b": id} on one line, then
keeps running (renewing its leases of LEASE_SECONDS, as a server does) until the test
kills it.
"""

from __future__ import annotations

import asyncio
import json
import sys

from amelia.server.checkpoint import CheckpointStore
from amelia.server.database import Database
from amelia.server.events.bus import EventBus
from amelia.server.models.state import WorkflowStatus
from amelia.server.orchestrator.service import OrchestratorService
from tests.orchestrator.helpers import wait_for_status

LEASE_SECONDS = 3.0


async def main(url: str, worktree_a: str, worktree_b: str) -> None:
    db = Database(url, min_size=1, max_size=4)
    await db.connect()
    store = CheckpointStore(url, min_size=1, max_size=4)
    saver = await store.open()
    service = OrchestratorService(db, saver, EventBus(), lease_seconds=LEASE_SECONDS)
    a = await service.start_workflow("KILL-A", worktree_a)
    await wait_for_status(service.repository, a, WorkflowStatus.BLOCKED)
    b = await service.start_workflow("KILL-B", worktree_b)
    await wait_for_status(service.repository, b, WorkflowStatus.BLOCKED)
    await service.approve_workflow(a)
    print(json.dumps({"a": str(a), "b": str(b)}), flush=True)
    while True:  # until SIGKILL
        await asyncio.sleep(LEASE_SECONDS / 6)
        await service.renew_leases()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
