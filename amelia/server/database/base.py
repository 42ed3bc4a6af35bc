"""What every repository shares: where its connection comes from.

A repository built from a `Database` checks out a pooled connection per call: AUTOCOMMIT for
single statements (one round trip), a transaction for multi-statement methods. A repository
bound to a connection the caller holds (`repo.bind(conn)`) runs every call on it, so one HTTP
request can make several calls with one checkout; multi-statement methods then use a
SAVEPOINT inside the caller's transaction, or a short transaction of their own when the held
connection is in AUTOCOMMIT mode.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Self

import asyncpg
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util import greenlet_spawn

from amelia.server.database.connection import Database, DatabaseConnectionError
from amelia.server.database.errors import translate_integrity_errors
from amelia.server.database.fast_query import FastQuery

# Failures that mean the connection itself is gone (it must not go back into the pool).
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    # FATAL errors of a backend going away (57P01-03): the socket may not look closed yet.
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InternalClientError,  # caught mid-way through going away
)


class RepositoryBase:
    """Base of every repository: a `Database` and, optionally, a held connection."""

    def __init__(self, db: Database, connection: AsyncConnection | None = None) -> None:
        self._db = db
        self._held = connection

    @property
    def db(self) -> Database:
        """The `Database` this repository uses."""
        return self._db

    def bind(self, connection: AsyncConnection) -> Self:
        """A copy of this repository that runs every call on `connection`."""
        bound = copy.copy(self)
        bound._held = connection
        return bound

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for single-statement work (each statement is atomic on its own)."""
        if self._held is not None:
            yield self._held
            return
        async with self._db.connection() as conn:
            yield conn

    @asynccontextmanager
    async def _driver(self) -> AsyncIterator[Any]:
        """The asyncpg connection under the held (or a freshly checked out) connection."""
        if self._held is not None:
            sync = self._held.sync_connection
            if sync is not None and not sync.closed and not sync.invalidated:
                # A plain attribute read: no greenlet hop for a connection already held.
                yield sync.connection.driver_connection
            else:
                yield (await self._held.get_raw_connection()).driver_connection
            return
        raw = await self._db.engine.raw_connection()
        try:
            yield raw.driver_connection
        except _CONNECTION_LOST as exc:
            # Passing the error lets the pool's listeners see why (a timeout is an outage).
            await greenlet_spawn(raw.invalidate, exc)
            raise
        finally:
            # Check-in may close an overflow connection, which is I/O: it must run inside
            # SQLAlchemy's greenlet bridge (outside it the close fails and the connection leaks).
            await greenlet_spawn(raw.close)

    async def _fast_all(
        self, query: FastQuery, params: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Run a prebuilt statement on the asyncpg connection; rows as dicts.

        Inside a caller's transaction the statement goes through SQLAlchemy instead, so it
        is part of that transaction (SQLAlchemy begins it lazily, on its first statement).
        Integrity errors become domain errors either way.
        """
        values = dict(params or {})
        held = self._held
        with translate_integrity_errors():
            if held is not None and not is_autocommit(held):
                result = await held.execute(query.statement, values)
                return [dict(row) for row in result.mappings()] if result.returns_rows else []
            compiled = query.compiled(self._db.engine.dialect)
            arguments = compiled.arguments(values)
            for listener in self._db.direct_statement_listeners:
                listener(compiled.sql, tuple(arguments))
            try:
                async with self._driver() as driver:
                    records = await driver.fetch(compiled.sql, *arguments)
            except _CONNECTION_LOST as exc:
                # A read on a connection that died under it (restart, terminated backend)
                # runs again on a fresh one: nothing to undo. Not a timeout (the database
                # is unreachable), not on a connection the caller holds.
                if held is not None or not isinstance(query.statement, Select):
                    raise
                if isinstance(exc, TimeoutError | DatabaseConnectionError):
                    raise
                async with self._driver() as driver:
                    records = await driver.fetch(compiled.sql, *arguments)
            return compiled.rows(records)

    async def _fast_one(
        self, query: FastQuery, params: Mapping[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """The first row of a prebuilt statement, or None."""
        rows = await self._fast_all(query, params)
        return rows[0] if rows else None

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside a transaction that commits (or rolls back) as one unit."""
        held = self._held
        if held is None:
            async with self._db.transaction() as conn:
                yield conn
            return
        if is_autocommit(held):
            # A logical (autobegun) transaction on an AUTOCOMMIT connection holds nothing on
            # the server; end it, switch the client-side flag (no round trip with asyncpg),
            # run a real transaction, and switch back.
            if held.in_transaction():
                await held.commit()
            await held.execution_options(isolation_level="READ COMMITTED")
            try:
                async with held.begin():
                    yield held
            finally:
                await held.execution_options(isolation_level="AUTOCOMMIT")
            return
        if held.in_transaction():
            async with held.begin_nested():
                yield held
            return
        async with held.begin():
            yield held


def is_autocommit(connection: AsyncConnection) -> bool:
    """Whether a connection came from `Database.connection()` (AUTOCOMMIT)."""
    level = connection.sync_connection.get_execution_options().get("isolation_level")  # type: ignore[union-attr]
    return level == "AUTOCOMMIT"
