"""`SettingsRepository`: the `server_settings` singleton row (id = 1) and its model.

The row is seeded by the migration; `ensure_defaults()` re-creates it if someone deleted it.
Updates are validated here (precise messages) and again by the table's CHECK constraints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import RowMapping, func, select, update
from sqlalchemy.dialects.postgresql import insert

from amelia.server.database.base import RepositoryBase
from amelia.server.database.errors import ConstraintViolationError, translate_integrity_errors
from amelia.server.database.schema import server_settings

_SETTINGS_ID = 1


class ServerSettings(BaseModel):
    """The server's runtime settings (the `server_settings` row)."""

    log_retention_days: int = Field(ge=1)
    checkpoint_retention_days: int = Field(ge=-1)
    websocket_idle_timeout_seconds: float = Field(gt=0)
    workflow_start_timeout_seconds: float = Field(gt=0)
    max_concurrent: int = Field(ge=1, le=100)
    stream_tool_results: bool
    created_at: datetime
    updated_at: datetime


# The settings a caller may change, each with the rule its value must satisfy.
_INT_RANGES: dict[str, tuple[int, int | None]] = {
    "log_retention_days": (1, None),
    "checkpoint_retention_days": (-1, None),
    "max_concurrent": (1, 100),
}
_POSITIVE_FLOATS = ("websocket_idle_timeout_seconds", "workflow_start_timeout_seconds")
_BOOLS = ("stream_tool_results",)
UPDATABLE_SETTINGS = frozenset((*_INT_RANGES, *_POSITIVE_FLOATS, *_BOOLS))

# CHECK constraint name (schema naming convention) -> the settings it guards.
_CHECK_TO_SETTINGS = {
    "ck_server_settings__max_concurrent": "max_concurrent",
    "ck_server_settings__log_retention_days": "log_retention_days",
    "ck_server_settings__checkpoint_retention_days": "checkpoint_retention_days",
    "ck_server_settings__timeouts": "websocket_idle_timeout_seconds/workflow_start_timeout_seconds",
}


def _validated(name: str, value: Any) -> Any:
    """The value to store for one setting, or `ValueError` naming the setting and the rule."""
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false (got {value!r})")
        return value
    # bool is an int subclass; True as a day count is a caller bug, not 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number (got {value!r})")
    if name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{name} must be a whole number (got {value!r})")
            value = int(value)
        if value < low or (high is not None and value > high):
            rule = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{name} must be {rule} (got {value})")
        return value
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be greater than 0 (got {value!r})")
    return float(value)


def _row_to_settings(row: RowMapping) -> ServerSettings:
    return ServerSettings(
        log_retention_days=row["log_retention_days"],
        checkpoint_retention_days=row["checkpoint_retention_days"],
        websocket_idle_timeout_seconds=row["websocket_idle_timeout_seconds"],
        workflow_start_timeout_seconds=row["workflow_start_timeout_seconds"],
        max_concurrent=row["max_concurrent"],
        stream_tool_results=row["stream_tool_results"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class SettingsRepository(RepositoryBase):
    """Reads and changes the server settings row (spec data-layer.md section 4.2)."""

    async def ensure_defaults(self) -> None:
        """Insert the settings row with the column defaults if it is missing (idempotent)."""
        statement = insert(server_settings).values(id=_SETTINGS_ID).on_conflict_do_nothing()
        async with self._connect() as conn:
            await conn.execute(statement)

    async def get_server_settings(self) -> ServerSettings:
        """The current settings.

        Returns:
            The settings row as a `ServerSettings`.

        Raises:
            ValueError: the row does not exist (settings not initialized).
        """
        statement = select(server_settings).where(server_settings.c.id == _SETTINGS_ID)
        async with self._connect() as conn:
            row = (await conn.execute(statement)).mappings().first()
        if row is None:
            raise ValueError("Server settings not initialized; run `amelia db upgrade`")
        return _row_to_settings(row)

    async def update_server_settings(self, updates: Mapping[str, Any]) -> ServerSettings:
        """Change some settings in one statement and return the stored result.

        Args:
            updates: setting name -> new value; names must be among `UPDATABLE_SETTINGS`.

        Returns:
            The settings after the update (the current ones when `updates` is empty).

        Raises:
            ValueError: an unknown setting name (all are listed), a value of the wrong type
                or out of range (the message names the setting), or the row is missing.
        """
        invalid = sorted(set(updates) - UPDATABLE_SETTINGS)
        if invalid:
            raise ValueError(
                f"Invalid setting names: {', '.join(invalid)} "
                f"(allowed: {', '.join(sorted(UPDATABLE_SETTINGS))})"
            )
        if not updates:
            return await self.get_server_settings()
        values = {name: _validated(name, value) for name, value in updates.items()}
        statement = (
            update(server_settings)
            .where(server_settings.c.id == _SETTINGS_ID)
            .values(**values, updated_at=func.now())
            .returning(*server_settings.c)
        )
        async with self._connect() as conn:
            try:
                with translate_integrity_errors():
                    row = (await conn.execute(statement)).mappings().first()
            except ConstraintViolationError as exc:
                # Only reachable if Python's rules and the CHECKs ever disagree.
                setting = _CHECK_TO_SETTINGS.get(exc.constraint or "", exc.constraint)
                raise ValueError(f"Value out of range for setting {setting}") from exc
        if row is None:
            raise ValueError("Server settings not initialized; run `amelia db upgrade`")
        return _row_to_settings(row)
