"""Domain exceptions the routes map to HTTP statuses (see the error envelope in the spec)."""

from __future__ import annotations

import uuid


class WorkflowNotFoundError(Exception):
    """No workflow with this id (404)."""

    def __init__(self, workflow_id: uuid.UUID | str) -> None:
        self.workflow_id = workflow_id
        super().__init__(f"Workflow not found: {workflow_id}")


class WorkflowConflictError(Exception):
    """A worktree already has a running or blocked workflow, or another conflict (409).

    Two modes: `WorkflowConflictError(worktree_path, workflow_id)` for a worktree conflict,
    or `WorkflowConflictError("free text")` for any other conflict.
    """

    def __init__(
        self, message_or_worktree: str, workflow_id: uuid.UUID | str | None = None
    ) -> None:
        self.workflow_id = workflow_id
        if workflow_id is not None:
            self.worktree_path: str | None = message_or_worktree
            message = (
                f"Worktree {message_or_worktree} already has an active workflow ({workflow_id})"
            )
        else:
            self.worktree_path = None
            message = message_or_worktree
        super().__init__(message)


class ConcurrencyLimitError(Exception):
    """Too many workflows are running (429)."""

    def __init__(self, max_concurrent: int, current_count: int | None = None) -> None:
        self.max_concurrent = max_concurrent
        self.current_count = current_count
        super().__init__(
            f"Concurrency limit reached: {current_count if current_count is not None else '?'}"
            f" of {max_concurrent} workflows running"
        )


class InvalidStateError(Exception):
    """The workflow is not in a state that allows the operation (422)."""

    def __init__(
        self, message: str, workflow_id: uuid.UUID | str, current_status: str | None = None
    ) -> None:
        self.workflow_id = workflow_id
        self.current_status = current_status
        super().__init__(message)


class InvalidWorktreeError(Exception):
    """The worktree path is unusable (400)."""

    def __init__(self, worktree_path: str, reason: str) -> None:
        self.worktree_path = worktree_path
        self.reason = reason
        super().__init__(f"Invalid worktree {worktree_path}: {reason}")


class FileOperationError(Exception):
    """A file the request names cannot be used (status given by the raiser)."""

    def __init__(self, message: str, code: str, status_code: int = 400) -> None:
        self.code = code
        self.status_code = status_code
        super().__init__(message)


class FencedOutError(Exception):
    """A write of a workflow run was refused: this process no longer owns the run.

    Another process took the run over (its lease expired) or the workflow was cancelled, so
    the run's fencing token is stale; the run must stop without writing anything more.
    """

    def __init__(self, workflow_id: uuid.UUID | str, fence: int) -> None:
        self.workflow_id = workflow_id
        self.fence = fence
        super().__init__(
            f"Workflow {workflow_id}: this process no longer owns the run (fence {fence} is stale)"
        )
