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

from sqlalchemy import Integer, bindparam, func, literal_column, or_, select, text, true
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
# The events following one (workflow, last delivered sequence) pair. LATERAL, and kept a
# subquery by its OFFSET 0: the planner must then look each pair up in the (workflow_id,
# sequence) index. Flattened into a join, the generic plan of this prepared statement
# hash-joins the pairs against the whole table (11 ms at 60k rows, growing with it).
_following = (
    select(*_wl.c)
    .where(_wl.c.workflow_id == _after.c.workflow_id, _wl.c.sequence > _after.c.after_seq)
    .order_by(_wl.c.sequence)
    .offset(literal_column("0"))
    .lateral("e")
)
# Events following each (workflow, last delivered sequence) pair, per workflow in order.
_EVENTS_AFTER_SEQUENCES = (
    select(*_following.c)
    .select_from(_after)
    .join(_following, true())
    .order_by(_following.c.workflow_id, _following.c.sequence)
)
_FAST_EVENTS_AFTER_SEQUENCES = FastQuery(_EVENTS_AFTER_SEQUENCES)


# The fields a stored row does not carry: trace-only, all None (immutable defaults).
_TRACE_ONLY_FIELDS = (
    "session_id",
    "correlation_id",
    "tool_name",
    "tool_input",
    "model",
    "trace_id",
    "parent_id",
)
_ROW_FIELDS = frozenset(WorkflowEvent.model_fields) - set(_TRACE_ONLY_FIELDS)
_set_attribute = object.__setattr__


def stored_event(row: Mapping[str, Any]) -> WorkflowEvent:
    """A `workflow_log` row as an event, without re-validating what the table guarantees.

    The relay builds one of these per event per process, for every process's events:
    validation, or even pydantic's `model_construct` (which looks up the defaults of the
    seven trace-only fields one by one), cost more than the read itself. Column types and
    CHECK constraints already hold every field; this fills the instance as
    `model_construct` would (tests compare the two).
    """
    event = WorkflowEvent.__new__(WorkflowEvent)
    _set_attribute(
        event,
        "__dict__",
        {
            "id": row["id"],
            "domain": EventDomain.WORKFLOW,
            "workflow_id": row["workflow_id"],
            "sequence": row["sequence"],
            "timestamp": row["timestamp"],
            "agent": row["agent"] or "",
            "event_type": EventType(row["event_type"]),
            "level": EventLevel(row["level"]),
            "message": row["message"],
            "data": row["data"],
            "session_id": None,
            "correlation_id": None,
            "tool_name": None,
            "tool_input": None,
            "is_error": row["is_error"],
            "model": None,
            "trace_id": None,
            "parent_id": None,
        },
    )
    _set_attribute(event, "__pydantic_fields_set__", set(_ROW_FIELDS))
    _set_attribute(event, "__pydantic_extra__", None)
    _set_attribute(event, "__pydantic_private__", None)
    return event


# Workflows that may have written events since `since`: not finished, or finished after it.
_COUNTERS_SINCE = select(workflows.c.id, workflows.c.event_sequence).where(
    workflows.c.event_sequence > 0,
    or_(
        text("status IN ('pending', 'in_progress', 'blocked')"),
        workflows.c.completed_at >= bindparam("since"),
    ),
)
_COUNTERS_OF = select(workflows.c.id, workflows.c.event_sequence).where(
    workflows.c.id == func.any(bindparam("workflow_ids", type_=ARRAY(UUID(as_uuid=True))))
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

    async def counters_of(self, workflow_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        """{workflow id: last sequence handed out} of these workflows (primary-key lookups)."""
        if not workflow_ids:
            return {}
        async with self._connect() as conn:
            rows = (await conn.execute(_COUNTERS_OF, {"workflow_ids": workflow_ids})).all()
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
