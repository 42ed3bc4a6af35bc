"""`PromptResolver`: which text an agent uses for a prompt id, custom or built-in.

A stored custom version wins when the prompt points at one; otherwise, and whenever the
database cannot answer, the built-in default of `PROMPT_DEFAULTS` is used. A prompt lookup
never fails a workflow because the database is down.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from sqlalchemy.exc import SQLAlchemyError

from amelia.agents.prompts.defaults import PROMPT_DEFAULTS
from amelia.agents.prompts.models import PromptRepositoryProtocol, PromptVersion, ResolvedPrompt

logger = logging.getLogger(__name__)

# What "the database could not answer" looks like: driver/SQLAlchemy errors, network errors
# (DatabaseConnectionError is a ConnectionError), timeouts, and the RuntimeError a closed
# `Database` raises.
_DATABASE_ERRORS = (SQLAlchemyError, OSError, TimeoutError, RuntimeError)


def _default(prompt_id: str) -> ResolvedPrompt:
    return ResolvedPrompt(prompt_id=prompt_id, content=PROMPT_DEFAULTS[prompt_id].content)


def _custom(version: PromptVersion) -> ResolvedPrompt:
    return ResolvedPrompt(
        prompt_id=version.prompt_id,
        content=version.content,
        version_id=version.id,
        version_number=version.version_number,
        is_default=False,
    )


class PromptResolver:
    """Resolves prompt ids to texts through a prompt repository.

    Args:
        repository: where custom versions are stored (usually a `PromptRepository`).
    """

    def __init__(self, repository: PromptRepositoryProtocol) -> None:
        self._repository = repository

    async def get_prompt(self, prompt_id: str) -> ResolvedPrompt:
        """The text to use for one prompt.

        Args:
            prompt_id: a key of `PROMPT_DEFAULTS`, e.g. `architect.plan`.

        Returns:
            The active custom version when there is one, else the built-in default (also
            when the database fails; the failure is logged).

        Raises:
            ValueError: `prompt_id` is not a known prompt.
        """
        if prompt_id not in PROMPT_DEFAULTS:
            raise ValueError(f"Unknown prompt id: {prompt_id}")
        try:
            version = await self._repository.get_current_version(prompt_id)
        except _DATABASE_ERRORS:
            logger.warning(
                "could not read prompt %s from the database; using the default",
                prompt_id,
                exc_info=True,
            )
            return _default(prompt_id)
        return _default(prompt_id) if version is None else _custom(version)

    async def get_all_active(self) -> dict[str, ResolvedPrompt]:
        """The text to use for every prompt of `PROMPT_DEFAULTS`, by prompt id (one lookup).

        Returns:
            One entry per default prompt id; defaults everywhere when the database fails.
        """
        try:
            custom = await self._repository.get_current_versions()
        except _DATABASE_ERRORS:
            logger.warning(
                "could not read prompts from the database; using the defaults", exc_info=True
            )
            custom = {}
        return {
            prompt_id: _custom(custom[prompt_id]) if prompt_id in custom else _default(prompt_id)
            for prompt_id in PROMPT_DEFAULTS
        }

    async def record_for_workflow(
        self, workflow_id: uuid.UUID, resolved: Iterable[ResolvedPrompt] | None = None
    ) -> None:
        """Record which custom prompt versions a workflow uses (defaults are not recorded).

        Args:
            workflow_id: the workflow.
            resolved: the prompts the workflow resolved; when None, every active prompt is
                resolved now (pass what the workflow actually used to record exactly that).

        Raises:
            DataIntegrityError: the workflow (or a version) does not exist; database errors
                propagate, since the caller asked for a write.
        """
        prompts = (await self.get_all_active()).values() if resolved is None else resolved
        for prompt in prompts:
            if prompt.is_default or prompt.version_id is None:
                continue
            await self._repository.record_workflow_prompt(
                workflow_id, prompt.prompt_id, prompt.version_id
            )
