"""Prompts and their custom versions: `/api/prompts...` (spec server.md 2.5).

The list reads every prompt and every active version in two statements (no per-prompt
lookups). Unknown prompts and versions answer FastAPI's `{"detail": ...}` 404.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, HTTPException, status

from amelia.agents.prompts.defaults import PROMPT_DEFAULTS
from amelia.agents.prompts.models import PromptNotFoundError
from amelia.server.dependencies import Prompts
from amelia.server.models.prompt_api import (
    CreateVersionRequest,
    DefaultPromptResponse,
    PromptDetailResponse,
    PromptListResponse,
    PromptSummary,
    ResetResponse,
    VersionDetailResponse,
    VersionListResponse,
    VersionSummary,
)

router = APIRouter(prefix="/api/prompts", tags=["prompts"])


def _prompt_not_found(prompt_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"Prompt not found: {prompt_id}")


@router.get("")
async def list_prompts(prompts: Prompts) -> PromptListResponse:
    """Every prompt with the number of its active custom version."""
    async with prompts.db.connection() as conn:
        repo = prompts.bind(conn)
        every = await repo.list_prompts()
        current = await repo.get_current_versions()
    return PromptListResponse(
        prompts=[PromptSummary.build(prompt, current.get(prompt.id)) for prompt in every]
    )


@router.get("/{prompt_id}")
async def get_prompt(prompt_id: str, prompts: Prompts) -> PromptDetailResponse:
    """A prompt and its versions, newest first; 404 when unknown."""
    async with prompts.db.connection() as conn:
        repo = prompts.bind(conn)
        prompt = await repo.get_prompt(prompt_id)
        if prompt is None:
            raise _prompt_not_found(prompt_id)
        versions = await repo.get_versions(prompt_id)
    return PromptDetailResponse(
        id=prompt.id,
        agent=prompt.agent,
        name=prompt.name,
        description=prompt.description,
        current_version_id=prompt.current_version_id,
        versions=[VersionSummary.build(version) for version in versions],
    )


@router.get("/{prompt_id}/versions")
async def list_versions(prompt_id: str, prompts: Prompts) -> VersionListResponse:
    """A prompt's versions, newest first; 404 when the prompt is unknown."""
    async with prompts.db.connection() as conn:
        repo = prompts.bind(conn)
        if await repo.get_prompt(prompt_id) is None:
            raise _prompt_not_found(prompt_id)
        versions = await repo.get_versions(prompt_id)
    return VersionListResponse(versions=[VersionSummary.build(version) for version in versions])


@router.get("/{prompt_id}/versions/{version_id}")
async def get_version(
    prompt_id: str, version_id: uuid.UUID, prompts: Prompts
) -> VersionDetailResponse:
    """One version with its content; 404 when unknown or a version of another prompt."""
    version = await prompts.get_version(version_id)
    if version is None or version.prompt_id != prompt_id:
        raise HTTPException(
            status_code=404, detail=f"Version {version_id} not found for prompt {prompt_id}"
        )
    return VersionDetailResponse.build(version)


@router.post("/{prompt_id}/versions", status_code=status.HTTP_201_CREATED)
async def create_version(
    prompt_id: str, body: CreateVersionRequest, prompts: Prompts
) -> VersionDetailResponse:
    """Store new content as the next version and make it active at once; 404 when unknown."""
    try:
        # The repository locks the prompt row first, so the existence check is part of it.
        version = await prompts.create_version(prompt_id, body.content, body.change_note)
    except PromptNotFoundError:
        raise _prompt_not_found(prompt_id) from None
    return VersionDetailResponse.build(version)


@router.post("/{prompt_id}/reset")
async def reset_prompt(prompt_id: str, prompts: Prompts) -> ResetResponse:
    """Use the built-in default again (versions are kept); 404 when unknown."""
    async with prompts.db.connection() as conn:
        repo = prompts.bind(conn)
        if await repo.get_prompt(prompt_id) is None:
            raise _prompt_not_found(prompt_id)
        await repo.reset_to_default(prompt_id)
    return ResetResponse(message=f"Prompt {prompt_id} reset to its default")


@router.get("/{prompt_id}/default")
async def get_default(prompt_id: str) -> DefaultPromptResponse:
    """The built-in text of a prompt (no database); 404 for an unknown id."""
    default = PROMPT_DEFAULTS.get(prompt_id)
    if default is None:
        raise HTTPException(status_code=404, detail=f"No default for prompt: {prompt_id}")
    return DefaultPromptResponse.build(prompt_id, default)
