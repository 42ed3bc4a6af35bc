"""`ConnectionManager`: fans bus events out to `/ws/events` clients, with `since` backfill.

Each client owns a bounded queue of encoded frames and a sender task, so the bus handler
only filters and `put_nowait`s: one slow client can never block the emitter or the others.
A client whose queue overflows is disconnected with close code 1013 ("try again later");
it reconnects with `since=<last event id>` and the backfill fills the gap from the database.

Backfill without gaps or duplicates: the client is registered on the bus *before* the
backfill is read; live events that arrive meanwhile are buffered, and once the backfill has
been queued the buffer is flushed minus the events the backfill already carried (same
workflow, sequence at or below the last backfilled one). That floor stays in force for the
connection's lifetime, because an emitter resumes after its INSERT committed and may
broadcast only after the backfill query already returned its event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket

from amelia.server.database.repository import WorkflowRepository
from amelia.server.events.bus import EventBus
from amelia.server.models.events import PERSISTED_TYPES, EventDomain, WorkflowEvent

logger = logging.getLogger(__name__)

CLOSE_NORMAL = 1000  # idle timeout (the reason says so)
CLOSE_GOING_AWAY = 1001  # server shutting down
CLOSE_INTERNAL_ERROR = 1011  # backfill could not be read: reconnect later with the same since
CLOSE_TRY_AGAIN_LATER = 1013  # the client fell behind (its queue overflowed)

DEFAULT_MAX_QUEUE = 1000
DEFAULT_BACKFILL_PAGE = 1000
HEARTBEAT_SECONDS = 30.0
CLOSE_TIMEOUT_SECONDS = 5.0


def encode(message: dict[str, Any]) -> str:
    """A server message as JSON text; anything JSON does not know becomes its `str()`."""
    return json.dumps(message, default=str, separators=(",", ":"))


def event_message(event: WorkflowEvent) -> dict[str, Any]:
    """The frame for one event: `{"type": "event", "payload": ...}`, or the flat brainstorm form.

    Args:
        event: the event to send.

    Returns:
        A JSON-ready dict (UUIDs, datetimes and unknown objects inside `data` become strings).
    """
    payload = event.model_dump(mode="json", fallback=str)
    if event.domain is EventDomain.BRAINSTORM:
        # The dashboard's brainstorm view reads a flat frame (spec server.md 2.8).
        data = payload.get("data") or {}
        return {
            "type": "brainstorm",
            "event_type": event.event_type.value.removeprefix("brainstorm_"),
            "session_id": payload["workflow_id"],
            "message_id": data.get("message_id"),
            "data": payload.get("data"),
            "timestamp": payload["timestamp"],
        }
    return {"type": "event", "payload": payload}


PING = encode({"type": "ping"})
PONG = encode({"type": "pong"})


def _error(message: str) -> str:
    return encode({"type": "error", "message": message})


class _Client:
    """One connected socket: its subscriptions, outgoing queue and closing state."""

    def __init__(self, websocket: WebSocket, max_queue: int, *, backfilling: bool) -> None:
        self.websocket = websocket
        self.max_queue = max_queue
        # None is the "drained: close now" sentinel queued by `close_all`.
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=max_queue)
        self.subscribed_all = True
        self.included: set[uuid.UUID] = set()
        self.excluded: set[uuid.UUID] = set()
        self.backfilling = backfilling
        self.pending: deque[tuple[WorkflowEvent, str]] = deque()
        self.floor: dict[uuid.UUID, int] = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self.peer_gone = False
        self.close_requested = asyncio.Event()
        self.finished = asyncio.Event()

    def wants(self, event: WorkflowEvent) -> bool:
        if event.event_type not in PERSISTED_TYPES:
            return True  # trace/ephemeral events go to every client
        if self.subscribed_all:
            return event.workflow_id not in self.excluded
        return event.workflow_id in self.included

    def already_sent(self, event: WorkflowEvent) -> bool:
        """Whether the backfill already carried this event (sequence 0 is never stored)."""
        return 0 < event.sequence <= self.floor.get(event.workflow_id, 0)

    def subscribe(self, workflow_id: uuid.UUID) -> None:
        if self.subscribed_all:
            # Subscribing narrows "everything" down to the named workflows.
            self.subscribed_all = False
            self.included.clear()
            self.excluded.clear()
        self.included.add(workflow_id)

    def unsubscribe(self, workflow_id: uuid.UUID) -> None:
        if self.subscribed_all:
            self.excluded.add(workflow_id)
        else:
            self.included.discard(workflow_id)

    def subscribe_all(self) -> None:
        self.subscribed_all = True
        self.included.clear()
        self.excluded.clear()

    def offer(self, text: str) -> None:
        """Queue a frame without waiting; a full queue disconnects the client."""
        if self.close_code is not None:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.request_close(CLOSE_TRY_AGAIN_LATER, "client too slow: event queue overflowed")

    def close_when_drained(self, code: int, reason: str) -> bool:
        """Queue the end marker behind the queued frames; False when the queue is full."""
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            return False
        # Set without waking `serve`: the sender closes once it reaches the marker.
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        return True

    def request_close(self, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
        self.close_requested.set()


class ConnectionManager:
    """The live clients of `/ws/events` and the bus handler that feeds them.

    `max_queue` and `backfill_page` are read when a client connects or backfills, so they
    can be tuned on a running manager.
    """

    def __init__(
        self,
        repository: WorkflowRepository,
        *,
        max_queue: int = DEFAULT_MAX_QUEUE,
        backfill_page: int = DEFAULT_BACKFILL_PAGE,
    ) -> None:
        self._repository = repository
        self.max_queue = max_queue
        self.backfill_page = backfill_page
        self._clients: set[_Client] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._closed = False

    @property
    def connection_count(self) -> int:
        """How many sockets are connected now."""
        return len(self._clients)

    def attach(self, bus: EventBus) -> None:
        """Subscribe to `bus`: from now on its events reach the connected clients."""
        self._unsubscribe = bus.subscribe(self.broadcast)

    def broadcast(self, event: WorkflowEvent) -> None:
        """Route one event to the clients that want it (synchronous, never blocks).

        Args:
            event: the event as emitted (persisted events carry their stored sequence).
        """
        text: str | None = None
        for client in list(self._clients):
            if client.close_code is not None or not client.wants(event):
                continue
            if text is None:
                try:
                    text = encode(event_message(event))
                except Exception:
                    logger.exception("could not encode event %s; not broadcast", event.id)
                    return
            if client.backfilling:
                if len(client.pending) >= client.max_queue:
                    client.request_close(CLOSE_TRY_AGAIN_LATER, "client too slow during backfill")
                else:
                    client.pending.append((event, text))
            elif not client.already_sent(event):
                client.offer(text)

    async def serve(self, websocket: WebSocket, since: str | None, idle_timeout: float) -> None:
        """Run one connection until the client leaves, idles out, falls behind or we shut down.

        Args:
            websocket: the not yet accepted socket.
            since: the `since` query parameter (an event id), or None for no backfill.
            idle_timeout: seconds without any client message before the socket is closed.
        """
        await websocket.accept()
        if self._closed:
            await self._close_socket(websocket, CLOSE_GOING_AWAY, "server shutting down")
            return
        client = _Client(websocket, self.max_queue, backfilling=since is not None)
        # Registered before the backfill is read: nothing emitted from here on is missed.
        self._clients.add(client)
        heartbeat = min(HEARTBEAT_SECONDS, idle_timeout / 2)
        tasks = [
            asyncio.create_task(self._send_loop(client, heartbeat)),
            asyncio.create_task(self._receive_loop(client, idle_timeout)),
        ]
        if since is not None:
            tasks.append(asyncio.create_task(self._backfill(client, since)))
        try:
            await client.close_requested.wait()
        finally:
            self._clients.discard(client)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not client.peer_gone:
                await self._close_socket(websocket, client.close_code or 1000, client.close_reason)
            client.finished.set()

    async def close_all(self, code: int = CLOSE_GOING_AWAY, timeout: float = 5.0) -> None:
        """Stop broadcasting, deliver what is queued, then close every socket (shutdown).

        Call after the producers stopped so their last events are delivered; connections
        opened afterwards are closed at once.

        Args:
            code: the close code sent to the clients.
            timeout: how long to wait for the queues to drain before closing anyway.
        """
        self._closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        clients = list(self._clients)
        for client in clients:
            if client.backfilling or not client.close_when_drained(code, "server shutting down"):
                client.request_close(code, "server shutting down")
        waits = [asyncio.create_task(client.finished.wait()) for client in clients]
        if not waits:
            return
        _, still_open = await asyncio.wait(waits, timeout=timeout)
        for client in clients:
            client.request_close(code, "server shutting down")
        if still_open:
            await asyncio.wait(still_open, timeout=CLOSE_TIMEOUT_SECONDS + 1)
            for task in still_open:
                task.cancel()

    async def _send_loop(self, client: _Client, heartbeat: float) -> None:
        """Write queued frames in order; a `{"type":"ping"}` after `heartbeat` quiet seconds."""
        try:
            while True:
                try:
                    async with asyncio.timeout(heartbeat):
                        text = await client.queue.get()
                except TimeoutError:
                    text = PING
                if text is None:  # queued by close_when_drained behind everything else
                    client.request_close(CLOSE_GOING_AWAY, "server shutting down")
                    return
                await client.websocket.send_text(text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer vanished mid-send
            logger.debug("websocket send failed: %r", exc)
            client.peer_gone = True
            client.request_close(1006, "send failed")

    async def _receive_loop(self, client: _Client, idle_timeout: float) -> None:
        """Answer client messages; close after `idle_timeout` seconds without one."""
        try:
            while True:
                try:
                    async with asyncio.timeout(idle_timeout):
                        message = await client.websocket.receive()
                except TimeoutError:
                    client.request_close(CLOSE_NORMAL, "idle timeout")
                    return
                if message["type"] == "websocket.disconnect":
                    client.peer_gone = True
                    client.request_close(int(message.get("code") or 1000), "client left")
                    return
                reply = self._handle(client, message.get("text"))
                if reply is not None:
                    client.offer(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.debug("websocket receive failed: %r", exc)
            client.peer_gone = True
            client.request_close(1006, "receive failed")

    @staticmethod
    def _handle(client: _Client, text: str | None) -> str | None:
        """Apply one client message; the frame to answer with, if any."""
        if text is None:
            return _error("expected a JSON text frame")
        try:
            message = json.loads(text)
        except ValueError:
            return _error("message is not valid JSON")
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return _error('message must be a JSON object with a string "type"')
        kind = message["type"]
        if kind == "ping":
            return PONG
        if kind == "pong":  # answer to our heartbeat: the read itself counted as activity
            return None
        if kind == "subscribe_all":
            client.subscribe_all()
            return None
        if kind in ("subscribe", "unsubscribe"):
            try:
                workflow_id = uuid.UUID(str(message["workflow_id"]))
            except (KeyError, ValueError):
                return _error(f'{kind} needs a "workflow_id" that is a UUID')
            if kind == "subscribe":
                client.subscribe(workflow_id)
            else:
                client.unsubscribe(workflow_id)
            return None
        return _error(f"unknown message type {kind!r}")

    async def _backfill(self, client: _Client, since: str) -> None:
        """Queue the events after `since` (all pages), then the closing frame, then the buffer."""
        try:
            cursor = uuid.UUID(since)
        except ValueError:
            await self._go_live(client, {"type": "backfill_expired", "message": _bad_since(since)})
            return
        count = 0
        try:
            while True:
                page = await self._repository.get_events_after(cursor, limit=self.backfill_page)
                for event in page:
                    # Waiting here is fine: it is this client's own task, not the bus.
                    await client.queue.put(encode(event_message(event)))
                    client.floor[event.workflow_id] = event.sequence
                count += len(page)
                if len(page) < self.backfill_page:
                    break
                cursor = page[-1].id
        except ValueError:
            message = (
                f"event {since} is no longer available (deleted by retention or unknown); "
                "reload the workflow state"
            )
            await self._go_live(client, {"type": "backfill_expired", "message": message})
            return
        except Exception:
            logger.exception("backfill after %s failed", since)
            client.request_close(CLOSE_INTERNAL_ERROR, "backfill failed; retry later")
            return
        await self._go_live(client, {"type": "backfill_complete", "count": count})

    @staticmethod
    async def _go_live(client: _Client, final: dict[str, Any]) -> None:
        await client.queue.put(encode(final))
        while client.pending:
            event, text = client.pending.popleft()
            if not client.already_sent(event):
                await client.queue.put(text)
        # No await between the empty check and this switch: no buffered event can be left.
        client.backfilling = False

    @staticmethod
    async def _close_socket(websocket: WebSocket, code: int, reason: str) -> None:
        try:
            # Bounded: closing waits while a stalled peer's TCP buffer is full.
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await websocket.close(code, reason)
        except Exception as exc:
            logger.debug("websocket close failed: %r", exc)


def _bad_since(since: str) -> str:
    return f"since={since[:64]!r} is not an event id; reload the workflow state"
