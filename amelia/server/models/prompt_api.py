"""Request and response bodies of `/api/prompts`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from amelia.agents.prompts.defaults import PromptDefault
from amelia.agents.prompts.models import Prompt, PromptVersion
from amelia.server.models.settings_api import refuse_nul


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("Prompt content cannot be empty")
    return value


class PromptSummary(BaseModel):
    """A prompt in the list, with the number of its active custom version (if any)."""

    id: str
    agent: str
    name: str
    description: str | None = None
    current_version_id: uuid.UUID | None = None
    current_version_number: int | None = None

    @classmethod
    def build(cls, prompt: Prompt, current: PromptVersion | None) -> PromptSummary:
        """The summary of a prompt and its active version (None: it uses the default)."""
        return cls(
            id=prompt.id,
            agent=prompt.agent,
            name=prompt.name,
            description=prompt.description,
            current_version_id=prompt.current_version_id,
            current_version_number=None if current is None else current.version_number,
        )


class PromptListResponse(BaseModel):
    """`GET /api/prompts`."""

    prompts: list[PromptSummary]


class VersionSummary(BaseModel):
    """A version in a list (without its content)."""

    id: uuid.UUID
    version_number: int
    created_at: datetime
    change_note: str | None = None

    @classmethod
    def build(cls, version: PromptVersion) -> VersionSummary:
        """The summary of a stored version."""
        return cls(
            id=version.id,
            version_number=version.version_number,
            created_at=version.created_at,
            change_note=version.change_note,
        )


class PromptDetailResponse(BaseModel):
    """`GET /api/prompts/{prompt_id}`: the prompt and its versions, newest first."""

    id: str
    agent: str
    name: str
    description: str | None = None
    current_version_id: uuid.UUID | None = None
    versions: list[VersionSummary]


class VersionListResponse(BaseModel):
    """`GET /api/prompts/{prompt_id}/versions`, newest first."""

    versions: list[VersionSummary]


class VersionDetailResponse(BaseModel):
    """One version with its content."""

    id: uuid.UUID
    prompt_id: str
    version_number: int
    content: str
    created_at: datetime
    change_note: str | None = None

    @classmethod
    def build(cls, version: PromptVersion) -> VersionDetailResponse:
        """The response for a stored version."""
        return cls.model_validate(version.model_dump())


class CreateVersionRequest(BaseModel):
    """`POST /api/prompts/{prompt_id}/versions`: new content (not blank) and an optional note."""

    model_config = ConfigDict(extra="forbid")

    # PostgreSQL TEXT cannot hold NUL: refuse it as a validation error, not a 500.
    content: Annotated[
        str, Field(min_length=1), AfterValidator(_not_blank), AfterValidator(refuse_nul)
    ]
    change_note: Annotated[str, Field(max_length=2000), AfterValidator(refuse_nul)] | None = None


class ResetResponse(BaseModel):
    """`POST /api/prompts/{prompt_id}/reset`."""

    message: str


class DefaultPromptResponse(BaseModel):
    """`GET /api/prompts/{prompt_id}/default`: the built-in text."""

    prompt_id: str
    content: str
    name: str
    description: str

    @classmethod
    def build(cls, prompt_id: str, default: PromptDefault) -> DefaultPromptResponse:
        """The response for a built-in prompt."""
        return cls(
            prompt_id=prompt_id,
            content=default.content,
            name=default.name,
            description=default.description,
        )
