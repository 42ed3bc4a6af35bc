"""`Database`: the process's one async engine, its connections and transactions.

Single-statement work runs on an AUTOCOMMIT connection (one round trip: no BEGIN/COMMIT around
it); several statements that must commit together run in `transaction()`. Both share one pool.

Faults are survived here, below every repository:
- every statement has a client-side deadline (the statement timeout plus one second): a
  statement that gets no answer by then never will (the link is gone), so its connection is
  discarded rather than pooled again, and the database is reported unreachable;
- a pooled connection the server closed while it sat idle (restart, terminated backend) is
  replaced on checkout, at no cost (no round trip; see lost_connections.py);
- new connections pass the `Availability` gate: during a restart they wait for the server
  (up to the pool timeout), when it is unreachable they fail at once with a 503.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from types import TracebackType
from typing import Any, Self

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from amelia.server.config import ServerConfig, redact_url, sqlalchemy_url
from amelia.server.database.availability import (
    Availability,
    DatabaseConnectionError,
    DatabaseUnavailableError,
)
from amelia.server.database.event_hints import (
    DEFERRED_HINTS_SETTING,
    DEFERRED_HINTS_VALUE,
    EventHints,
)
from amelia.server.database.lost_connections import (
    DRIVER_LOST,
    connection_lost,
    discard,
    on_error,
    retry_if_connection_lost,
    server_spoke,
)
from amelia.server.database.types import json_dumps

__all__ = [
    "Database",
    "DatabaseConnectionError",
    "DatabaseUnavailableError",
    "connection_lost",
    "describe_connection_failure",
    "retry_if_connection_lost",
]


logger = logging.getLogger(__name__)

URL_SETTING = "AMELIA_DATABASE_URL"
# Notifications are delivered in the order a transaction sent them.
EVENT_HINTS_SQL = (
    "SELECT pg_notify(channel, payload) "
    "FROM unnest($1::text[], $2::text[]) AS notice(channel, payload)"
)

# SQLSTATEs of connection-time failures the user can fix by changing the URL or the server.
_INVALID_PASSWORD = "28P01"
_INVALID_AUTHORIZATION = "28000"
_INVALID_CATALOG = "3D000"
_CANNOT_CONNECT_NOW = "57P03"


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
        min_size: connections opened at start (the pool keeps every connection it opens).
        max_size: upper bound on open connections (SQLAlchemy `pool_size`, no overflow).
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
        self._connect_params: dict[str, Any] = {}
        # A restart is waited out for as long as a free connection would be.
        self._availability = Availability(self._probe, wait_s=pool_timeout)
        # Told the SQL of each statement that bypasses SQLAlchemy's execution layer (the fast
        # read path), the way engine events are told of the others: tests count round trips.
        self.direct_statement_listeners: list[Callable[[str, tuple[Any, ...]], None]] = []
        # Our connections send the hints of the events they store themselves, batched.
        self.event_hints = EventHints(self._notify_events)
        # The hints' own connection: behind a busy pool they would wait for a free one.
        self._hints_conn: asyncpg.Connection | None = None

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

    @property
    def availability(self) -> Availability:
        """The outage state of this database (a 503 is answered while it says so)."""
        return self._availability

    async def connect(self) -> None:
        """Create the engine and prove a connection works.

        Raises:
            DatabaseConnectionError: the server is unreachable or refuses us (names host,
                port, database and the setting to change).
        """
        if self._engine is not None:
            return
        engine = create_async_engine(
            sqlalchemy_url(self._url),
            # Every connection opened is kept (up to max_size): an overflow connection that
            # is closed on return must be opened again under the next burst, and opening
            # one costs far more than the statement it serves. min_size are opened at start.
            pool_size=self._max_size,
            max_overflow=0,
            pool_timeout=self._pool_timeout,
            # No pre-ping: it costs a round trip on every checkout. Connections the server
            # closed are replaced on checkout (`_on_checkout`), others that turn out dead
            # are invalidated on use; connections are recycled by age.
            pool_pre_ping=False,
            pool_recycle=1800,
            json_serializer=json_dumps,
            async_creator=self._open_connection,
        )
        _, params = engine.dialect.create_connect_args(engine.url)
        self._connect_params = dict(params)
        event.listen(engine.sync_engine.pool, "checkout", self._on_checkout)
        event.listen(engine.sync_engine.pool, "invalidate", self._on_invalidate)
        event.listen(engine.sync_engine, "handle_error", on_error)
        try:
            async with AsyncExitStack() as warm:
                # Prove a connection works, and open the first min_size together.
                for _ in range(max(self._min_size, 1)):
                    conn = await warm.enter_async_context(engine.connect())
                    await conn.execute(text("SELECT 1"))
        except (DBAPIError, OSError, TimeoutError) as exc:
            await engine.dispose()
            raise describe_connection_failure(exc, self._url) from exc
        self._engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        logger.info("connected to %s", self.redacted_url)

    def _connect_kwargs(self, timeout: float) -> dict[str, Any]:
        # JIT compilation costs more than it saves for our short statements.
        server_settings = {
            "application_name": self._application_name,
            "jit": "off",
            # The `workflow_log` trigger leaves the event hints to `event_hints` (batched).
            DEFERRED_HINTS_SETTING: DEFERRED_HINTS_VALUE,
        }
        kwargs: dict[str, Any] = {**self._connect_params, "timeout": timeout}
        if self._statement_timeout_ms:
            server_settings["statement_timeout"] = str(self._statement_timeout_ms)
            # The client-side deadline: by then the server has cancelled the statement
            # itself, so no answer means the link or the server is gone.
            kwargs["command_timeout"] = self._statement_timeout_ms / 1000 + 1
        kwargs["server_settings"] = server_settings
        return kwargs

    async def _open_connection(self) -> Any:
        """The pool's creator: a new asyncpg connection, through the availability gate."""
        if self._engine is None:
            # Start-up: no waiting, the caller reports what is wrong right away.
            return await asyncpg.connect(**self._connect_kwargs(self._connect_timeout))
        while True:
            await self._availability.admit()
            try:
                conn = await asyncpg.connect(**self._connect_kwargs(self._connect_timeout))
            except Exception as exc:
                if not self._availability.report(exc):
                    raise describe_connection_failure(exc, self._url) from exc
                continue  # admit() waits for a restart to end, or refuses
            self._availability.confirm()
            return conn

    async def _probe(self) -> None:
        conn = await asyncpg.connect(**self._connect_kwargs(self._connect_timeout))
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close(timeout=self._connect_timeout)

    def _on_checkout(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        driver = dbapi_connection.driver_connection
        if driver.is_closed() or server_spoke(driver):
            # The server closed it while it sat in the pool (restart, terminated backend):
            # the pool replaces it with a new one, the caller never sees it.
            raise DisconnectionError("connection closed by the server while idle")
        if self._availability.failing_fast:
            # It may hang on its next statement; drop it now (no goodbye that could hang
            # too) so the replacement attempt answers the caller with a 503 at once.
            driver.terminate()
            raise DisconnectionError("the database is unavailable")

    def _on_invalidate(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, exc: BaseException | None
    ) -> None:
        # A statement that got no answer in time: the database is unreachable. (A connection
        # that merely died is no outage: the next connection attempt tells.) Drop the socket
        # now: the pool's polite goodbye would wait for an answer too (up to 2 s).
        if isinstance(exc, TimeoutError):
            dbapi_connection.driver_connection.terminate()
            self._availability.report(exc)

    async def _notify_events(self, notices: list[tuple[str, str]]) -> None:
        """One round trip on the hints' own connection: a notification per (channel, payload).

        A connection found dead is replaced once at once (a terminated backend must not hold
        up live events); a second failure is the caller's to retry.
        """
        channels, payloads = [c for c, _ in notices], [p for _, p in notices]
        for attempt in (1, 2):
            conn = self._hints_conn
            if conn is None or conn.is_closed():
                conn = self._hints_conn = await self._open_connection()
            try:
                await conn.execute(EVENT_HINTS_SQL, channels, payloads)
                return
            except BaseException as exc:
                self._hints_conn = None
                conn.terminate()
                if attempt == 2 or not connection_lost(exc):
                    raise

    async def close(self) -> None:
        """Send the pending event hints, dispose of the pool; never raises."""
        if self._engine is not None:
            # Short: what is not sent by then, the relays find by their sweep.
            await self.event_hints.close(timeout=min(self._pool_timeout, 2.0))
        hints_conn, self._hints_conn = self._hints_conn, None
        if hints_conn is not None:
            hints_conn.terminate()
        await self._availability.close()
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
            try:
                yield conn
            except DRIVER_LOST as exc:
                # Statements run straight on the driver (the fast path) bypass SQLAlchemy's
                # own checks: a connection that lost its statement must not be pooled again.
                if not isinstance(exc, DatabaseConnectionError):
                    await discard(conn, exc)
                raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One connection inside one READ COMMITTED transaction.

        Commits when the block exits normally, rolls back when it raises. Statements must be
        issued on the yielded connection.
        """
        async with self.engine.connect() as conn:
            trans = await conn.begin()
            try:
                yield conn
            except DRIVER_LOST as exc:
                if isinstance(exc, DatabaseConnectionError):  # a nested checkout failed
                    await trans.rollback()
                else:
                    await discard(conn, exc)  # a ROLLBACK would wait behind the lost statement
                raise
            except BaseException:
                if trans.is_active:
                    await trans.rollback()
                raise
            if trans.is_active:  # the caller may have rolled it back itself
                await trans.commit()

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
