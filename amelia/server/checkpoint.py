"""LangGraph checkpoints on PostgreSQL: the saver's tables and (later) its own psycopg pool.

The saver owns `checkpoints`, `checkpoint_blobs`, `checkpoint_writes` and
`checkpoint_migrations`; we create them with its own `setup()`, never with our SQL.
"""

from __future__ import annotations

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row

from amelia.server.database.migrations import DEFAULT_LOCK_TIMEOUT_S, MIGRATION_LOCK_KEY


async def setup_checkpoint_tables(conninfo: str) -> None:
    """Create or upgrade the saver's tables under the migration advisory lock.

    `setup()` uses CREATE INDEX CONCURRENTLY, so the connection must be in autocommit mode.
    """
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    conn: AsyncConnection[DictRow] = await AsyncConnection.connect(
        conninfo, autocommit=True, prepare_threshold=0, row_factory=dict_row
    )
    async with conn:
        await conn.execute(
            "SELECT set_config('lock_timeout', %s, false)", (f"{DEFAULT_LOCK_TIMEOUT_S}s",)
        )
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        try:
            await AsyncPostgresSaver(conn).setup()
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


CHECKPOINT_SETUP_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
