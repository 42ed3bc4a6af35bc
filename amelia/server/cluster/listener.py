"""One LISTEN connection per process, kept alive: channels, callbacks, reconnects.

PostgreSQL notifications reach only a session that is listening, and a session that drops
misses everything sent meanwhile. `Listener` owns a dedicated asyncpg connection (outside
the pools: a pooled connection is reset and shared), listens on the channels registered
with it, checks the connection every few seconds and, when it is gone, reconnects with
backoff and calls the `on_reconnect` hooks with the moment the connection was lost, so each
user can read back from the tables what it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg

logger = logging.getLogger(__name__)

NotificationHandler = Callable[[str], None]
ReconnectHook = Callable[[datetime], Awaitable[None]]

CHECK_INTERVAL_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 5.0


class Listener:
    """LISTENs on registered channels over one connection that reconnects by itself."""

    def __init__(self, dsn: str, application_name: str, connect_timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._connect_timeout = connect_timeout
        self._handlers: dict[str, NotificationHandler] = {}
        self._reconnect_hooks: list[ReconnectHook] = []
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self.reconnects = 0
        self.connected = False

    def on(self, channel: str, handler: NotificationHandler) -> None:
        """Call `handler(payload)` for each notification on `channel` (register before start)."""
        self._handlers[channel] = handler

    def on_reconnect(self, hook: ReconnectHook) -> None:
        """Await `hook(lost_at)` after the connection was re-established."""
        self._reconnect_hooks.append(hook)

    async def start(self) -> None:
        """Connect and listen (raises if the first connection fails), then keep it alive."""
        await self._connect()
        self._task = asyncio.create_task(self._keep_alive(), name="amelia-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings={"application_name": self._application_name},
        )
        self._lost.clear()
        conn.add_termination_listener(lambda _conn: self._lost.set())
        for channel, handler in self._handlers.items():
            await conn.add_listener(channel, self._dispatcher(handler))
        self._conn = conn
        self.connected = True

    @staticmethod
    def _dispatcher(handler: NotificationHandler) -> Callable[..., None]:
        def dispatch(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                handler(payload)
            except Exception:
                logger.exception("notification handler failed on %r", payload)

        return dispatch

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self.connected = False
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed() or self._lost.is_set():
            return False
        try:
            async with asyncio.timeout(self._connect_timeout):
                await conn.fetchval("SELECT 1")
        except asyncio.CancelledError:
            raise
        except Exception:  # any failure (InternalClientError after a kill, too) means gone
            return False
        return True

    async def _keep_alive(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel
                async with asyncio.timeout(CHECK_INTERVAL_SECONDS):
                    await self._lost.wait()
            if await self._alive():
                continue
            lost_at = datetime.now(UTC)
            logger.warning("LISTEN connection lost; reconnecting")
            await self._close()
            await self._reconnect(lost_at)

    async def _reconnect(self, lost_at: datetime) -> None:
        delay = 0.1
        started = time.monotonic()
        while True:
            try:
                await self._connect()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("LISTEN reconnect failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
        self.reconnects += 1
        logger.info("LISTEN connection back after %.1fs", time.monotonic() - started)
        for hook in self._reconnect_hooks:
            try:
                await hook(lost_at)
            except Exception:
                logger.exception("reconnect hook %r failed", hook)
