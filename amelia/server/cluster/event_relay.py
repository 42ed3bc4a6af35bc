"""Live events across processes: notifications carry ids, the rows come from the table.

Every insert into `workflow_log` notifies channel `amelia_events` with "<workflow id>:
<sequence>" (a trigger of the migration), whichever process wrote it. The relay of each
process collects those hints and reads the events from the table (a payload can exceed the
8 KB a notification may carry), then puts them on the process's `EventBus`, where the
WebSocket clients of this process receive them.

Exactly once and in order, per workflow: the relay remembers the last sequence it delivered
for each workflow and always reads "everything after it", so a hint that arrives twice, late
or not at all (the next one covers it) changes nothing. One workflow's events commit in
sequence order (the counter's row lock serialises its writers), so no later read can find a
lower sequence. After the LISTEN connection was lost, the relay asks the table which
workflows moved on meanwhile and delivers what it missed before anything newer.

Events that are not stored (agent messages, traces) travel whole on channel `amelia_live`
when they fit in a notification (`publish_live`), else only to this process's clients. The
relay handles both channels' notifications strictly in arrival order, so a client sees a
workflow's stored and unstored events in the order they were emitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from datetime import datetime, timedelta

from amelia.server.cluster.listener import Listener
from amelia.server.database.event_feed import EventFeedRepository
from amelia.server.database.schema import EVENTS_CHANNEL
from amelia.server.events.bus import EventBus
from amelia.server.models.events import WorkflowEvent

logger = logging.getLogger(__name__)

# How many workflows' positions are remembered; the least recently active are forgotten
# (a forgotten workflow is picked up again from its next notification).
MAX_TRACKED_WORKFLOWS = 50_000
# After a lost connection, events stamped this long before the loss are re-checked for
# workflows the relay was not tracking (stamps come from the writers' clocks).
CLOCK_SLACK = timedelta(seconds=60)
RETRY_SECONDS = 1.0
# Under a stream of events (the last read found at least BUSY_BATCH of them), wait this long
# after a read before the next one, so each read carries many events: a query per event
# would take the writers' CPU. A quiet stream is read at once, for the lowest delay.
COALESCE_SECONDS = 0.02
BUSY_BATCH = 4
LIVE_CHANNEL = "amelia_live"
_FLUSH_PREFIX = "flush:"
# NOTIFY payloads must stay under 8000 bytes.
MAX_LIVE_PAYLOAD_BYTES = 7900


class EventRelay:
    """Delivers every process's stored events to this process's bus."""

    def __init__(self, feed: EventFeedRepository, bus: EventBus, listener: Listener) -> None:
        self._feed = feed
        self._bus = bus
        self._delivered: OrderedDict[uuid.UUID, int] = OrderedDict()
        # Notifications in arrival order: (workflow id, sequence) hints of stored events, or
        # whole unstored events.
        self._queue: deque[tuple[uuid.UUID, int] | WorkflowEvent | asyncio.Future[None]] = deque()
        self._flushes: dict[str, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_read = 0.0
        self._last_batch = 0
        self.delivered_count = 0
        self.last_delay_ms: float | None = None
        listener.on(EVENTS_CHANNEL, self._on_hint)
        listener.on(LIVE_CHANNEL, self._on_live)
        listener.on_reconnect(self._catch_up)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="amelia-event-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_hint(self, payload: str) -> None:
        if payload.startswith(_FLUSH_PREFIX):
            marker = self._flushes.pop(payload, None)
            if marker is not None:
                self._queue.append(marker)
                self._wake.set()
            return
        workflow_text, _, sequence_text = payload.rpartition(":")
        try:
            workflow_id, sequence = uuid.UUID(workflow_text), int(sequence_text)
        except ValueError:
            logger.warning("ignoring malformed event notification %r", payload)
            return
        self._queue.append((workflow_id, sequence))
        self._wake.set()

    def _on_live(self, payload: str) -> None:
        try:
            event = WorkflowEvent.model_validate_json(payload)
        except ValueError:
            logger.warning("ignoring malformed live event notification")
            return
        self._queue.append(event)
        self._wake.set()

    async def publish_live(self, event: WorkflowEvent) -> bool:
        """Send an unstored event to every process; False when it is too big to notify."""
        payload = event.model_dump_json(fallback=str)
        if len(payload.encode("utf-8")) > MAX_LIVE_PAYLOAD_BYTES:
            return False
        await self._feed.notify(LIVE_CHANNEL, payload)
        return True

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event committed before this call has reached the bus.

        A marker notification, sent after those commits, arrives after their hints.
        """
        if self._task is None:
            return True
        marker = f"{_FLUSH_PREFIX}{uuid.uuid4()}"
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flushes[marker] = done
        try:
            await self._feed.notify(EVENTS_CHANNEL, marker)
            await asyncio.wait_for(asyncio.shield(done), timeout)
            return True
        except Exception as exc:  # shutting down: never let this stop the shutdown
            logger.warning("event relay flush did not complete: %s", exc)
            return False
        finally:
            self._flushes.pop(marker, None)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                head = self._queue[0]
                if isinstance(head, WorkflowEvent):
                    self._queue.popleft()
                    self._bus.emit(head)
                    continue
                if isinstance(head, asyncio.Future):
                    self._queue.popleft()
                    if not head.done():
                        head.set_result(None)
                    continue
                # A run of consecutive hints: one read for all of them (after a short pause
                # when the last read was just now, so that a stream is read in batches).
                pause = self._last_read + COALESCE_SECONDS - time.monotonic()
                if pause > 0 and self._last_batch >= BUSY_BATCH:
                    await asyncio.sleep(pause)
                hinted: dict[uuid.UUID, int] = {}
                while self._queue:
                    hint = self._queue[0]
                    if not isinstance(hint, tuple):
                        break
                    self._queue.popleft()
                    wid, sequence = hint
                    hinted[wid] = min(sequence, hinted.get(wid, sequence))
                after = {
                    wid: self._delivered.get(wid, lowest - 1) for wid, lowest in hinted.items()
                }
                try:
                    self._last_read = time.monotonic()
                    events = await self._feed.events_after(after)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("could not read new events; retrying")
                    self._queue.extendleft((wid, low) for wid, low in hinted.items())
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                self._last_batch = len(events)
                self._deliver(events)

    def _deliver(self, events: list[WorkflowEvent]) -> None:
        now = time.time()
        for event in events:
            last = self._delivered.get(event.workflow_id, 0)
            if event.sequence <= last:
                continue  # already delivered (a catch-up overlapping a hint)
            self._delivered[event.workflow_id] = event.sequence
            self._delivered.move_to_end(event.workflow_id)
            self.delivered_count += 1
            self.last_delay_ms = (now - event.timestamp.timestamp()) * 1000
            self._bus.emit(event)
        while len(self._delivered) > MAX_TRACKED_WORKFLOWS:
            self._delivered.popitem(last=False)

    async def _catch_up(self, lost_at: datetime) -> None:
        """Deliver what was committed while the LISTEN connection was down."""
        since = lost_at - CLOCK_SLACK
        while True:
            try:
                counters = await self._feed.counters_since(since)
                tracked = {
                    wid: self._delivered[wid]
                    for wid, last in counters.items()
                    if wid in self._delivered and last > self._delivered[wid]
                }
                untracked = [wid for wid in counters if wid not in self._delivered]
                events = await self._feed.events_after(tracked)
                events += await self._feed.events_since(untracked, since)
                break
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("could not read the events missed while disconnected")
                await asyncio.sleep(RETRY_SECONDS)
        logger.info("caught up %d events missed while the LISTEN connection was down", len(events))
        self._deliver(events)
