"""Is PostgreSQL there? The gate every new connection passes, and the probe that reopens it.

Outages come in two kinds, told apart by how a connection attempt or a statement fails:

- *restarting*: the server refuses connections, or says it is starting up or shutting down.
  That is usually over within seconds, so callers wait for it (at most `wait_s` from the
  start of the outage) rather than fail: a request is slower, a workflow's event is not lost.
- *unreachable*: a connection attempt or a statement got no answer within its timeout.
  Waiting would make every caller hang, so callers fail at once (a 503) until it is over.

While an outage lasts, a background probe opens a fresh connection every
`probe_interval_s`; the first one that answers (or any caller's successful connection) ends
the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

logger = logging.getLogger(__name__)

RESTARTING = "restarting"
UNREACHABLE = "unreachable"

# Failures of a connection attempt that mean "the server is going away or coming back".
_RESTART_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up / shutting down
    asyncpg.exceptions.AdminShutdownError,  # 57P01
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


class DatabaseConnectionError(ConnectionError):
    """The database cannot be reached or refused us; the message says what to change."""


class DatabaseUnavailableError(DatabaseConnectionError):
    """PostgreSQL is restarting or unreachable right now; `reason` is safe to show a client."""

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(message)


def outage_kind(exc: BaseException) -> str | None:
    """RESTARTING, UNREACHABLE, or None when `exc` is not an availability problem (a wrong
    password or a missing database is a configuration error, not an outage).

    Only a timeout makes the database *unreachable*: every other way a connection attempt
    fails is quick, so waiting on it (probing) costs callers nothing but the wait.
    """
    if isinstance(exc, TimeoutError | socket.timeout):
        return UNREACHABLE
    if isinstance(exc, socket.gaierror | DatabaseConnectionError):
        return None
    if isinstance(exc, (*_RESTART_ERRORS, OSError)):
        return RESTARTING
    if isinstance(exc, asyncpg.exceptions.PostgresConnectionError):  # SQLSTATE class 08
        return RESTARTING
    return None


def _reason(kind: str, exc: BaseException) -> str:
    if kind == UNREACHABLE:
        return "PostgreSQL does not answer (network or server unreachable)"
    if isinstance(exc, asyncpg.exceptions.CannotConnectNowError):
        return "PostgreSQL is starting up or shutting down"
    if isinstance(exc, ConnectionRefusedError):
        return "PostgreSQL refuses connections (restarting or stopped)"
    return "the connection to PostgreSQL was lost"


@dataclass
class Outage:
    kind: str
    reason: str
    since: float

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.since


class Availability:
    """The outage state of one database and its probe.

    Args:
        probe: opens, checks and closes one fresh connection; raises when it cannot.
        wait_s: how long into a *restarting* outage callers wait instead of failing.
        probe_interval_s: pause between two probes.
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        *,
        wait_s: float,
        probe_interval_s: float = 0.25,
    ) -> None:
        self._probe = probe
        self._wait_s = wait_s
        self._interval = probe_interval_s
        self._outage: Outage | None = None
        self._back = asyncio.Event()
        self._back.set()
        self._task: asyncio.Task[None] | None = None

    @property
    def outage(self) -> Outage | None:
        return self._outage

    @property
    def failing_fast(self) -> bool:
        """True when callers are refused at once rather than made to wait."""
        outage = self._outage
        return outage is not None and (outage.kind == UNREACHABLE or outage.seconds >= self._wait_s)

    def report(self, exc: BaseException) -> bool:
        """Note a failure; True when it is an outage (then the probe runs until it is over)."""
        kind = outage_kind(exc)
        if kind is None:
            return False
        outage = self._outage
        if outage is None:
            self._outage = Outage(kind, _reason(kind, exc), time.monotonic())
            self._back.clear()
            logger.warning(
                "database %s (%s: %s); probing until it answers", kind, type(exc).__name__, exc
            )
            self._task = asyncio.create_task(self._probe_until_back(), name="database-probe")
        elif kind == UNREACHABLE and outage.kind != UNREACHABLE:
            outage.kind, outage.reason = kind, _reason(kind, exc)
        return True

    def confirm(self) -> None:
        """A connection just worked: any outage is over."""
        outage, self._outage = self._outage, None
        if outage is not None:
            logger.warning("database available again after %.1f s", outage.seconds)
            self._back.set()

    async def admit(self) -> None:
        """Return when a connection may be attempted.

        Raises:
            DatabaseUnavailableError: the database is unreachable, or has been restarting
                for longer than `wait_s`.
        """
        outage = self._outage
        if outage is None:
            return
        if not self.failing_fast:
            remaining = outage.since + self._wait_s - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._back.wait(), remaining)
            outage = self._outage
            if outage is None:
                return
        raise DatabaseUnavailableError(
            f"The database is unavailable: {outage.reason} (for {outage.seconds:.1f} s)",
            outage.reason,
        )

    async def _probe_until_back(self) -> None:
        while self._outage is not None:
            await asyncio.sleep(self._interval)
            try:
                await self._probe()
            except Exception as exc:
                kind = outage_kind(exc)
                outage = self._outage
                if outage is not None and kind is not None and kind != outage.kind:
                    outage.kind, outage.reason = kind, _reason(kind, exc)
                continue
            self.confirm()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
