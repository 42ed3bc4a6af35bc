"""Graph state of the implementation and review workflows.

Plain JSON-able values only, so checkpoints need no custom serializer. There is no
append-reduced channel: each step overwrites only the channels it changes (the event log in
the database is the workflow's history), so each checkpoint adds a bounded number of bytes
and a thread's checkpoint bytes grow linearly with the number of iterations.
"""

from __future__ import annotations

from typing import Any, TypedDict


class ImplementationState(TypedDict, total=False):
    workflow_id: str
    issue: dict[str, Any]
    goal: str | None
    plan_markdown: str | None
    plan_path: str | None
    external_plan: bool
    key_files: list[str]
    tasks: list[str]
    total_tasks: int
    current_task_index: int
    human_approved: bool | None
    human_feedback: str | None
    developer_summary: str | None
    last_review: dict[str, Any] | None
    review_iteration: int
    max_review_passes: int
    outcome: str | None


class ReviewState(TypedDict, total=False):
    workflow_id: str
    diff_content: str
    last_review: dict[str, Any] | None
    evaluation: dict[str, Any] | None
    developer_summary: str | None
    review_iteration: int
    max_review_passes: int
    outcome: str | None


DEFAULT_MAX_REVIEW_PASSES = 3
