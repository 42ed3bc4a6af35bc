"""`/ws/events`: the live event stream (spec server.md 2.8, README point 6).

Client messages: `{"type":"subscribe","workflow_id":...}`, `{"type":"unsubscribe",...}`,
`{"type":"subscribe_all"}`, `{"type":"ping"}` (answered `{"type":"pong"}`) and `{"type":"pong"}`
(answer to the server's heartbeat `{"type":"ping"}`). Server messages: `{"type":"event",
"payload":...}`, `{"type":"backfill_complete","count":N}`, `{"type":"backfill_expired",
"message":...}`, `{"type":"error","message":...}`. The routing, backfill and flow control
live in `ConnectionManager`; this module wires it into the app.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from fastapi import APIRouter, FastAPI, WebSocket

from amelia.server.database.repository import WorkflowRepository
from amelia.server.database.settings_repository import SettingsRepository
from amelia.server.events.connection_manager import CLOSE_TRY_AGAIN_LATER, ConnectionManager
from amelia.server.services import AppServices

logger = logging.getLogger(__name__)

router = APIRouter(tags=["websocket"])

EXTRAS_KEY = "ws"
DEFAULT_IDLE_TIMEOUT_SECONDS = 300.0


async def websocket_startup_hook(services: AppServices, stack: AsyncExitStack) -> None:
    """Create the `ConnectionManager`, subscribe it to the bus and register its shutdown.

    The shutdown callback sits on the lifespan's exit stack, which unwinds after the
    orchestrator's runs were cancelled (and after services started later, such as retention,
    stopped), so the clients get the producers' last events before their sockets close.

    Args:
        services: the server's parts; the manager is stored in `services.extras["ws"]`.
        stack: the lifespan's exit stack.
    """
    manager = ConnectionManager(WorkflowRepository(services.db))
    manager.attach(services.bus)
    services.extras[EXTRAS_KEY] = manager
    stack.push_async_callback(manager.close_all)


def install(app: FastAPI) -> None:
    """Register `websocket_startup_hook` on an app made by `create_app` (idempotent)."""
    if websocket_startup_hook not in app.state.startup_hooks:
        app.state.startup_hooks.append(websocket_startup_hook)


async def _idle_timeout(services: AppServices) -> float:
    """`websocket_idle_timeout_seconds` as stored now (changes apply to new connections)."""
    try:
        settings = await SettingsRepository(services.db).get_server_settings()
    except Exception:
        logger.warning(
            "could not read websocket_idle_timeout_seconds; using %ss",
            DEFAULT_IDLE_TIMEOUT_SECONDS,
            exc_info=True,
        )
        return DEFAULT_IDLE_TIMEOUT_SECONDS
    return settings.websocket_idle_timeout_seconds


@router.websocket("/ws/events")
async def events_stream(websocket: WebSocket, since: str | None = None) -> None:
    """Stream workflow events; with `since=<event id>` first replay what the client missed.

    `since` is taken as a plain string on purpose: a malformed or unknown id answers
    `backfill_expired` on an open connection instead of refusing the handshake.
    """
    services: AppServices | None = getattr(websocket.app.state, "services", None)
    manager = None if services is None else services.extras.get(EXTRAS_KEY)
    if services is None or not isinstance(manager, ConnectionManager):
        # Not started, or the hook was not registered: refuse rather than serve nothing.
        await websocket.close(CLOSE_TRY_AGAIN_LATER, "event stream not available")
        return
    await manager.serve(websocket, since, await _idle_timeout(services))
