"""Connections that died under us: how to tell, and what is safe to run again.

The server may close a connection at any moment (restart, `pg_terminate_backend`, a network
reset), and a statement may never get its answer (a blackholed link). These helpers let the
pool discard such connections instead of handing them out again, and let repositories repeat
what is safe to repeat (reads, idempotent writes) on a fresh connection.
"""

from __future__ import annotations

import functools
import logging
import select
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from amelia.server.database.availability import DatabaseConnectionError

logger = logging.getLogger(__name__)

_P = ParamSpec("_P")
_T = TypeVar("_T")
_R = TypeVar("_R")


def server_spoke(driver: Any) -> bool:
    """True when the server sent something to an idle connection (one poll, ~1 us).

    Almost always the FATAL error of a backend going away. Between reading that error and
    reading the end of the stream the driver neither reports the connection closed nor can
    use it ("another operation is in progress"): this catches that window.
    """
    transport = getattr(driver, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(poller.poll(0))


# What the driver raises when a connection is gone or its statement got no answer in time.
# InternalClientError: the connection was caught mid-way through going away (see above);
# nothing was sent.
DRIVER_LOST: tuple[type[BaseException], ...] = (
    TimeoutError,
    ConnectionError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)

# SQLSTATEs of the FATAL errors a backend sends as it goes away (admin shutdown, crash
# shutdown, cannot connect now). The driver may not have seen the socket close yet when the
# error arrives, so SQLAlchemy's own check (is the connection closed?) can miss them.
FATAL_SHUTDOWN_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def on_error(context: ExceptionContext) -> None:
    """`handle_error` listener: mark the connection dead when its statement was lost."""
    original = context.original_exception
    if isinstance(original, TimeoutError):
        # A statement past its client-side deadline leaves the connection waiting for an
        # answer that will not come: never hand it out again (the others may be fine).
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False
        return
    cause = getattr(original, "__cause__", None)
    code = getattr(original, "sqlstate", None) or getattr(cause, "sqlstate", None)
    if isinstance(cause, asyncpg.exceptions.InternalClientError) or (
        isinstance(code, str) and (code in FATAL_SHUTDOWN_SQLSTATES or code.startswith("08"))
    ):
        # The backend is gone; the rest of the pool most likely went with it (restart).
        context.is_disconnect = True


async def discard(conn: AsyncConnection, exc: BaseException) -> None:
    """Invalidate a connection whose statement got no answer (it would block the next user)."""
    if not conn.invalidated:
        await conn.invalidate(exc)


def connection_lost(exc: BaseException) -> bool:
    """True when `exc` says the connection died under a statement (the server went away).

    Not for timeouts (the statement may still run) nor for a refused checkout (the
    availability gate already waited, or refuses on purpose).
    """
    if isinstance(exc, DatabaseConnectionError | TimeoutError):
        return False
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        cause = exc.orig.__cause__ if exc.orig is not None else None
        return cause is not None and connection_lost(cause)
    return isinstance(exc, DRIVER_LOST)


def retry_if_connection_lost(
    *already_done: type[BaseException],
) -> Callable[
    [Callable[Concatenate[_R, _P], Awaitable[_T]]], Callable[Concatenate[_R, _P], Awaitable[_T]]
]:
    """Run a repository method once more when its connection died under it.

    Only for methods that are safe to repeat (idempotent writes, reads): a restart or a
    terminated backend must not lose a workflow's event. Not when the repository is bound
    to a caller's connection (`repo.bind(conn)`): its transaction died with it. The second
    attempt gets a fresh connection through the availability gate (which waits out a
    restart). `already_done`: errors of the second attempt meaning the first one committed
    (a duplicate key of the row it inserted), returned as None.
    """

    def decorate(
        method: Callable[Concatenate[_R, _P], Awaitable[_T]],
    ) -> Callable[Concatenate[_R, _P], Awaitable[_T]]:
        @functools.wraps(method)
        async def wrapper(self: _R, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
            try:
                return await method(self, *args, **kwargs)
            except Exception as exc:
                if getattr(self, "_held", None) is not None or not connection_lost(exc):
                    raise
                logger.warning("%s: connection lost (%s); trying once more", method.__name__, exc)
            try:
                return await method(self, *args, **kwargs)
            except already_done:
                return None  # type: ignore[return-value]

        return wrapper

    return decorate
