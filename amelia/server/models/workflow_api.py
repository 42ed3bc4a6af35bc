"""Request and response bodies of the workflow routes (spec server.md 2.1 and 2.1.1).

Request models validate what a client sends before anything touches the database: a bad
body is FastAPI's 422. Paths are canonicalised here (absolute, resolved) so that the
worktree a workflow is stored under matches what later filters compare against.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, Self

from pydantic import AwareDatetime, BaseModel, Field, field_validator, model_validator

from amelia.server.models.state import WorkflowStatus
from amelia.server.models.tokens import TokenSummary

_ISSUE_ID = re.compile(r"^[A-Za-z0-9_-]+$")
# Checked before the allow-list so the error names the offending character: these are the
# ones that would turn an issue id into a path or a shell fragment.
_ISSUE_ID_FORBIDDEN = frozenset("/\\.;|&$`<>'\"*?~!(){}[]#%=, \t\r\n\x00")
_PROFILE = re.compile(r"^[a-z0-9_-]+$")
_DRIVER = re.compile(r"^(api|cli|[a-z][a-z0-9_-]*:[A-Za-z0-9._/-]+)$")


def canonical_path(value: str, field: str) -> str:
    """An absolute path without NUL characters, resolved (`..` and symlinks removed).

    Args:
        value: the path a client sent.
        field: the field name, for the error message.

    Returns:
        The resolved path as a string (the directory need not exist).

    Raises:
        ValueError: the path is relative or contains a NUL character.
    """
    if "\x00" in value:
        raise ValueError(f"{field} must not contain NUL characters")
    path = Path(value)
    if not path.is_absolute():
        raise ValueError(f"{field} must be an absolute path")
    return str(path.resolve())


class CreateWorkflowRequest(BaseModel):
    """`POST /api/workflows`: what to work on, where, and whether to start now."""

    issue_id: str = Field(min_length=1, max_length=100)
    worktree_path: str = Field(min_length=1, max_length=4096)
    profile: str | None = Field(default=None, min_length=1, max_length=100)
    # Accepted for compatibility; the profile's agents decide which driver runs.
    driver: str | None = Field(default=None, max_length=200)
    task_title: str | None = Field(default=None, min_length=1, max_length=500)
    task_description: str | None = Field(default=None, max_length=5000)
    start: bool = True
    plan_now: bool = False
    artifact_path: str | None = Field(default=None, min_length=1, max_length=4096)
    plan_file: str | None = Field(default=None, min_length=1, max_length=4096)
    plan_content: str | None = Field(default=None, min_length=1)

    @field_validator("issue_id")
    @classmethod
    def _issue_id(cls, value: str) -> str:
        bad = sorted({ch for ch in value if ch in _ISSUE_ID_FORBIDDEN})
        if bad:
            raise ValueError(f"issue_id must not contain {''.join(bad)!r}")
        if not _ISSUE_ID.match(value):
            raise ValueError("issue_id may only contain letters, digits, '-' and '_'")
        return value

    @field_validator("worktree_path")
    @classmethod
    def _worktree(cls, value: str) -> str:
        return canonical_path(value, "worktree_path")

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str | None) -> str | None:
        if value is not None and not _PROFILE.match(value):
            raise ValueError("profile may only contain lowercase letters, digits, '-' and '_'")
        return value

    @field_validator("driver")
    @classmethod
    def _driver(cls, value: str | None) -> str | None:
        if value is not None and not _DRIVER.match(value):
            raise ValueError("driver must be 'api', 'cli' or '<type>:<name>'")
        return value

    @field_validator("artifact_path", "plan_file")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("paths must not contain NUL characters")
        return value

    @model_validator(mode="after")
    def _combinations(self) -> Self:
        if self.task_description is not None and self.task_title is None:
            raise ValueError("task_description requires task_title")
        if self.plan_file is not None and self.plan_content is not None:
            raise ValueError("give plan_file or plan_content, not both")
        planning_now = self.plan_now and not self.start
        if self.has_plan and planning_now:
            raise ValueError("plan_now makes the architect plan; it cannot take an external plan")
        if self.artifact_path is not None and planning_now:
            # queue_and_plan has no design-document input: refuse rather than drop it.
            raise ValueError("artifact_path cannot be combined with plan_now")
        return self

    @property
    def has_plan(self) -> bool:
        """Whether the request carries an external plan (file or content)."""
        return self.plan_file is not None or self.plan_content is not None


class CreateReviewWorkflowRequest(BaseModel):
    """`POST /api/workflows/review`: review a diff in a directory."""

    diff_content: str = Field(min_length=1)
    worktree_path: str = Field(min_length=1, max_length=4096)
    profile: str | None = Field(default=None, min_length=1, max_length=100)

    @field_validator("worktree_path")
    @classmethod
    def _worktree(cls, value: str) -> str:
        return canonical_path(value, "worktree_path")

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str | None) -> str | None:
        if value is not None and not _PROFILE.match(value):
            raise ValueError("profile may only contain lowercase letters, digits, '-' and '_'")
        return value


class CreateWorkflowResponse(BaseModel):
    """A workflow was created; `status` is always "pending" (as the dashboard expects)."""

    id: uuid.UUID
    status: str = "pending"
    message: str


class WorkflowSummary(BaseModel):
    """One row of a workflow list; token fields are null when the workflow has no usage."""

    id: uuid.UUID
    issue_id: str
    worktree_path: str
    profile: str | None = None
    status: WorkflowStatus
    created_at: AwareDatetime
    started_at: AwareDatetime | None = None
    total_cost_usd: float | None = None
    total_tokens: int | None = None
    total_duration_ms: int | None = None


class WorkflowListResponse(BaseModel):
    """A page of workflows; `cursor` fetches the next page when `has_more`."""

    workflows: list[WorkflowSummary]
    total: int
    cursor: str | None = None
    has_more: bool = False


class WorkflowDetailResponse(BaseModel):
    """One workflow with its plan, usage totals and latest events (oldest first)."""

    id: uuid.UUID
    issue_id: str
    worktree_path: str
    status: WorkflowStatus
    created_at: AwareDatetime
    started_at: AwareDatetime | None = None
    completed_at: AwareDatetime | None = None
    failure_reason: str | None = None
    goal: str | None = None
    plan_markdown: str | None = None
    plan_path: str | None = None
    token_usage: TokenSummary | None = None
    recent_events: list[dict[str, Any]] = Field(default_factory=list)
    final_response: str | None = None


class ActionResponse(BaseModel):
    """The outcome of an action on one workflow."""

    status: str
    workflow_id: uuid.UUID


class BatchStartRequest(BaseModel):
    """`POST /api/workflows/start-batch`: these ids, or every pending one (on a worktree)."""

    workflow_ids: list[uuid.UUID] | None = None
    worktree_path: str | None = Field(default=None, min_length=1, max_length=4096)

    @field_validator("worktree_path")
    @classmethod
    def _worktree(cls, value: str | None) -> str | None:
        return None if value is None else canonical_path(value, "worktree_path")


class BatchStartResponse(BaseModel):
    """Which workflows started, and why the others did not."""

    started: list[uuid.UUID]
    errors: dict[uuid.UUID, str]


class RejectRequest(BaseModel):
    """`POST .../reject`: why the plan was rejected."""

    feedback: str = Field(min_length=1, max_length=10000)


class SetPlanRequest(BaseModel):
    """`POST .../plan`: an external plan, as a worktree file or inline markdown."""

    plan_file: str | None = Field(default=None, min_length=1, max_length=4096)
    plan_content: str | None = Field(default=None, min_length=1)
    force: bool = False

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.plan_file is None) == (self.plan_content is None):
            raise ValueError("give exactly one of plan_file and plan_content")
        if self.plan_file is not None and "\x00" in self.plan_file:
            raise ValueError("plan_file must not contain NUL characters")
        return self


class SetPlanResponse(BaseModel):
    """The plan that was set: its goal, key files and number of tasks."""

    goal: str | None = None
    key_files: list[str] = Field(default_factory=list)
    total_tasks: int | None = None
