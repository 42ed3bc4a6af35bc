"""Request and response bodies of the brainstorm routes (spec server.md 2.6).

Stored models (`BrainstormingSession`, `Message`, `Artifact`) are returned as they are, except
that messages carry `is_error`: a driver failure is stored as an assistant message whose only
part is marked as an error (see `amelia.server.brainstorm.service`), and clients should not
have to know that convention.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BaseModel, Field

from amelia.core.types import Profile
from amelia.server.models.brainstorm import (
    Artifact,
    BrainstormingSession,
    Message,
    MessagePart,
    MessagePartType,
    MessageRole,
)

# Key, inside an error message's part `args`, that marks the message as a failed turn.
ERROR_MARKER = "is_error"


def error_message(
    session_id: uuid.UUID, message_id: uuid.UUID, reason: str, error_type: str
) -> Message:
    """An assistant message recording a failed turn: its only part carries the error marker.

    Args:
        session_id: the session.
        message_id: the id the reply would have had.
        reason: what went wrong, for the user.
        error_type: the error's class name (or "Interrupted").
    """
    text = f"The brainstormer could not answer: {reason}"
    marker = {ERROR_MARKER: True, "error_type": error_type}
    return Message(
        id=message_id,
        session_id=session_id,
        role=MessageRole.ASSISTANT,
        content=text,
        parts=[MessagePart(type=MessagePartType.TEXT, text=text, args=marker)],
    )


def is_error_message(message: Message) -> bool:
    """Whether a stored message records a failed turn rather than an agent's reply."""
    return any(part.args and part.args.get(ERROR_MARKER) is True for part in message.parts or ())


def _storable(value: str) -> str:
    # PostgreSQL TEXT holds neither NUL nor lone surrogates: a 422 here, not a 500 (or a turn
    # that silently fails in the background) later.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


# Text a column can store; the required form also refuses blank (whitespace-only) values.
StoredText = Annotated[str, AfterValidator(_storable)]
RequiredStoredText = Annotated[str, AfterValidator(_storable), AfterValidator(_not_blank)]


class CreateSessionRequest(BaseModel):
    """`POST /api/brainstorm/sessions`: whose agents to talk to, and about what."""

    profile_id: RequiredStoredText = Field(min_length=1, max_length=100)
    topic: StoredText | None = Field(default=None, max_length=2000)


class ProfileInfo(BaseModel):
    """The brainstormer agent of a session's profile."""

    name: str
    driver: str
    model: str

    @classmethod
    def of(cls, profile: Profile | None) -> ProfileInfo | None:
        """The profile's brainstormer agent, or None when the profile or the agent is missing."""
        if profile is None or "brainstormer" not in profile.agents:
            return None
        agent = profile.agents["brainstormer"]
        return cls(name=profile.name, driver=agent.driver.value, model=agent.model)


class SessionCreatedResponse(BaseModel):
    """`POST /sessions` answer (201)."""

    session: BrainstormingSession
    profile: ProfileInfo | None = None


class SessionMessage(Message):
    """A message as the API shows it: the stored message plus whether it records a failure."""

    is_error: bool = False

    @classmethod
    def of(cls, message: Message) -> Self:
        """The API form of a stored message."""
        return cls(**message.model_dump(), is_error=is_error_message(message))


class SessionDetailResponse(BaseModel):
    """`GET /sessions/{id}`: the session (with its usage), its first 100 messages, artifacts."""

    session: BrainstormingSession
    messages: list[SessionMessage]
    artifacts: list[Artifact]
    profile: ProfileInfo | None = None


class SendMessageRequest(BaseModel):
    """`POST /sessions/{id}/message`: the user's next turn."""

    content: RequiredStoredText = Field(min_length=1, max_length=100_000)


class SendMessageResponse(BaseModel):
    """`POST /sessions/{id}/message` answer (202): the id the assistant's reply will have."""

    message_id: uuid.UUID


class HandoffRequest(BaseModel):
    """`POST /sessions/{id}/handoff`: which of the session's documents becomes a workflow."""

    artifact_path: RequiredStoredText = Field(min_length=1, max_length=4096)
    issue_title: RequiredStoredText | None = Field(default=None, min_length=1, max_length=500)
    issue_description: StoredText | None = Field(default=None, max_length=5000)


class HandoffResponse(BaseModel):
    """`POST /sessions/{id}/handoff` answer: the queued workflow."""

    workflow_id: uuid.UUID
    status: Literal["created"] = "created"
