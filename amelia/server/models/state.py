"""Workflow state: statuses, the transition table, and the `workflows` row model.

`ServerExecutionState` is a thin index over a workflow (ids, status, timestamps and two JSON
caches); the pipeline's full state lives in LangGraph checkpoints, not here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field


class WorkflowStatus(StrEnum):
    """Lifecycle status of a workflow (the `workflows.status` column)."""

    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    BLOCKED = "blocked"  # awaiting human approval of the plan
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkflowType(StrEnum):
    """Which pipeline a workflow runs."""

    FULL = "full"
    REVIEW = "review"


VALID_TRANSITIONS: Mapping[WorkflowStatus, frozenset[WorkflowStatus]] = {
    WorkflowStatus.PENDING: frozenset(
        {
            WorkflowStatus.BLOCKED,
            WorkflowStatus.IN_PROGRESS,
            WorkflowStatus.CANCELLED,
            WorkflowStatus.FAILED,
        }
    ),
    WorkflowStatus.IN_PROGRESS: frozenset(
        {
            WorkflowStatus.BLOCKED,
            WorkflowStatus.COMPLETED,
            WorkflowStatus.FAILED,
            WorkflowStatus.CANCELLED,
        }
    ),
    WorkflowStatus.BLOCKED: frozenset(
        {
            WorkflowStatus.PENDING,  # replan
            WorkflowStatus.IN_PROGRESS,  # approve
            WorkflowStatus.FAILED,  # reject
            WorkflowStatus.CANCELLED,
        }
    ),
    WorkflowStatus.COMPLETED: frozenset(),
    WorkflowStatus.FAILED: frozenset({WorkflowStatus.IN_PROGRESS}),  # resume
    WorkflowStatus.CANCELLED: frozenset(),
}
"""Allowed targets per current status. Self-transitions are never allowed."""

TERMINAL_STATUSES: frozenset[WorkflowStatus] = frozenset(
    {WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED}
)
"""Statuses that stamp `completed_at` (failed is terminal for that purpose, yet resumable)."""


class InvalidStateTransitionError(ValueError):
    """A status change the state machine does not allow.

    Attributes:
        current: the workflow's status when the change was attempted.
        target: the status that was asked for.
    """

    def __init__(self, current: WorkflowStatus | str, target: WorkflowStatus | str) -> None:
        self.current = WorkflowStatus(current)
        self.target = WorkflowStatus(target)
        super().__init__(
            f"Invalid workflow status transition: {self.current.value} -> {self.target.value}"
        )


def validate_transition(current: WorkflowStatus | str, target: WorkflowStatus | str) -> None:
    """Check a status change against `VALID_TRANSITIONS`.

    Args:
        current: the status the workflow has.
        target: the status asked for.

    Raises:
        InvalidStateTransitionError: the change is not allowed (including `x -> x`).
    """
    if WorkflowStatus(target) not in VALID_TRANSITIONS[WorkflowStatus(current)]:
        raise InvalidStateTransitionError(current, target)


class PlanCache(BaseModel):
    """The plan summary kept on the workflow row, so lists need no checkpoint read."""

    goal: str | None = None
    plan_markdown: str | None = None
    plan_path: str | None = None
    total_tasks: int | None = None
    current_task_index: int | None = None

    @classmethod
    def from_checkpoint_values(cls, values: Mapping[str, Any]) -> PlanCache:
        """Pick the plan fields out of LangGraph state values.

        Args:
            values: a checkpoint's channel values (missing keys become None).

        Returns:
            The cache; `plan_path` is stringified (the pipeline state holds a `Path`).
        """
        plan_path = values.get("plan_path")
        return cls(
            goal=values.get("goal"),
            plan_markdown=values.get("plan_markdown"),
            plan_path=str(plan_path) if plan_path is not None else None,
            total_tasks=values.get("total_tasks"),
            current_task_index=values.get("current_task_index"),
        )

    async def get_plan_markdown(self) -> str | None:
        """The plan's markdown: the cached text, else the file at `plan_path`.

        Returns:
            The markdown, or None when neither the text nor a path is known.

        Raises:
            FileNotFoundError: `plan_path` is set but the file does not exist.
        """
        if self.plan_markdown:
            return self.plan_markdown
        if self.plan_path:
            # Plans can be large and the disk slow; keep the event loop free.
            return await asyncio.to_thread(Path(self.plan_path).read_text, encoding="utf-8")
        return self.plan_markdown


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ServerExecutionState(BaseModel):
    """One `workflows` row. `workflow_status` is stored in the `status` column."""

    id: uuid.UUID
    issue_id: str
    worktree_path: str
    workflow_type: WorkflowType = WorkflowType.FULL
    profile_id: str | None = None
    plan_cache: PlanCache | None = None
    issue_cache: dict[str, Any] | None = None
    workflow_status: WorkflowStatus = WorkflowStatus.PENDING
    created_at: AwareDatetime = Field(default_factory=_utc_now)
    started_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None
    failure_reason: str | None = None
