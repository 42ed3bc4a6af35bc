"""Hints of new events, sent by the writing process after commit, many per notification.

Every process's event relay learns from notifications on `amelia_events` which workflows
have new events (`cluster.event_relay`). The insert trigger of `workflow_log` used to send
one notification per event, and PostgreSQL wakes every listening session on each notifying
commit: with a listener per server process, event writes ran at half their speed. So
Amelia's connections set `amelia.event_hints = 'deferred'` (the trigger then stays quiet,
other writers still notify per row) and the writer hands each stored event's (workflow,
sequence) to `EventHints`, which sends them in batches:

- a hint goes out at once (one round trip after the commit) unless the previous round
  trip started less than `HINT_INTERVAL_SECONDS` ago (`BUSY_HINT_INTERVAL_SECONDS` while
  this process writes more than `BUSY_EVENTS_PER_SECOND`: every notification wakes every
  listening process, so a fast stream is announced in few of them);
- so under a stream there is at most one round trip per interval, carrying
  every hint collected meanwhile ("<workflow>:<lowest new sequence>", comma-separated,
  split to fit NOTIFY's 8000 bytes). Relays read "everything after what they delivered",
  so one hint per workflow per batch is enough;
- unstored events sent whole to the other processes (`add_notice`) travel in the same
  batches, in the order they were added relative to the hints: a client sees a workflow's
  stored and unstored events in the order they were emitted;
- a failed send keeps its notices and is retried (the database may be restarting).

What a process that dies between a commit and its send loses is a hint, not an event: the
rows are stored, and every relay re-checks the workflows it follows now and then
(`event_relay.SWEEP_SECONDS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from amelia.server.database.schema import EVENTS_CHANNEL

logger = logging.getLogger(__name__)

# Session setting that tells the `workflow_log` trigger the writer sends the hints itself.
DEFERRED_HINTS_SETTING = "amelia.event_hints"
DEFERRED_HINTS_VALUE = "deferred"
# At most one round trip of notifications per this interval (per process): an event stream
# slower than one per interval is announced event by event, a faster one in batches.
HINT_INTERVAL_SECONDS = 0.004
# The interval while this process writes more events than this per second (measured over
# RATE_WINDOW_SECONDS): a few dozen notifications a second then announce them all.
BUSY_HINT_INTERVAL_SECONDS = 0.02
BUSY_EVENTS_PER_SECOND = 500.0
RATE_WINDOW_SECONDS = 0.25
RETRY_SECONDS = 1.0
# NOTIFY payloads must stay under 8000 bytes.
MAX_HINT_PAYLOAD_BYTES = 7900

# (channel, payload) pairs, notified in this order in one transaction.
Sender = Callable[[list[tuple[str, str]]], Awaitable[None]]
# Hints of one stretch without live notices: lowest new sequence per workflow.
_Hints = dict[uuid.UUID, int]


class StreamRate:
    """Whether events arrive faster than `threshold` per second, over windows of `window` s.

    Decided per window, not per batch: a rule on the last batch's size would feed itself
    (waiting makes the next batch bigger).
    """

    def __init__(
        self, threshold: float = BUSY_EVENTS_PER_SECOND, window: float = RATE_WINDOW_SECONDS
    ) -> None:
        self._threshold = threshold
        self._window = window
        self._started = time.monotonic()
        self._count = 0
        self.busy = False

    def record(self, count: int) -> None:
        self._count += count
        now = time.monotonic()
        elapsed = now - self._started
        if elapsed >= self._window:
            self.busy = self._count / elapsed >= self._threshold
            self._started, self._count = now, 0


def encode_hints(hints: _Hints) -> list[str]:
    """Payloads of "<workflow>:<sequence>" items joined by commas, each under the limit."""
    payloads: list[str] = []
    items: list[str] = []
    size = 0
    for workflow_id, sequence in hints.items():
        item = f"{workflow_id}:{sequence}"
        if items and size + 1 + len(item) > MAX_HINT_PAYLOAD_BYTES:
            payloads.append(",".join(items))
            items, size = [], 0
        size += len(item) + (1 if items else 0)
        items.append(item)
    if items:
        payloads.append(",".join(items))
    return payloads


def decode_hints(payload: str) -> list[tuple[uuid.UUID, int]]:
    """The (workflow, sequence) pairs of a payload; ValueError when malformed."""
    hints = []
    for item in payload.split(","):
        workflow_text, _, sequence_text = item.rpartition(":")
        hints.append((uuid.UUID(workflow_text), int(sequence_text)))
    return hints


class EventHints:
    """Collects the hints of committed events (and live notices) and notifies them in batches."""

    def __init__(
        self,
        send: Sender,
        interval: float = HINT_INTERVAL_SECONDS,
        busy_interval: float = BUSY_HINT_INTERVAL_SECONDS,
    ) -> None:
        self._send = send
        self._interval = interval
        self._busy_interval = busy_interval
        self._rate = StreamRate()
        # In order: stretches of hints, and live notices (channel, payload) between them.
        self._pending: list[_Hints | tuple[str, str]] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        # Notices added so far, and how many of them have been sent (for `flush`).
        self._added = 0
        self._sent_through = 0
        self._last_send = -1e9  # loop time of the last round trip's start
        self._progress = asyncio.Event()
        self.sent_notifications = 0
        self.sent_hints = 0

    @property
    def pending(self) -> int:
        """Hints and notices not sent yet."""
        return sum(len(item) if isinstance(item, dict) else 1 for item in self._pending)

    def add(self, workflow_id: uuid.UUID, sequence: int) -> None:
        """Announce a committed event (call only after its commit)."""
        if self._closed:
            return
        if not self._pending or not isinstance(self._pending[-1], dict):
            self._pending.append({})
        hints = self._pending[-1]
        assert isinstance(hints, dict)
        known = hints.get(workflow_id)
        if known is None or sequence < known:
            hints[workflow_id] = sequence
        self._added += 1
        self._wake()

    def add_notice(self, channel: str, payload: str) -> None:
        """Notify `payload` on `channel` after the hints added before it."""
        if self._closed:
            return
        self._pending.append((channel, payload))
        self._added += 1
        self._wake()

    def _wake(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._send_pending(), name="amelia-event-hints"
            )

    async def _send_pending(self) -> None:
        loop = asyncio.get_running_loop()
        failing = False
        while self._pending:
            # At most one round trip per interval, counted from the previous one's start:
            # a stream slower than that is sent event by event at once, a faster one in
            # batches (waiting after each send instead would delay even a slow stream).
            interval = self._busy_interval if self._rate.busy else self._interval
            wait = self._last_send + interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            batch, self._pending = self._pending, []
            through = self._added
            notices: list[tuple[str, str]] = []
            for item in batch:
                if isinstance(item, dict):
                    notices.extend((EVENTS_CHANNEL, payload) for payload in encode_hints(item))
                else:
                    notices.append(item)
            self._last_send = loop.time()
            try:
                await self._send(notices)
            except asyncio.CancelledError:
                self._pending[:0] = batch
                raise
            except Exception as exc:
                self._pending[:0] = batch
                if not failing:
                    logger.warning("could not send event hints (retrying): %s", exc)
                failing = True
                await asyncio.sleep(RETRY_SECONDS)
                continue
            if failing:
                logger.info("event hints are sent again")
                failing = False
            self.sent_notifications += len(notices)
            self.sent_hints += sum(len(item) for item in batch if isinstance(item, dict))
            self._rate.record(through - self._sent_through)
            self._sent_through = through
            self._progress.set()

    async def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every notice added before this call has been sent; False on timeout."""
        target = self._added
        try:
            async with asyncio.timeout(timeout):
                while self._sent_through < target:
                    if self._task is None or self._task.done():
                        return not self._pending  # nothing left that could be sent
                    self._progress.clear()
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Send what is pending (within `timeout`), then accept no more notices."""
        if not await self.flush(timeout):
            logger.warning("%d event hints were not sent before closing", self.pending)
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
