"""`ProfileRepository`: the `profiles` table, returned as `amelia.core.types.Profile`.

At most one profile is active (the partial unique index `uq_profiles__single_active`);
`set_active` serialises concurrent activations with a transaction-scoped advisory lock so
callers never see that index's violation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator
from sqlalchemy import RowMapping, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert

from amelia.core.types import AgentConfig, Profile, TrackerType
from amelia.server.database.base import RepositoryBase
from amelia.server.database.errors import translate_integrity_errors
from amelia.server.database.schema import profiles

# Advisory lock key taken by every set_active call ("amprofil" as a big-endian int64).
_SET_ACTIVE_LOCK_KEY = int.from_bytes(b"amprofil", "big")

UPDATABLE_PROFILE_FIELDS = frozenset(
    {"tracker", "working_dir", "plan_output_dir", "plan_path_pattern", "agents"}
)
_TEXT_FIELDS = ("working_dir", "plan_output_dir", "plan_path_pattern")


class ProfileRecord(BaseModel):
    """A `profiles` row as stored (tests and fixtures; the repository returns `Profile`)."""

    id: str
    tracker: str = TrackerType.NOOP.value
    working_dir: str
    plan_output_dir: str = "docs/plans"
    plan_path_pattern: str = "docs/plans/{date}-{issue_key}.md"
    agents: dict[str, Any] = Field(default_factory=dict)
    is_active: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("agents", mode="before")
    @classmethod
    def _parse_json_text(cls, value: Any) -> Any:
        # The SQLite-era record held agents as JSON text; accept it for old fixtures.
        return json.loads(value) if isinstance(value, str) else value


def _agents_to_json(agents: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`{name: {driver, model, options}}` from AgentConfigs or plain dicts (validated)."""
    stored: dict[str, dict[str, Any]] = {}
    for name, config in agents.items():
        agent = config if isinstance(config, AgentConfig) else AgentConfig.model_validate(config)
        stored[name] = agent.model_dump(mode="json")
    return stored


def _row_to_profile(row: RowMapping) -> Profile:
    agents = row["agents"] or {}
    return Profile(
        name=row["id"],
        tracker=row["tracker"],
        working_dir=row["working_dir"],
        plan_output_dir=row["plan_output_dir"],
        plan_path_pattern=row["plan_path_pattern"],
        agents={name: AgentConfig.model_validate(cfg) for name, cfg in agents.items()},
    )


def _update_values(updates: Mapping[str, Any]) -> dict[str, Any]:
    """Column values for `update_profile`, checked and normalised."""
    values: dict[str, Any] = {}
    for name, value in updates.items():
        if name == "tracker":
            try:
                values[name] = TrackerType(value).value
            except ValueError:
                allowed = ", ".join(t.value for t in TrackerType)
                raise ValueError(f"tracker must be one of {allowed} (got {value!r})") from None
        elif name == "agents":
            if not isinstance(value, Mapping):
                raise ValueError("agents must be a mapping of agent name to configuration")
            values[name] = _agents_to_json(value)
        else:
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string (got {value!r})")
            values[name] = value
    return values


class ProfileRepository(RepositoryBase):
    """Profile persistence (spec data-layer.md section 4.3)."""

    async def list_profiles(self) -> list[Profile]:
        """Every profile, ordered by name."""
        statement = select(profiles).order_by(profiles.c.id)
        async with self._connect() as conn:
            rows = (await conn.execute(statement)).mappings().all()
        return [_row_to_profile(row) for row in rows]

    async def get_profile(self, profile_id: str) -> Profile | None:
        """The profile named `profile_id`, or None."""
        statement = select(profiles).where(profiles.c.id == profile_id)
        async with self._connect() as conn:
            row = (await conn.execute(statement)).mappings().first()
        return None if row is None else _row_to_profile(row)

    async def get_active_profile(self) -> Profile | None:
        """The active profile, or None when none is active."""
        # The bare boolean predicate matches the partial index's `WHERE is_active`.
        statement = select(profiles).where(profiles.c.is_active)
        async with self._connect() as conn:
            row = (await conn.execute(statement)).mappings().first()
        return None if row is None else _row_to_profile(row)

    async def create_profile(self, profile: Profile) -> Profile:
        """Store a new, inactive profile (its `retry` is not persisted).

        Args:
            profile: the profile; `name` becomes the row id.

        Returns:
            The stored profile.

        Raises:
            DuplicateKeyError: a profile with that name exists.
        """
        statement = (
            insert(profiles)
            .values(
                id=profile.name,
                tracker=profile.tracker.value,
                working_dir=profile.working_dir,
                plan_output_dir=profile.plan_output_dir,
                plan_path_pattern=profile.plan_path_pattern,
                agents=_agents_to_json(profile.agents),
                is_active=False,
            )
            .returning(*profiles.c)
        )
        async with self._connect() as conn:
            with translate_integrity_errors():
                row = (await conn.execute(statement)).mappings().one()
        return _row_to_profile(row)

    async def update_profile(self, profile_id: str, updates: Mapping[str, Any]) -> Profile:
        """Change some fields of a profile in one statement.

        Args:
            profile_id: the profile name.
            updates: field -> value, fields among `UPDATABLE_PROFILE_FIELDS`; `agents` may map
                names to `AgentConfig`s or to dicts with `driver`, `model`, `options`.

        Returns:
            The stored profile after the update.

        Raises:
            ValueError: an unknown field, an invalid value, or no such profile.
        """
        invalid = sorted(set(updates) - UPDATABLE_PROFILE_FIELDS)
        if invalid:
            raise ValueError(
                f"Invalid profile fields: {', '.join(invalid)} "
                f"(allowed: {', '.join(sorted(UPDATABLE_PROFILE_FIELDS))})"
            )
        if not updates:
            existing = await self.get_profile(profile_id)
            if existing is None:
                raise ValueError(f"Profile not found: {profile_id}")
            return existing
        statement = (
            update(profiles)
            .where(profiles.c.id == profile_id)
            .values(**_update_values(updates), updated_at=func.now())
            .returning(*profiles.c)
        )
        async with self._connect() as conn:
            with translate_integrity_errors():
                row = (await conn.execute(statement)).mappings().first()
        if row is None:
            raise ValueError(f"Profile not found: {profile_id}")
        return _row_to_profile(row)

    async def delete_profile(self, profile_id: str) -> bool:
        """Delete a profile; True when a row was deleted. Workflows keep the name."""
        statement = delete(profiles).where(profiles.c.id == profile_id).returning(profiles.c.id)
        async with self._connect() as conn:
            deleted = (await conn.execute(statement)).first()
        return deleted is not None

    async def set_active(self, profile_id: str) -> None:
        """Make `profile_id` the only active profile.

        Concurrent calls are serialised (advisory lock, then clear, then set, in one
        transaction), so exactly one profile ends up active and no caller sees a conflict.

        Args:
            profile_id: the profile name.

        Raises:
            ValueError: no such profile (nothing changes).
        """
        async with self._transaction() as conn:
            # The lock must be its own statement: under READ COMMITTED each later statement
            # then takes a snapshot that includes the previous holder's committed change.
            await conn.execute(select(func.pg_advisory_xact_lock(_SET_ACTIVE_LOCK_KEY)))
            await conn.execute(
                update(profiles)
                .where(profiles.c.is_active, profiles.c.id != profile_id)
                .values(is_active=False, updated_at=func.now())
            )
            target = (
                await conn.execute(
                    update(profiles)
                    .where(profiles.c.id == profile_id)
                    .values(is_active=True, updated_at=func.now())
                    .returning(profiles.c.id)
                )
            ).first()
            if target is None:
                # Raising inside the block rolls back the clearing above.
                raise ValueError(f"Profile not found: {profile_id}")
