"""Alembic environment for the Amelia schema.

- The URL comes from AMELIA_DATABASE_URL (or `config.attributes["url"]` when the CLI calls
  Alembic); a caller that already holds a connection passes it as `attributes["connection"]`.
- Every upgrade and downgrade runs under one PostgreSQL session advisory lock, so several
  instances migrating at once take turns instead of racing.
- LangGraph's checkpoint tables live in the same database and are invisible to autogenerate.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from amelia.server.database.migrations import (
    configure_kwargs,
    migration_lock,
    seed_if_at_head,
    url_for_alembic,
)
from amelia.server.database.schema import metadata

config = context.config


def run_migrations_offline() -> None:
    """Emit SQL to stdout (`alembic upgrade head --sql`) without connecting."""
    context.configure(
        url=url_for_alembic(config),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        **configure_kwargs(metadata),
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    with migration_lock(connection):
        context.configure(connection=connection, **configure_kwargs(metadata))
        with context.begin_transaction():
            context.run_migrations()
        seed_if_at_head(connection, config)


async def run_async_migrations() -> None:
    engine = create_async_engine(url_for_alembic(config), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    shared = config.attributes.get("connection")
    if shared is not None:
        do_run_migrations(shared)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
