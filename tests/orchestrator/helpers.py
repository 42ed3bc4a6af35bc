"""Waiting helpers for tests that watch workflows run in the background."""

from __future__ import annotations

import asyncio
import time
import uuid

from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.state import ServerExecutionState, WorkflowStatus


async def wait_for_status(
    repository: WorkflowRepository,
    workflow_id: uuid.UUID,
    *statuses: WorkflowStatus,
    timeout: float = 30.0,
) -> ServerExecutionState:
    """Poll the database until the workflow reaches one of `statuses`."""
    deadline = time.monotonic() + timeout
    row = None
    while time.monotonic() < deadline:
        row = await repository.get(workflow_id)
        if row is not None and row.workflow_status in statuses:
            return row
        await asyncio.sleep(0.05)
    current = row.workflow_status if row else None
    raise AssertionError(f"workflow {workflow_id} is {current}, expected one of {statuses}")
