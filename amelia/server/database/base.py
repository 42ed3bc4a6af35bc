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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Self

from sqlalchemy.ext.asyncio import AsyncConnection

from amelia.server.database.connection import Database


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
