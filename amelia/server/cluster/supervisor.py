"""The background duties of one server process among several sharing a database.

- Register the process (`server_processes`) and refresh its heartbeat.
- Renew the leases of the runs it owns every `heartbeat_seconds`; a run whose lease could
  not be renewed for a whole lease is stopped here (another process may own it by now).
- Claim runnable workflows every `claim_poll_seconds`, or at once when a notification on
  `amelia_work` says a run ended or waits for a slot.
- Stop a run when a cancel for it arrives on `amelia_control` from any process.
- On shutdown, hand its runs to the others and mark the process stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

from amelia import __version__
from amelia.server.cluster.listener import Listener
from amelia.server.database.process_registry import ProcessRegistry
from amelia.server.database.run_leases import CONTROL_CHANNEL, WORK_CHANNEL
from amelia.server.orchestrator.service import OrchestratorService

logger = logging.getLogger(__name__)

CLAIM_BATCH = 8


class RunSupervisor:
    """Claims, lease renewal, heartbeats and commands for this process's runs."""

    def __init__(
        self,
        orchestrator: OrchestratorService,
        registry: ProcessRegistry,
        listener: Listener,
        *,
        heartbeat_seconds: float,
        claim_poll_seconds: float,
        address: str | None = None,
    ) -> None:
        self._orchestrator = orchestrator
        self._registry = registry
        self._heartbeat_seconds = heartbeat_seconds
        self._claim_poll_seconds = claim_poll_seconds
        self._address = address
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_renewal = time.monotonic()
        listener.on(WORK_CHANNEL, lambda _payload: self._wake.set())
        listener.on(CONTROL_CHANNEL, self._on_command)
        listener.on_reconnect(self._after_reconnect)

    @property
    def process_id(self) -> uuid.UUID:
        return self._orchestrator.process_id

    async def start(self) -> None:
        await self._registry.register(
            self.process_id, socket.gethostname(), os.getpid(), self._address, __version__
        )
        self._tasks = [
            asyncio.create_task(self._heartbeat_loop(), name="amelia-heartbeat"),
            asyncio.create_task(self._claim_loop(), name="amelia-claimer"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self._registry.mark_stopped(self.process_id)

    def _on_command(self, payload: str) -> None:
        command, _, workflow_text = payload.partition(":")
        if command != "cancel":
            return
        with contextlib.suppress(ValueError):
            if self._orchestrator.stop_local_run(uuid.UUID(workflow_text)):
                logger.info("stopped workflow %s on a cancel from another process", workflow_text)

    async def _after_reconnect(self, _lost_at: object) -> None:
        # Notifications sent while disconnected are gone: look for work (and stale runs) now.
        self._wake.set()

    async def _heartbeat_loop(self) -> None:
        lease = self._orchestrator.lease_seconds
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                await self._orchestrator.renew_leases()
                await self._registry.heartbeat(self.process_id)
                self._last_renewal = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("could not renew this process's leases: %s", exc)
                if time.monotonic() - self._last_renewal > lease:
                    # Another process may have taken the runs over: stop before the next step.
                    for workflow_id in self._orchestrator.get_active_workflows():
                        self._orchestrator.stop_local_run(workflow_id)

    async def _claim_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that
            # arrives as the wait ends, and stop() would then wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._claim_poll_seconds):
                    await self._wait_for_work()
            try:
                # Keep claiming while there is something to take.
                while len(await self._orchestrator.claim_runnable(CLAIM_BATCH)) == CLAIM_BATCH:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("could not claim runnable workflows: %s", exc)

    async def _wait_for_work(self) -> None:
        ended = self._orchestrator.run_ended
        waiters = [
            asyncio.create_task(self._wake.wait()),
            asyncio.create_task(ended.wait()),
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._wake.clear()
        ended.clear()
