"""Brainstorming models: sessions, their messages (with parts and usage) and artifacts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


def _now() -> datetime:
    return datetime.now(UTC)


class SessionStatus(StrEnum):
    """Lifecycle of a brainstorming session."""

    ACTIVE = "active"
    READY_FOR_HANDOFF = "ready_for_handoff"
    COMPLETED = "completed"
    FAILED = "failed"


class MessageRole(StrEnum):
    """Who wrote a message."""

    USER = "user"
    ASSISTANT = "assistant"


class MessagePartType(StrEnum):
    """Kinds of structured content inside a message."""

    TEXT = "text"
    TOOL_CALL = "tool-call"
    TOOL_RESULT = "tool-result"
    REASONING = "reasoning"


class MessageUsage(BaseModel):
    """Token usage and cost of one assistant reply."""

    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)


class SessionUsageSummary(BaseModel):
    """Usage summed over a session's messages that recorded usage."""

    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_cost_usd: float = 0.0
    message_count: int = 0


class BrainstormingSession(BaseModel):
    """A design conversation with the brainstormer agent."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    profile_id: str
    driver_session_id: str | None = None
    driver_type: str | None = None
    status: SessionStatus = SessionStatus.ACTIVE
    topic: str | None = None
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    # Not a column: filled in by the service from `get_session_usage`.
    usage_summary: SessionUsageSummary | None = None


class MessagePart(BaseModel):
    """One structured piece of a message (text, reasoning, a tool call or its result)."""

    type: MessagePartType
    text: str | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    args: dict[str, Any] | None = None
    result: str | None = None


class Message(BaseModel):
    """A message of a session; `sequence` is 1-based (0 = not yet allocated)."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    session_id: uuid.UUID
    sequence: int = Field(default=0, ge=0)
    role: MessageRole
    content: str
    parts: list[MessagePart] | None = None
    usage: MessageUsage | None = None
    created_at: datetime = Field(default_factory=_now)


class Artifact(BaseModel):
    """A document produced by a session (type: design, adr, spec, readme or document)."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    session_id: uuid.UUID
    type: str
    path: str
    title: str | None = None
    created_at: datetime = Field(default_factory=_now)
