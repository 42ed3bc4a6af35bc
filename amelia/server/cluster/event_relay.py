"""Live events across processes: notifications carry ids, the rows come from the table.

Every event stored in `workflow_log` is announced on channel `amelia_events` as "<workflow
id>:<sequence>", whichever process wrote it: by the writing process after commit, several
per notification (database/event_hints.py), or by the table's trigger for writers that do
not batch. The relay of each process collects those hints and reads the events from the
table (a payload can exceed the 8 KB a notification may carry), then puts them on the
process's `EventBus`, where the WebSocket clients of this process receive them.

Exactly once and in order, per workflow: the relay remembers the last sequence it delivered
for each workflow and always reads "everything after it", so a hint that arrives twice, late
or not at all (the next one covers it) changes nothing. One workflow's events commit in
sequence order (the counter's row lock serialises its writers), so no later read can find a
lower sequence. After the LISTEN connection was lost, the relay asks the table which
workflows moved on meanwhile and delivers what it missed before anything newer. A hint can
also be lost by its writer (a process killed between a commit and its batched send): every
`SWEEP_SECONDS` the relay compares the workflows it delivered to most recently with their
counters and reads what stayed undelivered for a whole sweep.

Events that are not stored (agent messages, traces) travel whole on channel `amelia_live`
when they fit in a notification (`publish_live`), else only to this process's clients. The
relay handles both channels' notifications strictly in arrival order, so a client sees a
workflow's stored and unstored events in the order they were emitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import OrderedDict, deque
from datetime import datetime, timedelta

from amelia.server.cluster.listener import Listener
from amelia.server.database.event_feed import EventFeedRepository
from amelia.server.database.event_hints import StreamRate, decode_hints
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
# While events arrive faster than `StreamRate`'s threshold, at most one read per
# COALESCE_SECONDS, so each read carries many events: a query per event would take the
# writers' CPU. A slower stream is read at once, for the lowest delay.
COALESCE_SECONDS = 0.05
# How often the followed workflows are checked for events whose hint never came.
SWEEP_SECONDS = 5.0
SWEEP_WORKFLOWS = 2000
LIVE_CHANNEL = "amelia_live"
_FLUSH_PREFIX = "flush:"
# NOTIFY payloads must stay under 8000 bytes.
MAX_LIVE_PAYLOAD_BYTES = 7900


class EventRelay:
    """Delivers every process's stored events to this process's bus."""

    def __init__(
        self,
        feed: EventFeedRepository,
        bus: EventBus,
        listener: Listener,
        *,
        sweep_seconds: float = SWEEP_SECONDS,
    ) -> None:
        self._feed = feed
        self._sweep_seconds = sweep_seconds
        # Counters seen by the last sweep, of workflows whose events were not all delivered.
        self._behind: dict[uuid.UUID, int] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.swept_count = 0
        self._bus = bus
        self._delivered: OrderedDict[uuid.UUID, int] = OrderedDict()
        # Notifications in arrival order: (workflow id, sequence) hints of stored events, or
        # whole unstored events.
        self._queue: deque[tuple[uuid.UUID, int] | WorkflowEvent | asyncio.Future[None]] = deque()
        self._flushes: dict[str, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_read = 0.0
        self._rate = StreamRate()
        self.delivered_count = 0
        self.last_delay_ms: float | None = None
        listener.on(EVENTS_CHANNEL, self._on_hint)
        listener.on(LIVE_CHANNEL, self._on_live)
        listener.on_reconnect(self._catch_up)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="amelia-event-relay")
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="amelia-event-sweep")

    async def stop(self) -> None:
        for task in (self._sweeper, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._sweeper = None

    def _on_hint(self, payload: str) -> None:
        if payload.startswith(_FLUSH_PREFIX):
            marker = self._flushes.pop(payload, None)
            if marker is not None:
                self._queue.append(marker)
                self._wake.set()
            return
        try:
            hints = decode_hints(payload)
        except ValueError:
            logger.warning("ignoring malformed event notification %r", payload[:200])
            return
        self._queue.extend(hints)
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
        # In line with this process's event hints, so the order of emission holds.
        self._feed.db.event_hints.add_notice(LIVE_CHANNEL, payload)
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
            # In line behind this process's own hints still waiting for their batch.
            self._feed.db.event_hints.add_notice(EVENTS_CHANNEL, marker)
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
                # A run of consecutive hints: one read for all of them (under a busy stream
                # after a short pause, so that the stream is read in batches).
                pause = self._last_read + COALESCE_SECONDS - time.monotonic()
                if pause > 0 and self._rate.busy:
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
                self._rate.record(len(events))
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

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_seconds)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("event sweep failed (tried again later): %s", exc)

    async def sweep(self) -> int:
        """Queue a read for recently followed workflows still behind since the last sweep.

        A hint in flight is not lost: only what a whole sweep interval did not bring is read
        (so a busy stream costs nothing extra). Returns how many workflows were queued.
        """
        # A lost hint belongs to a workflow that was writing just now: the most recently
        # delivered ones are checked (by primary key), not every unfinished workflow.
        recent = list(itertools.islice(reversed(self._delivered), SWEEP_WORKFLOWS))
        counters = await self._feed.counters_of(recent)
        behind = {
            wid: last
            for wid, last in counters.items()
            if wid in self._delivered and last > self._delivered[wid]
        }
        lost = [
            wid
            for wid, last in self._behind.items()
            if wid in behind and wid in self._delivered and self._delivered[wid] < last
        ]
        self._behind = behind
        if lost:
            logger.info("reading events of %d workflows whose hints did not arrive", len(lost))
            self.swept_count += len(lost)
            self._queue.extend((wid, self._delivered[wid] + 1) for wid in lost)
            self._wake.set()
        return len(lost)

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
