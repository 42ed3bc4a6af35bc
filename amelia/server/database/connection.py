"""`Database`: the process's one async engine, its connections and transactions.

Single-statement work runs on an AUTOCOMMIT connection (one round trip: no BEGIN/COMMIT around
it); several statements that must commit together run in `transaction()`. Both share one pool.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Self

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from amelia.server.config import ServerConfig, redact_url, sqlalchemy_url
from amelia.server.database.types import json_dumps

logger = logging.getLogger(__name__)

URL_SETTING = "AMELIA_DATABASE_URL"

# SQLSTATEs of connection-time failures the user can fix by changing the URL or the server.
_INVALID_PASSWORD = "28P01"
_INVALID_AUTHORIZATION = "28000"
_INVALID_CATALOG = "3D000"
_CANNOT_CONNECT_NOW = "57P03"


class DatabaseConnectionError(ConnectionError):
    """The database cannot be reached or refused us; the message says what to change."""


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) else None


def _where(url: URL) -> str:
    host = url.host or url.query.get("host") or "localhost"
    if isinstance(host, tuple):
        host = ",".join(host)
    port = url.port or 5432
    return f"host {host}, port {port}, database {url.database!r}, user {url.username!r}"


def describe_connection_failure(exc: BaseException, url: URL) -> DatabaseConnectionError:
    """Turn a driver's connection failure into an error naming the target and the fix."""
    where = _where(url)
    shown = redact_url(url)
    code = _sqlstate(exc)
    if code == _INVALID_PASSWORD or (code == _INVALID_AUTHORIZATION and url.password):
        reason = "the server rejected the user name or password"
        fix = f"put the right user and password in {URL_SETTING}"
    elif code == _INVALID_AUTHORIZATION:
        reason = "the server refused this user"
        fix = f"use an existing role in {URL_SETTING} (or create it with createuser)"
    elif code == _INVALID_CATALOG:
        reason = f"database {url.database!r} does not exist"
        fix = f"create it (createdb {url.database}) or point {URL_SETTING} at an existing database"
    elif code == _CANNOT_CONNECT_NOW:
        reason = "the server is starting up or shutting down"
        fix = "retry in a moment"
    elif isinstance(exc, ConnectionRefusedError):
        reason = "the connection was refused (is PostgreSQL running and listening there?)"
        fix = f"start PostgreSQL (make db-up) or correct the host/port in {URL_SETTING}"
    elif isinstance(exc, socket.gaierror):
        reason = "the host name could not be resolved"
        fix = f"correct the host in {URL_SETTING}"
    elif isinstance(exc, TimeoutError):
        reason = "the connection attempt timed out"
        fix = f"check the host/port in {URL_SETTING} and that the server is reachable"
    else:
        reason = f"{type(exc).__name__}: {exc}"
        fix = f"check {URL_SETTING}"
    return DatabaseConnectionError(
        f"Cannot connect to PostgreSQL at {where} ({shown}): {reason}. To fix: {fix}."
    )


class Database:
    """Owns the `AsyncEngine` (one per process) and hands out connections.

    Args:
        database_url: a `postgresql://` (or `postgres://`) URL; the asyncpg driver is implied.
        min_size: connections kept open (`pool_size`).
        max_size: upper bound on open connections (`pool_size + max_overflow`).
        pool_timeout: seconds to wait for a free connection before failing.
        connect_timeout: seconds to wait for a new connection to open.
        statement_timeout_ms: server-side statement timeout; 0 disables it.
        application_name: shown in `pg_stat_activity`, so our backends can be found.
    """

    def __init__(
        self,
        database_url: str | URL,
        min_size: int = 2,
        max_size: int = 10,
        *,
        pool_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        statement_timeout_ms: int = 30_000,
        application_name: str = "amelia",
    ) -> None:
        if min_size > max_size:
            raise ValueError(f"min_size ({min_size}) is larger than max_size ({max_size})")
        url = make_url(database_url) if isinstance(database_url, str) else database_url
        self._url = url.set(drivername="postgresql")
        self._min_size = min_size
        self._max_size = max_size
        self._pool_timeout = pool_timeout
        self._connect_timeout = connect_timeout
        self._statement_timeout_ms = statement_timeout_ms
        self._application_name = application_name
        self._engine: AsyncEngine | None = None
        self._autocommit: AsyncEngine | None = None
        # Told the SQL of each statement that bypasses SQLAlchemy's execution layer (the fast
        # read path), the way engine events are told of the others: tests count round trips.
        self.direct_statement_listeners: list[Callable[[str, tuple[Any, ...]], None]] = []

    @classmethod
    def from_config(cls, config: ServerConfig, database_url: str | URL) -> Database:
        """Build a `Database` with the pool and timeout settings of a `ServerConfig`."""
        return cls(
            database_url,
            config.db_pool_min_size,
            config.db_pool_max_size,
            pool_timeout=config.db_pool_timeout_seconds,
            connect_timeout=config.db_connect_timeout_seconds,
            statement_timeout_ms=config.db_statement_timeout_ms,
            application_name=config.db_application_name,
        )

    @property
    def url(self) -> URL:
        """The target URL (bare `postgresql` scheme)."""
        return self._url

    @property
    def redacted_url(self) -> str:
        """The target URL with the password hidden, for messages."""
        return redact_url(self._url)

    @property
    def engine(self) -> AsyncEngine:
        """The engine; `RuntimeError` before `connect()`."""
        if self._engine is None:
            raise RuntimeError("Database is not connected; call connect() first")
        return self._engine

    @property
    def is_connected(self) -> bool:
        return self._engine is not None

    async def connect(self) -> None:
        """Create the engine and prove a connection works.

        Raises:
            DatabaseConnectionError: the server is unreachable or refuses us (names host,
                port, database and the setting to change).
        """
        if self._engine is not None:
            return
        # JIT compilation costs more than it saves for our short statements.
        server_settings = {"application_name": self._application_name, "jit": "off"}
        if self._statement_timeout_ms:
            server_settings["statement_timeout"] = str(self._statement_timeout_ms)
        engine = create_async_engine(
            sqlalchemy_url(self._url),
            pool_size=self._min_size,
            max_overflow=self._max_size - self._min_size,
            pool_timeout=self._pool_timeout,
            # No pre-ping: it costs a round trip on every checkout. Dead connections are
            # detected on use and invalidated; connections are recycled by age.
            pool_pre_ping=False,
            pool_recycle=1800,
            json_serializer=json_dumps,
            connect_args={"server_settings": server_settings, "timeout": self._connect_timeout},
        )
        try:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (DBAPIError, OSError, TimeoutError) as exc:
            await engine.dispose()
            raise describe_connection_failure(exc, self._url) from exc
        self._engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        logger.info("connected to %s", self.redacted_url)

    async def close(self) -> None:
        """Dispose of the pool; never raises."""
        engine, self._engine, self._autocommit = self._engine, None, None
        if engine is None:
            return
        try:
            await engine.dispose()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            logger.warning("error while closing the database pool: %s", exc)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection in AUTOCOMMIT mode: each statement commits on its own."""
        if self._autocommit is None:
            raise RuntimeError("Database is not connected; call connect() first")
        async with self._autocommit.connect() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One connection inside one READ COMMITTED transaction.

        Commits when the block exits normally, rolls back when it raises. Statements must be
        issued on the yielded connection.
        """
        async with self.engine.begin() as conn:
            yield conn

    async def is_healthy(self) -> bool:
        """True when a round trip to the server succeeds."""
        if self._autocommit is None:
            return False
        try:
            async with self.connection() as conn:
                value: object = await conn.scalar(text("SELECT 1"))
        except (SQLAlchemyError, OSError, TimeoutError):
            return False
        return value == 1

    def pool_status(self) -> dict[str, Any]:
        """Pool figures for the health endpoint."""
        if self._engine is None:
            return {"connected": False}
        pool: Any = self._engine.pool
        return {
            "connected": True,
            "size": pool.size(),
            "checked_out": pool.checkedout(),
            "idle": pool.checkedin(),
            "overflow": max(0, pool.overflow()),
            "max_size": self._max_size,
        }
