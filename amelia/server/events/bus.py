"""`EventBus`: in-process fan-out of workflow events to subscribers (WebSockets, logs, tests).

Handlers run synchronously in `emit` and must not block: a WebSocket subscriber enqueues.
A failing handler is logged and never affects the emitter or the other handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from amelia.server.models.events import WorkflowEvent

logger = logging.getLogger(__name__)

EventHandler = Callable[[WorkflowEvent], None]


class EventBus:
    """Synchronous publish/subscribe for `WorkflowEvent`s."""

    def __init__(self) -> None:
        self._handlers: list[EventHandler] = []

    def subscribe(self, handler: EventHandler) -> Callable[[], None]:
        """Register `handler`; returns a function that unsubscribes it."""
        self._handlers.append(handler)

        def unsubscribe() -> None:
            if handler in self._handlers:
                self._handlers.remove(handler)

        return unsubscribe

    def emit(self, event: WorkflowEvent) -> None:
        """Deliver `event` to every handler (in subscription order)."""
        for handler in list(self._handlers):
            try:
                handler(event)
            except Exception:
                logger.exception("event handler %r failed on %s", handler, event.event_type)

    @property
    def subscriber_count(self) -> int:
        return len(self._handlers)
