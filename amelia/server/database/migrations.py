"""Schema migrations: Alembic upgrade/downgrade/status under one advisory lock, then seeding.

`alembic upgrade head` (deploy) and `amelia db upgrade` (CLI, also for the embedded database)
both end up in `alembic/env.py`, which uses the helpers here.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeDecorator

from alembic import command
from amelia.server.config import ConfigurationError, parse_database_url, sqlalchemy_url
from amelia.server.database.schema import CHECKPOINT_TABLES
from amelia.server.database.seed import seed_defaults

# Session advisory lock taken around every upgrade/downgrade ("amelia" + 1, as a bigint).
MIGRATION_LOCK_KEY = 0x616D656C69610001
DEFAULT_LOCK_TIMEOUT_S = 300

PROJECT_ROOT = Path(__file__).resolve().parents[3]
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"


class MigrationLockTimeout(RuntimeError):
    """Another process held the migration lock for longer than we were willing to wait."""


@dataclass(frozen=True)
class MigrationStatus:
    """Where a database stands relative to the code's migrations."""

    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def alembic_config(url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic `Config` for our migrations, optionally bound to a URL or a connection."""
    if not ALEMBIC_INI.exists():
        raise ConfigurationError(
            f"Alembic files not found at {ALEMBIC_INI}; run Amelia from its source tree "
            "(pip install -e .)"
        )
    cfg = Config(str(ALEMBIC_INI))
    if url is not None:
        cfg.attributes["url"] = url
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def url_for_alembic(cfg: Config) -> str:
    """The asyncpg URL Alembic should use: the CLI's, else `AMELIA_DATABASE_URL`."""
    raw = cfg.attributes.get("url") or os.environ.get("AMELIA_DATABASE_URL", "").strip()
    if not raw:
        raise CommandError(
            "AMELIA_DATABASE_URL is not set, so Alembic does not know which database to "
            "migrate. Set it (postgresql://user:password@host:5432/amelia), or run "
            "`amelia db upgrade`, which also knows the embedded database."
        )
    try:
        url = parse_database_url(str(raw))
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    return sqlalchemy_url(url).render_as_string(hide_password=False)


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Hide LangGraph's checkpoint tables from autogenerate: the saver owns them."""
    return not (type_ == "table" and name in CHECKPOINT_TABLES)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | bool:
    """Render our TypeDecorators as their plain SQLAlchemy types in revision files.

    Revisions must not import application code, which keeps changing after they land.
    """
    if type_ == "type" and isinstance(obj, TypeDecorator):
        autogen_context.imports.add("import sqlalchemy as sa")
        return f"sa.{obj.impl!r}"
    return False


def configure_kwargs(metadata: MetaData) -> dict[str, Any]:
    """Options for `context.configure` (set here: on the Config object they do nothing)."""
    return {
        "target_metadata": metadata,
        "include_name": include_name,
        "render_item": render_item,
        "compare_type": True,
        "compare_server_default": True,
    }


@contextmanager
def migration_lock(
    connection: Connection, timeout_s: int = DEFAULT_LOCK_TIMEOUT_S
) -> Iterator[None]:
    """Hold the migration advisory lock on `connection` for the duration of the block.

    The lock is session-level, so it survives the commit that follows; committing before
    Alembic starts matters: otherwise Alembic sees an outer transaction and never commits.
    """
    connection.execute(text("SELECT set_config('lock_timeout', :t, false)"), {"t": f"{timeout_s}s"})
    try:
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    except Exception as exc:
        connection.rollback()
        if "lock timeout" in str(exc).lower() or "55P03" in str(getattr(exc, "orig", "")):
            raise MigrationLockTimeout(
                f"another process held the migration lock for more than {timeout_s}s"
            ) from exc
        raise
    connection.execute(text("SELECT set_config('lock_timeout', '0', false)"))
    connection.commit()
    try:
        yield
    finally:
        if connection.in_transaction():
            connection.rollback()
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
        connection.commit()


def head_revision() -> str:
    """The newest revision in the code."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the project always ships revisions
        raise RuntimeError("no Alembic revisions found")
    return head


def current_revision_sync(connection: Connection) -> str | None:
    """The revision recorded in the database (None for an empty database)."""
    return MigrationContext.configure(connection).get_current_revision()


def seed_if_at_head(connection: Connection, cfg: Config) -> None:
    """After migrating to head, insert the built-in defaults (never overwrites)."""
    head = ScriptDirectory.from_config(cfg).get_current_head()
    if head is None or current_revision_sync(connection) != head:
        return
    seed_defaults(connection)
    connection.commit()


def _upgrade_sync(url: str, revision: str) -> None:
    command.upgrade(alembic_config(url), revision)


def _downgrade_sync(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at `url` (in a worker thread: Alembic runs its own loop)."""
    await asyncio.to_thread(_upgrade_sync, url, revision)


async def downgrade(url: str, revision: str) -> None:
    """Downgrade the database at `url` to `revision` (e.g. "base")."""
    await asyncio.to_thread(_downgrade_sync, url, revision)


async def status(connection: Any) -> MigrationStatus:
    """Current and head revision for an `AsyncConnection`."""
    current = await connection.run_sync(current_revision_sync)
    return MigrationStatus(current=current, head=head_revision())
