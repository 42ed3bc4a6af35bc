"""Prompt models: stored prompts and versions, the resolved text, and the repository protocol."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel, Field, field_validator


class PromptNotFoundError(ValueError):
    """No prompt with this id is stored."""

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        super().__init__(f"Prompt not found: {prompt_id}")


class Prompt(BaseModel):
    """A prompt slot (e.g. `architect.plan`); `current_version_id` None = built-in default."""

    id: str
    agent: str
    name: str
    description: str | None = None
    current_version_id: uuid.UUID | None = None


class PromptVersion(BaseModel):
    """One stored custom text of a prompt; numbers start at 1 per prompt."""

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    prompt_id: str
    version_number: int = Field(ge=1)
    content: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    change_note: str | None = None

    @field_validator("content")
    @classmethod
    def _content_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("Prompt content cannot be empty")
        return value


class ResolvedPrompt(BaseModel):
    """The text an agent should use, and where it came from."""

    prompt_id: str
    content: str
    version_id: uuid.UUID | None = None
    version_number: int | None = None
    is_default: bool = True


class WorkflowPromptVersion(BaseModel):
    """Which custom version of a prompt a workflow used."""

    workflow_id: uuid.UUID
    prompt_id: str
    version_id: uuid.UUID


class PromptRepositoryProtocol(Protocol):
    """What `PromptResolver` needs from a prompt store."""

    async def get_prompt(self, prompt_id: str) -> Prompt | None:
        """The prompt, or None."""
        ...

    async def get_version(self, version_id: uuid.UUID) -> PromptVersion | None:
        """The version, or None."""
        ...

    async def get_current_version(self, prompt_id: str) -> PromptVersion | None:
        """The prompt's active custom version, or None (one lookup)."""
        ...

    async def get_current_versions(self) -> dict[str, PromptVersion]:
        """Every prompt's active custom version, by prompt id (one lookup)."""
        ...

    async def record_workflow_prompt(
        self, workflow_id: uuid.UUID, prompt_id: str, version_id: uuid.UUID
    ) -> None:
        """Record that a workflow used a version."""
        ...
