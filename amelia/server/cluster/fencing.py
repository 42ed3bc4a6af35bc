"""The run a piece of code belongs to, so that its writes carry the run's fencing token.

A process runs a workflow under a `RunToken` (the workflow id and the `fence` number its
claim produced). The orchestrator sets `current_run` for the task that drives the graph;
LangGraph's node tasks and checkpoint writes inherit the context, so every event and
checkpoint written on behalf of the run is checked against the workflow row's fence. When
another process takes the run over, the fence moves on and the stale writes are refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class RunToken:
    """Ownership of one run: valid while the workflow row still carries `fence`."""

    workflow_id: uuid.UUID
    fence: int
    planning: bool = False
    takeovers: int = 0


current_run: ContextVar[RunToken | None] = ContextVar("amelia_current_run", default=None)


def fence_for(workflow_id: uuid.UUID | str) -> int | None:
    """The fence to check for a write to `workflow_id`, or None outside a run of it."""
    token = current_run.get()
    if token is None or str(token.workflow_id) != str(workflow_id):
        return None
    return token.fence


@contextmanager
def running(token: RunToken) -> Iterator[None]:
    """Mark the current context (and the tasks it creates) as executing `token`'s run."""
    reset = current_run.set(token)
    try:
        yield
    finally:
        current_run.reset(reset)
