"""Events: what happened in a workflow (or a brainstorm / oracle session), and how loud it is.

`WorkflowEvent` is what the orchestrator emits, the `EventBus` broadcasts and, for the types in
`PERSISTED_TYPES`, `WorkflowRepository.save_event` writes to `workflow_log`. Only ten of its
fields are stored; the trace-only ones (`domain`, `session_id`, `correlation_id`, `tool_name`,
`tool_input`, `model`, `trace_id`, `parent_id`) exist for live streaming and come back as
defaults when an event is read from the log.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from pydantic import AwareDatetime, BaseModel, Field


class EventDomain(StrEnum):
    """Which part of the system an event belongs to."""

    WORKFLOW = "workflow"
    BRAINSTORM = "brainstorm"
    ORACLE = "oracle"


class EventLevel(StrEnum):
    """Severity of an event (the values of the `workflow_log.level` CHECK)."""

    INFO = "info"
    WARNING = "warning"
    DEBUG = "debug"
    ERROR = "error"


class EventType(StrEnum):
    """Every kind of event the server emits (41 values)."""

    # Lifecycle
    WORKFLOW_CREATED = "workflow_created"
    WORKFLOW_STARTED = "workflow_started"
    WORKFLOW_COMPLETED = "workflow_completed"
    WORKFLOW_FAILED = "workflow_failed"
    WORKFLOW_CANCELLED = "workflow_cancelled"
    # Stages
    STAGE_STARTED = "stage_started"
    STAGE_COMPLETED = "stage_completed"
    # Approval
    APPROVAL_REQUIRED = "approval_required"
    APPROVAL_GRANTED = "approval_granted"
    APPROVAL_REJECTED = "approval_rejected"
    # Artifacts
    FILE_CREATED = "file_created"
    FILE_MODIFIED = "file_modified"
    FILE_DELETED = "file_deleted"
    # Review
    REVIEW_REQUESTED = "review_requested"
    REVIEW_COMPLETED = "review_completed"
    REVISION_REQUESTED = "revision_requested"
    # Agents and tasks
    AGENT_MESSAGE = "agent_message"
    TASK_STARTED = "task_started"
    TASK_COMPLETED = "task_completed"
    TASK_FAILED = "task_failed"
    # System
    SYSTEM_ERROR = "system_error"
    SYSTEM_WARNING = "system_warning"
    # Streaming
    STREAM = "stream"
    # Trace
    CLAUDE_THINKING = "claude_thinking"
    CLAUDE_TOOL_CALL = "claude_tool_call"
    CLAUDE_TOOL_RESULT = "claude_tool_result"
    AGENT_OUTPUT = "agent_output"
    # Brainstorm
    BRAINSTORM_SESSION_CREATED = "brainstorm_session_created"
    BRAINSTORM_REASONING = "brainstorm_reasoning"
    BRAINSTORM_TOOL_CALL = "brainstorm_tool_call"
    BRAINSTORM_TOOL_RESULT = "brainstorm_tool_result"
    BRAINSTORM_TEXT = "brainstorm_text"
    BRAINSTORM_MESSAGE_COMPLETE = "brainstorm_message_complete"
    BRAINSTORM_ARTIFACT_CREATED = "brainstorm_artifact_created"
    BRAINSTORM_SESSION_COMPLETED = "brainstorm_session_completed"
    # Oracle
    ORACLE_CONSULTATION_STARTED = "oracle_consultation_started"
    ORACLE_CONSULTATION_THINKING = "oracle_consultation_thinking"
    ORACLE_TOOL_CALL = "oracle_tool_call"
    ORACLE_TOOL_RESULT = "oracle_tool_result"
    ORACLE_CONSULTATION_COMPLETED = "oracle_consultation_completed"
    ORACLE_CONSULTATION_FAILED = "oracle_consultation_failed"


# Types written to `workflow_log`. The rest are ephemeral ("trace"): broadcast to every
# WebSocket client, never stored, and their sequence stays 0.
PERSISTED_TYPES: frozenset[EventType] = frozenset(
    {
        EventType.WORKFLOW_CREATED,
        EventType.WORKFLOW_STARTED,
        EventType.WORKFLOW_COMPLETED,
        EventType.WORKFLOW_FAILED,
        EventType.WORKFLOW_CANCELLED,
        EventType.STAGE_STARTED,
        EventType.STAGE_COMPLETED,
        EventType.APPROVAL_REQUIRED,
        EventType.APPROVAL_GRANTED,
        EventType.APPROVAL_REJECTED,
        EventType.FILE_CREATED,
        EventType.FILE_MODIFIED,
        EventType.FILE_DELETED,
        EventType.REVIEW_REQUESTED,
        EventType.REVIEW_COMPLETED,
        EventType.REVISION_REQUESTED,
        EventType.TASK_STARTED,
        EventType.TASK_COMPLETED,
        EventType.TASK_FAILED,
        EventType.SYSTEM_ERROR,
        EventType.SYSTEM_WARNING,
        EventType.ORACLE_CONSULTATION_STARTED,
        EventType.ORACLE_CONSULTATION_COMPLETED,
        EventType.ORACLE_CONSULTATION_FAILED,
        EventType.BRAINSTORM_SESSION_CREATED,
        EventType.BRAINSTORM_SESSION_COMPLETED,
        EventType.BRAINSTORM_ARTIFACT_CREATED,
    }
)

_ERROR_TYPES = frozenset(
    {
        EventType.WORKFLOW_FAILED,
        EventType.TASK_FAILED,
        EventType.SYSTEM_ERROR,
        EventType.ORACLE_CONSULTATION_FAILED,
    }
)
_WARNING_TYPES = frozenset({EventType.SYSTEM_WARNING})
_INFO_TYPES = frozenset(
    {
        EventType.WORKFLOW_CREATED,
        EventType.WORKFLOW_STARTED,
        EventType.WORKFLOW_COMPLETED,
        EventType.WORKFLOW_CANCELLED,
        EventType.STAGE_STARTED,
        EventType.STAGE_COMPLETED,
        EventType.APPROVAL_REQUIRED,
        EventType.APPROVAL_GRANTED,
        EventType.APPROVAL_REJECTED,
        EventType.REVIEW_COMPLETED,
        EventType.ORACLE_CONSULTATION_STARTED,
        EventType.ORACLE_CONSULTATION_COMPLETED,
    }
)


def get_event_level(event_type: EventType) -> EventLevel:
    """The level an event of this type gets when none is given.

    Args:
        event_type: the event's type.

    Returns:
        error for failures, warning for system warnings, info for lifecycle/stage/approval
        milestones, debug for everything else (trace and streaming types included).
    """
    if event_type in _ERROR_TYPES:
        return EventLevel.ERROR
    if event_type in _WARNING_TYPES:
        return EventLevel.WARNING
    if event_type in _INFO_TYPES:
        return EventLevel.INFO
    return EventLevel.DEBUG


class WorkflowEvent(BaseModel):
    """One event. `sequence` is 0 for ephemeral events and for persisted events whose number
    the database should allocate; `save_event` returns the event with its stored sequence.

    `workflow_id` holds the brainstorm session id for brainstorm events.
    """

    id: uuid.UUID
    domain: EventDomain = EventDomain.WORKFLOW
    workflow_id: uuid.UUID
    sequence: int = Field(ge=0)
    timestamp: AwareDatetime
    agent: str
    event_type: EventType
    level: EventLevel | None = None
    message: str
    data: dict[str, Any] | None = None
    session_id: str | None = None
    correlation_id: str | None = None
    tool_name: str | None = None
    tool_input: dict[str, Any] | None = None
    is_error: bool = False
    model: str | None = None
    trace_id: str | None = None
    parent_id: str | None = None

    def model_post_init(self, context: Any, /) -> None:
        """Derive `level` from the event type when it was not given."""
        if self.level is None:
            self.level = get_event_level(self.event_type)
