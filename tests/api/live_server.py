"""`LiveServer`: the real app served by uvicorn in the test's own event loop.

For what `httpx.ASGITransport` cannot do (WebSockets, real sockets and their flow control):
the server listens on a free 127.0.0.1 port bound up front (no race for the port), runs the
real lifespan, and is shut down the way a signal would (`should_exit`). The pools opened by
the lifespan live in the same loop as the test, so a test may use `services` directly.
"""

from __future__ import annotations

import asyncio
import socket
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from amelia.server.services import AppServices


class LiveServer:
    """`async with LiveServer(app) as server:` serves `app` until the block ends."""

    def __init__(self, app: FastAPI, *, startup_timeout: float = 60.0) -> None:
        self.app = app
        self._startup_timeout = startup_timeout
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            lifespan="on",
            log_level="warning",
            log_config=None,  # leave the test process's logging (caplog) alone
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, path: str) -> str:
        """`ws://` URL of `path` (with its query string) on this server."""
        return f"ws://127.0.0.1:{self.port}{path}"

    @property
    def services(self) -> AppServices:
        services = self.app.state.services
        assert services is not None, "the server is not started"
        return services  # type: ignore[no-any-return]

    async def __aenter__(self) -> LiveServer:
        self._task = asyncio.create_task(self.server.serve(sockets=[self._socket]))
        deadline = asyncio.get_running_loop().time() + self._startup_timeout
        while not self.server.started:
            if self._task.done():
                self._task.result()  # the start-up error, if any
                raise RuntimeError("uvicorn exited before it started")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise TimeoutError("uvicorn did not start in time")
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Shut down as on SIGTERM and wait for the lifespan to finish (idempotent)."""
        if self._task is not None:
            self.server.should_exit = True
            await asyncio.wait_for(self._task, timeout=60)
            self._task = None
        self._socket.close()
