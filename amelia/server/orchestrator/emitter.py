"""Recording and broadcasting workflow events.

An event is saved first (the database allocates its sequence), then broadcast. Recording an
event can never fail a workflow: a failure to save is logged and the event is still broadcast.
The one exception is a stale run: an event written on behalf of a run this process no longer
owns (`cluster.fencing`) is refused and `FencedOutError` stops that run.

With `relayed=True` (the server: `cluster.event_relay` is running) a stored event is not put
on the bus here: the relay reads it back from the table after the insert's notification, so
every process, this one included, delivers each event once and in sequence order.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from amelia.server.cluster.fencing import fence_for
from amelia.server.database.repository import WorkflowRepository
from amelia.server.events.bus import EventBus
from amelia.server.exceptions import FencedOutError
from amelia.server.models.events import EventType, WorkflowEvent

logger = logging.getLogger(__name__)


class EventEmitter:
    """Builds, stores and broadcasts events for workflows."""

    def __init__(
        self, repository: WorkflowRepository, bus: EventBus, *, relayed: bool = False
    ) -> None:
        self._repository = repository
        self._bus = bus
        self.relayed = relayed
        # Sends an unstored event to every process (the relay's `publish_live`); False when
        # it could not (too big), and the event then reaches this process's clients only.
        self.publish_live: Callable[[WorkflowEvent], Awaitable[bool]] | None = None

    async def emit(
        self,
        workflow_id: uuid.UUID,
        event_type: EventType,
        message: str,
        *,
        agent: str = "system",
        data: dict[str, Any] | None = None,
    ) -> WorkflowEvent:
        """Save (when persisted) and broadcast one event; returns it as stored."""
        event = WorkflowEvent(
            id=uuid.uuid4(),
            workflow_id=workflow_id,
            sequence=0,
            timestamp=datetime.now(UTC),
            agent=agent,
            event_type=event_type,
            message=message,
            data=data,
            is_error=event_type in _ERROR_TYPES,
        )
        try:
            event = await self._repository.save_event(event, fence=fence_for(workflow_id))
        except FencedOutError:
            raise
        except Exception:
            logger.exception("could not record %s for workflow %s", event_type, workflow_id)
        if self.relayed and event.sequence > 0:
            return event  # the relay delivers it from the table
        if self.relayed and self.publish_live is not None:
            try:
                if await self.publish_live(event):
                    return event
            except Exception:
                logger.exception("could not publish %s of workflow %s", event_type, workflow_id)
        self._bus.emit(event)
        return event


_ERROR_TYPES = frozenset({EventType.WORKFLOW_FAILED, EventType.TASK_FAILED, EventType.SYSTEM_ERROR})
