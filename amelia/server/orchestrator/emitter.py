"""Recording and broadcasting workflow events.

An event is saved first (the database allocates its sequence), then broadcast. Recording an
event can never fail a workflow: a failure to save is logged and the event is still broadcast.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from amelia.server.database.repository import WorkflowRepository
from amelia.server.events.bus import EventBus
from amelia.server.models.events import EventType, WorkflowEvent

logger = logging.getLogger(__name__)


class EventEmitter:
    """Builds, stores and broadcasts events for workflows."""

    def __init__(self, repository: WorkflowRepository, bus: EventBus) -> None:
        self._repository = repository
        self._bus = bus

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
            event = await self._repository.save_event(event)
        except Exception:
            logger.exception("could not record %s for workflow %s", event_type, workflow_id)
        self._bus.emit(event)
        return event


_ERROR_TYPES = frozenset({EventType.WORKFLOW_FAILED, EventType.TASK_FAILED, EventType.SYSTEM_ERROR})
