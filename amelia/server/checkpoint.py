"""LangGraph checkpoints on PostgreSQL: the saver's tables, its own psycopg pool, its saver.

The saver owns `checkpoints`, `checkpoint_blobs`, `checkpoint_writes`, `checkpoint_migrations`:
its own `setup()` creates them (`amelia db upgrade`) and everything else goes through the
saver's API (our one query here is the start-up check of their version). `CheckpointStore`,
opened in the app lifespan, owns a psycopg pool (the saver needs psycopg, not asyncpg) and a
`PooledPostgresSaver` (`checkpoint_saver`): the stock saver takes one asyncio lock around every
call even on a pool, so concurrent workflows queue behind each other; ours gives each call its
own connection and writes the same rows in fewer statements.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.engine import URL, make_url

from amelia.server.checkpoint_saver import CheckpointTimeout, PooledPostgresSaver
from amelia.server.cluster.fenced_saver import FencedSaver
from amelia.server.config import ServerConfig, psycopg_conninfo, redact_url
from amelia.server.database.connection import DatabaseConnectionError, describe_connection_failure
from amelia.server.database.migrations import DEFAULT_LOCK_TIMEOUT_S, MIGRATION_LOCK_KEY

logger = logging.getLogger(__name__)

CHECKPOINT_SETUP_TABLES = ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
_VERSION_TABLE = "checkpoint_migrations"

# Amelia types that may appear in graph state, as exact (module, class name) pairs: the
# serializer refuses to revive anything else (LangGraph supports no module prefixes).
# Every new type stored in graph state must be added here.
CHECKPOINT_ALLOWED_TYPES: tuple[tuple[str, str], ...] = ()


async def setup_checkpoint_tables(conninfo: str) -> None:
    """Create or upgrade the saver's tables under the migration advisory lock.

    `setup()` uses CREATE INDEX CONCURRENTLY, so the connection must be in autocommit mode.
    """
    conn: AsyncConnection[DictRow] = await AsyncConnection.connect(
        conninfo, autocommit=True, prepare_threshold=0, row_factory=dict_row
    )
    async with conn:
        if await _saver_version(conn) >= len(AsyncPostgresSaver.MIGRATIONS) - 1:
            return  # already current: several servers starting at once need no lock
        # Wait for the lock by polling, never inside a statement: CREATE INDEX CONCURRENTLY
        # in the holder waits for every open transaction, a blocked lock call included,
        # which would deadlock two servers starting on a new database.
        deadline = time.monotonic() + DEFAULT_LOCK_TIMEOUT_S
        while True:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (MIGRATION_LOCK_KEY,))
            row = await cur.fetchone()
            if row is not None and row["ok"]:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"another process held the migration lock for {DEFAULT_LOCK_TIMEOUT_S}s"
                )
            await asyncio.sleep(0.1)
        try:
            await AsyncPostgresSaver(conn).setup()
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))


async def _saver_version(conn: AsyncConnection[DictRow]) -> int:
    """The saver's schema version in the database, -1 when its tables are not there."""
    cur = await conn.execute("SELECT to_regclass(%s) IS NOT NULL AS present", (_VERSION_TABLE,))
    row = await cur.fetchone()
    if row is None or not row["present"]:
        return -1
    cur = await conn.execute("SELECT max(v) AS v FROM checkpoint_migrations")
    row = await cur.fetchone()
    return -1 if row is None or row["v"] is None else int(row["v"])


class CheckpointSchemaError(RuntimeError):
    """The saver's tables are missing or older than this code expects."""


def checkpoint_serializer(
    extra_types: Iterable[tuple[str, str] | type] = (),
) -> JsonPlusSerializer:
    """The saver's serializer, reviving only safe LangGraph types and our allow-list.

    Args:
        extra_types: more (module, class name) pairs or classes to allow (tests, plugins).
    """
    allowed: list[tuple[str, str] | type] = [*CHECKPOINT_ALLOWED_TYPES, *extra_types]
    # An empty list means "safe types only" to LangGraph, which is what we want then too.
    return JsonPlusSerializer(
        allowed_json_modules=[_type_key(t) for t in allowed] or None,
        allowed_msgpack_modules=allowed or None,
    )


def _type_key(entry: tuple[str, str] | type) -> tuple[str, ...]:
    return (entry.__module__, entry.__name__) if isinstance(entry, type) else entry


def thread_id_for(workflow_id: uuid.UUID | str) -> str:
    """The LangGraph thread id of a workflow: its id as a canonical string.

    A UUID-looking string is normalised (case, braces) so every caller hits the same thread.
    """
    if isinstance(workflow_id, uuid.UUID):
        return str(workflow_id)
    try:
        return str(uuid.UUID(workflow_id))
    except ValueError:
        return workflow_id


def thread_config(workflow_id: uuid.UUID | str) -> RunnableConfig:
    """The `RunnableConfig` selecting a workflow's checkpoint thread (thread_id is a str)."""
    return {"configurable": {"thread_id": thread_id_for(workflow_id)}}


class CheckpointStore:
    """The checkpointer's psycopg pool and saver, opened and closed with the app.

    Use as `async with CheckpointStore(...) as store:` or call `open()`/`close()`.

    Args:
        database_url: a `postgresql://` URL (the password is kept only for connecting).
        min_size: connections kept open.
        max_size: upper bound on open connections.
        prepare_threshold: psycopg's `prepare_threshold`; None disables prepared statements
            (needed behind a transaction-mode pooler).
        application_name: shown in `pg_stat_activity`.
        statement_timeout_ms: server-side statement timeout; 0 disables it. A call that has
            no answer one second after it (the server would have cancelled the statement by
            then, so the link or the server is gone) fails with `CheckpointTimeout`, as the
            SQLAlchemy side does, instead of hanging until the network heals.
        open_timeout: seconds `open()` waits for the pool's first connections.
        pool_timeout: seconds a call waits for a free pooled connection.
        check_connections: also check each connection as it is checked out (one more round
            trip per call). Off by default: the saver already retries its calls on another
            connection when theirs is dead.
        toast_compression: `default_toast_compression` of the pool's sessions when the server
            supports it (`lz4`, `pglz`); None keeps the server's setting.
        serde: the saver's serializer; `checkpoint_serializer()` by default.
    """

    def __init__(
        self,
        database_url: str | URL,
        *,
        min_size: int = 1,
        max_size: int = 10,
        prepare_threshold: int | None = 0,
        application_name: str = "amelia-checkpoints",
        statement_timeout_ms: int = 30_000,
        open_timeout: float = 10.0,
        pool_timeout: float = 10.0,
        check_connections: bool = False,
        toast_compression: str | None = "lz4",
        serde: SerializerProtocol | None = None,
    ) -> None:
        if min_size > max_size:
            raise ValueError(f"min_size ({min_size}) is larger than max_size ({max_size})")
        url = make_url(database_url) if isinstance(database_url, str) else database_url
        self._url = url.set(drivername="postgresql")
        self._min_size = min_size
        self._max_size = max_size
        self._open_timeout = open_timeout
        self._pool_timeout = pool_timeout
        self._check_connections = check_connections
        self._toast_compression = toast_compression
        self._serde = serde
        self._connect_kwargs: dict[str, Any] = {
            "autocommit": True,  # the saver's setup/pipelines expect it; one commit per call
            "row_factory": dict_row,
            "prepare_threshold": prepare_threshold,
            "application_name": application_name[:63],
            "connect_timeout": max(2, round(open_timeout)),  # libpq: whole seconds, >= 2
        }
        self._deadline: float | None = None
        if statement_timeout_ms:
            self._connect_kwargs["options"] = f"-c statement_timeout={statement_timeout_ms}"
            self._deadline = statement_timeout_ms / 1000 + 1
        self._pool: AsyncConnectionPool[AsyncConnection[DictRow]] | None = None
        self._saver: PooledPostgresSaver | None = None

    @classmethod
    def from_config(cls, config: ServerConfig, database_url: str | URL) -> CheckpointStore:
        """A store with the `checkpoint_*` and `db_*` settings of a `ServerConfig`."""
        return cls(
            database_url,
            min_size=config.checkpoint_pool_min_size,
            max_size=config.checkpoint_pool_max_size,
            prepare_threshold=config.checkpoint_prepare_threshold,
            application_name=f"{config.db_application_name}-checkpoints",
            statement_timeout_ms=config.db_statement_timeout_ms,
            open_timeout=config.db_connect_timeout_seconds,
            pool_timeout=config.db_pool_timeout_seconds,
        )

    @property
    def redacted_url(self) -> str:
        """The target URL with the password hidden, for messages."""
        return redact_url(self._url)

    @property
    def pool(self) -> AsyncConnectionPool[AsyncConnection[DictRow]]:
        """The open pool; `RuntimeError` before `open()`."""
        if self._pool is None:
            raise RuntimeError("CheckpointStore is not open; call open() first")
        return self._pool

    @property
    def saver(self) -> PooledPostgresSaver:
        """The saver to pass as `checkpointer=`; `RuntimeError` before `open()`."""
        if self._saver is None:
            raise RuntimeError("CheckpointStore is not open; call open() first")
        return self._saver

    async def open(self) -> PooledPostgresSaver:
        """Open the pool (waiting for its first connections) and build the saver.

        Must run inside the event loop that will use the saver.

        Raises:
            DatabaseConnectionError: no connection within `open_timeout` (names host, port,
                database and AMELIA_DATABASE_URL; the password is redacted).
        """
        if self._saver is not None:
            return self._saver
        check = AsyncConnectionPool.check_connection if self._check_connections else None
        pool = AsyncConnectionPool(
            psycopg_conninfo(self._url),
            connection_class=AsyncConnection[DictRow],
            kwargs=self._connect_kwargs,
            min_size=self._min_size,
            max_size=self._max_size,
            open=False,
            check=check,
            configure=self._configure,
            name="amelia-checkpoints",
            timeout=self._pool_timeout,
        )
        try:
            await pool.open(wait=True, timeout=self._open_timeout)
            # With min_size 0 nothing was connected yet: prove one connection works.
            async with pool.connection(timeout=self._open_timeout) as conn:
                await conn.execute("SELECT 1")
        except psycopg.OperationalError as exc:  # PoolTimeout is one
            await pool.close()
            raise await self._connection_error(exc) from exc
        self._pool = pool
        # Fenced: inside a run, writes are refused once another process owns the run.
        self._saver = FencedSaver(
            pool, serde=self._serde or checkpoint_serializer(), deadline=self._deadline
        )
        logger.info("checkpoint pool open on %s (max %d)", self.redacted_url, self._max_size)
        return self._saver

    async def _configure(self, conn: AsyncConnection[DictRow]) -> None:
        # Checkpoint values are large: lz4 compresses them several times faster than the
        # default pglz (pglz was a quarter of the server's CPU per write) and reads back the
        # same for every client. A no-op when the server was built without the method.
        if self._toast_compression:
            method = self._toast_compression
            await conn.execute(
                "SELECT set_config('default_toast_compression', %s, false) FROM pg_settings "
                "WHERE name = 'default_toast_compression' AND %s = ANY(enumvals)",
                (method, method),
            )

    async def _connection_error(self, exc: psycopg.OperationalError) -> DatabaseConnectionError:
        cause: BaseException = exc
        if isinstance(exc, PoolTimeout):
            # The pool only says it timed out; one direct attempt tells the user why.
            try:
                conn = await AsyncConnection.connect(
                    psycopg_conninfo(self._url), **self._connect_kwargs
                )
            except (psycopg.Error, OSError) as direct:
                cause = direct
            else:
                await conn.close()
                cause = TimeoutError(f"no pooled connection within {self._open_timeout:g} s")
        return DatabaseConnectionError(
            f"Checkpoint pool: {describe_connection_failure(cause, self._url)}"
        )

    async def close(self) -> None:
        """Close the pool; never raises. Calls still running are cut off."""
        pool, self._pool, self._saver = self._pool, None, None
        if pool is None:
            return
        try:
            await pool.close()
        except (psycopg.Error, OSError, RuntimeError) as exc:
            logger.warning("error while closing the checkpoint pool: %s", exc)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def verify_tables(self) -> int:
        """Check at start-up that the saver's tables exist at the saver's latest version.

        Returns:
            The version found in `checkpoint_migrations`.

        Raises:
            CheckpointSchemaError: tables missing or older than the installed saver; the
                message says to run `amelia db upgrade`.
        """
        needed = len(PooledPostgresSaver.MIGRATIONS) - 1
        where = f"database {self._url.database!r} ({self.redacted_url})"
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NULL",
                ([*CHECKPOINT_SETUP_TABLES, _VERSION_TABLE],),
            )
            missing = [row["name"] for row in await cur.fetchall()]
            if missing:
                raise CheckpointSchemaError(
                    f"LangGraph checkpoint tables are missing in {where}: "
                    f"{', '.join(missing)}. Run `amelia db upgrade` to create them."
                )
            cur = await conn.execute("SELECT max(v) AS v FROM checkpoint_migrations")
            row = await cur.fetchone()
        found = -1 if row is None or row["v"] is None else int(row["v"])
        if found < needed:
            raise CheckpointSchemaError(
                f"LangGraph checkpoint tables in {where} are at version {found}, but the "
                f"installed saver needs version {needed}. Run `amelia db upgrade`."
            )
        if found > needed:
            # A newer Amelia migrated this database (rolling deploy): the saver's migrations
            # only add, so an older saver keeps working; say so rather than refuse to start.
            logger.warning(
                "checkpoint tables are at version %d, newer than this saver's %d", found, needed
            )
        return found

    async def delete_threads(self, workflow_ids: Iterable[uuid.UUID | str]) -> int:
        """Delete the checkpoint threads of these workflows through `adelete_thread`.

        Runs concurrently, at most `max_size` at a time (more would only queue for the pool
        and could time out there). A database error on one thread is logged and skipped.

        Args:
            workflow_ids: workflow ids (UUIDs or their strings); duplicates are ignored.

        Returns:
            How many threads were deleted without error (a thread with no checkpoints counts;
            a database error or a `CheckpointTimeout` on one is logged and not counted).
        """
        saver = self.saver
        thread_ids = list(dict.fromkeys(thread_id_for(w) for w in workflow_ids))
        gate = asyncio.Semaphore(self._max_size)

        async def delete(thread_id: str) -> bool:
            async with gate:
                try:
                    await saver.adelete_thread(thread_id)
                except (psycopg.Error, CheckpointTimeout) as exc:
                    logger.warning("could not delete checkpoints of %s: %s", thread_id, exc)
                    return False
                return True

        results = await asyncio.gather(*(delete(t) for t in thread_ids))
        return sum(results)
