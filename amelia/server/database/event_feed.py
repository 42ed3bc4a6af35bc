"""Reading new events back from `workflow_log` for live delivery (`cluster.event_relay`).

The relay learns from notifications which workflows have new events and reads them here:
everything after the last sequence it delivered per workflow, in one statement for many
workflows; and, after its LISTEN connection was lost, what it may have missed.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, bindparam, func, or_, select, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from amelia.server.database.base import RepositoryBase
from amelia.server.database.event_log import row_to_event
from amelia.server.database.fast_query import FastQuery
from amelia.server.database.schema import workflow_log, workflows
from amelia.server.models.events import EventDomain, EventLevel, EventType, WorkflowEvent

_wl = workflow_log
_after = (
    func.unnest(
        bindparam("workflow_ids", type_=ARRAY(UUID(as_uuid=True))),
        bindparam("after", type_=ARRAY(Integer)),
    )
    .table_valued("workflow_id", "after_seq")
    .render_derived(name="t", with_types=False)
)
# Events following each (workflow, last delivered sequence) pair, per workflow in order.
_EVENTS_AFTER_SEQUENCES = (
    select(*_wl.c)
    .select_from(_after)
    .join(_wl, (_wl.c.workflow_id == _after.c.workflow_id) & (_wl.c.sequence > _after.c.after_seq))
    .order_by(_wl.c.workflow_id, _wl.c.sequence)
)
_FAST_EVENTS_AFTER_SEQUENCES = FastQuery(_EVENTS_AFTER_SEQUENCES)


def stored_event(row: Mapping[str, Any]) -> WorkflowEvent:
    """A `workflow_log` row as an event, without re-validating what the table guarantees.

    The relay builds one of these per event per process; validation would cost more than
    the read itself. Column types and CHECK constraints already hold every field.
    """
    return WorkflowEvent.model_construct(
        id=row["id"],
        domain=EventDomain.WORKFLOW,
        workflow_id=row["workflow_id"],
        sequence=row["sequence"],
        timestamp=row["timestamp"],
        agent=row["agent"] or "",
        event_type=EventType(row["event_type"]),
        level=EventLevel(row["level"]),
        message=row["message"],
        data=row["data"],
        is_error=row["is_error"],
    )


# Workflows that may have written events since `since`: not finished, or finished after it.
_COUNTERS_SINCE = select(workflows.c.id, workflows.c.event_sequence).where(
    workflows.c.event_sequence > 0,
    or_(
        text("status IN ('pending', 'in_progress', 'blocked')"),
        workflows.c.completed_at >= bindparam("since"),
    ),
)
_EVENTS_SINCE_TIME = (
    select(*_wl.c)
    .where(
        _wl.c.workflow_id == func.any(bindparam("workflow_ids", type_=ARRAY(UUID(as_uuid=True)))),
        _wl.c.timestamp >= bindparam("since"),
    )
    .order_by(_wl.c.workflow_id, _wl.c.sequence)
)


class EventFeedRepository(RepositoryBase):
    """Queries of the live event relay."""

    async def notify(self, channel: str, payload: str) -> None:
        """NOTIFY `channel` with `payload` (delivered to listeners when it commits: now)."""
        async with self._connect() as conn:
            await conn.execute(select(func.pg_notify(channel, payload)))

    async def events_after(self, after: Mapping[uuid.UUID, int]) -> list[WorkflowEvent]:
        """For each workflow, its events with a sequence above the given one, ascending."""
        if not after:
            return []
        params = {"workflow_ids": list(after), "after": list(after.values())}
        rows = await self._fast_all(_FAST_EVENTS_AFTER_SEQUENCES, params)
        return [stored_event(row) for row in rows]

    async def counters_since(self, since: datetime) -> dict[uuid.UUID, int]:
        """{workflow id: last sequence} of workflows that may have had events since `since`."""
        async with self._connect() as conn:
            rows = (await conn.execute(_COUNTERS_SINCE, {"since": since})).all()
        return {row.id: int(row.event_sequence) for row in rows}

    async def events_since(
        self, workflow_ids: list[uuid.UUID], since: datetime
    ) -> list[WorkflowEvent]:
        """Events of these workflows stamped at or after `since`, per workflow in order."""
        if not workflow_ids:
            return []
        params = {"workflow_ids": workflow_ids, "since": since}
        async with self._connect() as conn:
            rows = (await conn.execute(_EVENTS_SINCE_TIME, params)).mappings().all()
        return [row_to_event(row) for row in rows]
