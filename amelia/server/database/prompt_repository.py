"""`PromptRepository`: prompts, their custom versions, and which versions workflows used.

`create_version` numbers versions from 1 per prompt and is safe under concurrency: it locks
the prompt row first, so concurrent creations queue up and each gets the next number.
"""

from __future__ import annotations

import uuid

from sqlalchemy import RowMapping, func, select, update
from sqlalchemy.dialects.postgresql import insert

from amelia.agents.prompts.models import (
    Prompt,
    PromptNotFoundError,
    PromptVersion,
    WorkflowPromptVersion,
)
from amelia.server.database.base import RepositoryBase
from amelia.server.database.errors import translate_integrity_errors
from amelia.server.database.schema import prompt_versions, prompts, workflow_prompt_versions

_versions = prompt_versions
_used = workflow_prompt_versions


def _row_to_prompt(row: RowMapping) -> Prompt:
    return Prompt(
        id=row["id"],
        agent=row["agent"],
        name=row["name"],
        description=row["description"],
        current_version_id=row["current_version_id"],
    )


def _row_to_version(row: RowMapping) -> PromptVersion:
    return PromptVersion(
        id=row["id"],
        prompt_id=row["prompt_id"],
        version_number=row["version_number"],
        content=row["content"],
        created_at=row["created_at"],
        change_note=row["change_note"],
    )


def _row_to_workflow_prompt(row: RowMapping) -> WorkflowPromptVersion:
    return WorkflowPromptVersion(
        workflow_id=row["workflow_id"],
        prompt_id=row["prompt_id"],
        version_id=row["version_id"],
    )


class PromptRepository(RepositoryBase):
    """Prompt persistence (spec data-layer.md section 4.5)."""

    async def create_prompt(self, prompt: Prompt) -> None:
        """Insert a prompt.

        Raises:
            DuplicateKeyError: a prompt with that id exists.
        """
        statement = insert(prompts).values(
            id=prompt.id,
            agent=prompt.agent,
            name=prompt.name,
            description=prompt.description,
            current_version_id=prompt.current_version_id,
        )
        async with self._connect() as conn:
            with translate_integrity_errors():
                await conn.execute(statement)

    async def list_prompts(self) -> list[Prompt]:
        """Every prompt, ordered by agent then name."""
        statement = select(prompts).order_by(prompts.c.agent, prompts.c.name)
        async with self._connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_row_to_prompt(row) for row in rows]

    async def get_prompt(self, prompt_id: str) -> Prompt | None:
        """The prompt, or None."""
        statement = select(prompts).where(prompts.c.id == prompt_id)
        async with self._connect() as conn:
            row = (await conn.execute(statement)).mappings().first()
        return None if row is None else _row_to_prompt(row)

    async def get_versions(self, prompt_id: str) -> list[PromptVersion]:
        """A prompt's versions, newest (highest number) first."""
        statement = (
            select(_versions)
            .where(_versions.c.prompt_id == prompt_id)
            .order_by(_versions.c.version_number.desc())
        )
        async with self._connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_row_to_version(row) for row in rows]

    async def get_version(self, version_id: uuid.UUID) -> PromptVersion | None:
        """The version, or None."""
        statement = select(_versions).where(_versions.c.id == version_id)
        async with self._connect() as conn:
            row = (await conn.execute(statement)).mappings().first()
        return None if row is None else _row_to_version(row)

    async def get_current_version(self, prompt_id: str) -> PromptVersion | None:
        """The prompt's active custom version (one join), or None when it uses the default."""
        statement = (
            select(_versions)
            .join(prompts, prompts.c.current_version_id == _versions.c.id)
            .where(prompts.c.id == prompt_id)
        )
        async with self._connect() as conn:
            row = (await conn.execute(statement)).mappings().first()
        return None if row is None else _row_to_version(row)

    async def get_current_versions(self) -> dict[str, PromptVersion]:
        """Every prompt's active custom version, by prompt id (prompts on defaults omitted)."""
        statement = select(_versions).join(prompts, prompts.c.current_version_id == _versions.c.id)
        async with self._connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        versions = (_row_to_version(row) for row in rows)
        return {version.prompt_id: version for version in versions}

    async def create_version(
        self, prompt_id: str, content: str, change_note: str | None = None
    ) -> PromptVersion:
        """Store a new version (number = previous max + 1) and make it the active one.

        Args:
            prompt_id: the prompt.
            content: the prompt text; must not be blank.
            change_note: optional description of the change.

        Returns:
            The stored version.

        Raises:
            ValueError: `content` is blank.
            PromptNotFoundError: no such prompt (a `ValueError`).
        """
        if not content.strip():
            raise ValueError("Prompt content cannot be empty")
        async with self._transaction() as conn:
            # Lock first, as its own statement: the next statement's snapshot then sees every
            # version committed by whoever held the lock before us (READ COMMITTED).
            locked = await conn.scalar(
                select(prompts.c.id).where(prompts.c.id == prompt_id).with_for_update()
            )
            if locked is None:
                raise PromptNotFoundError(prompt_id)
            next_number = (
                select(func.coalesce(func.max(_versions.c.version_number), 0) + 1)
                .where(_versions.c.prompt_id == prompt_id)
                .scalar_subquery()
            )
            new_version = (
                insert(_versions)
                .values(
                    id=uuid.uuid4(),
                    prompt_id=prompt_id,
                    version_number=next_number,
                    content=content,
                    change_note=change_note,
                )
                .returning(*_versions.c)
                .cte("new_version")
            )
            # Insert the version and point the prompt at it in one statement.
            statement = (
                update(prompts)
                .where(prompts.c.id == new_version.c.prompt_id)
                .values(current_version_id=new_version.c.id)
                .returning(*new_version.c)
            )
            row = (await conn.execute(statement)).mappings().one()
        return _row_to_version(row)

    async def set_active_version(self, prompt_id: str, version_id: uuid.UUID) -> None:
        """Make an existing version of this prompt the active one.

        Raises:
            ValueError: the version does not exist or belongs to another prompt (or the
                prompt does not exist).
        """
        belongs = (
            select(_versions.c.id)
            .where(_versions.c.id == version_id, _versions.c.prompt_id == prompt_id)
            .exists()
        )
        statement = (
            update(prompts)
            .where(prompts.c.id == prompt_id, belongs)
            .values(current_version_id=version_id)
            .returning(prompts.c.id)
        )
        async with self._connect() as conn:
            updated = (await conn.execute(statement)).first()
        if updated is None:
            raise ValueError(f"Version {version_id} is not a version of prompt {prompt_id!r}")

    async def reset_to_default(self, prompt_id: str) -> None:
        """Make the prompt use its built-in default again (versions are kept); silent if missing."""
        statement = update(prompts).where(prompts.c.id == prompt_id).values(current_version_id=None)
        async with self._connect() as conn:
            await conn.execute(statement)

    async def record_workflow_prompt(
        self, workflow_id: uuid.UUID, prompt_id: str, version_id: uuid.UUID
    ) -> None:
        """Record (or replace) the version of a prompt a workflow used.

        Raises:
            ReferenceNotFoundError: the workflow, prompt or version does not exist.
        """
        statement = insert(_used).values(
            workflow_id=workflow_id, prompt_id=prompt_id, version_id=version_id
        )
        statement = statement.on_conflict_do_update(
            index_elements=[_used.c.workflow_id, _used.c.prompt_id],
            set_={"version_id": statement.excluded.version_id},
        )
        async with self._connect() as conn:
            with translate_integrity_errors():
                await conn.execute(statement)

    async def get_workflow_prompts(self, workflow_id: uuid.UUID) -> list[WorkflowPromptVersion]:
        """The custom versions a workflow used (ordered by prompt id)."""
        statement = (
            select(_used).where(_used.c.workflow_id == workflow_id).order_by(_used.c.prompt_id)
        )
        async with self._connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_row_to_workflow_prompt(row) for row in rows]
