"""The persisted event log (`workflow_log`): part of `WorkflowRepository`.

Sequence numbers come from the database: `workflows.event_sequence` is the last number handed
out for a workflow, and `save_event` increments it and inserts the event in one statement. The
UPDATE's row lock serialises writers of one workflow (across processes too) until the statement
commits, so numbers strictly increase, without gaps in normal operation and without a
read-max-then-insert race.

Recording an event must never fail a workflow, so payloads are made storable before they reach
the database: oversized `data` and `message` are truncated with a marker, and characters
PostgreSQL refuses in TEXT/JSONB (NUL, lone surrogates) become U+FFFD.

Each stored event is announced to every process's event relay: after its commit, through the
batched `Database.event_hints` (event_hints.py); inside a caller's open transaction, by a
notification in that transaction (delivered at its commit, dropped with a rollback).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Mapping
from typing import Any

from pydantic_core import PydanticSerializationError
from sqlalchemy import Text, bindparam, cast, exists, func, select, true, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.expression import ColumnElement, Executable

from amelia.server.database.base import RepositoryBase, is_autocommit
from amelia.server.database.errors import translate_integrity_errors
from amelia.server.database.fast_query import FastQuery
from amelia.server.database.lost_connections import retry_if_connection_lost
from amelia.server.database.schema import EVENTS_CHANNEL, workflow_log, workflows
from amelia.server.database.types import json_dumps
from amelia.server.exceptions import FencedOutError, WorkflowNotFoundError
from amelia.server.models.events import PERSISTED_TYPES, EventLevel, WorkflowEvent

logger = logging.getLogger(__name__)

# Serialised `data` above this many UTF-8 bytes is replaced by a truncation marker. JSONB can
# hold far more, but an audit-log row is not the place for a node's whole output.
MAX_EVENT_DATA_BYTES = 1024 * 1024
# How much of the oversized JSON text the marker keeps, in characters.
DATA_PREVIEW_CHARS = 4096
# Messages longer than this many characters are cut and get `MESSAGE_TRUNCATED_SUFFIX`.
MAX_EVENT_MESSAGE_CHARS = 64 * 1024
MESSAGE_TRUNCATED_SUFFIX = "… [truncated: {total} characters]"
# How often `save_event` tries again after its sequence number was already taken.
_SAVE_ATTEMPTS = 3

REPLACEMENT_CHARACTER = "\ufffd"
_NUL_OR_SURROGATE = re.compile("[\x00\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A `\u0000` escape in JSON text, i.e. one preceded by an even number of backslashes
# (`\\u0000` is an escaped backslash followed by the letters "u0000").
_JSON_NUL_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")

_STORED_FIELDS = (
    "id",
    "workflow_id",
    "sequence",
    "timestamp",
    "event_type",
    "level",
    "agent",
    "message",
    "data",
    "is_error",
)


# --- making a payload storable ----------------------------------------------------------------


def clean_text(value: str) -> str:
    """`value` with NUL characters and lone surrogates replaced by U+FFFD."""
    if value.isascii() and "\x00" not in value:
        return value
    return _NUL_OR_SURROGATE.sub(REPLACEMENT_CHARACTER, value)


def _clean_json_text(text: str) -> str:
    # PostgreSQL refuses the \u0000 escape in JSONB (and NUL in TEXT); json_dumps writes NUL
    # as that escape, in keys and values alike, so fixing the text fixes every string in it.
    if "\\u0000" in text:
        text = _JSON_NUL_ESCAPE.sub(lambda m: m.group(1) + REPLACEMENT_CHARACTER, text)
    # Lone surrogates stay raw with ensure_ascii=False and cannot be encoded as UTF-8.
    if not text.isascii():
        text = _SURROGATE.sub(REPLACEMENT_CHARACTER, text)
    return text


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def encode_event_data(event: WorkflowEvent) -> str | None:
    """The JSON text to store for `event.data`, or None (SQL NULL) when it is empty.

    Serialises with `model_dump(mode="json")` (unknown objects become their `repr`), cleans
    what PostgreSQL refuses, and replaces a payload over `MAX_EVENT_DATA_BYTES` with
    `{"_truncated": true, "original_bytes": N, "preview": "<first DATA_PREVIEW_CHARS>"}`.
    A payload that cannot be serialised at all becomes `{"_unserializable": true, ...}`.
    """
    if not event.data:
        return None
    try:
        dumped = event.model_dump(mode="json", include={"data"}, fallback=repr)["data"]
        text = _clean_json_text(json_dumps(dumped))
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        # Undecodable bytes, circular references, ...: keep what explains the failure.
        logger.warning("event %s: data is not serialisable (%s); storing a marker", event.id, exc)
        return json_dumps(
            {
                "_unserializable": True,
                "error": clean_text(f"{type(exc).__name__}: {exc}")[:DATA_PREVIEW_CHARS],
                "preview": clean_text(repr(event.data)[:DATA_PREVIEW_CHARS]),
            }
        )
    size = _utf8_size(text)
    if size > MAX_EVENT_DATA_BYTES:
        logger.warning(
            "event %s (%s): data is %d bytes, over the %d-byte budget; storing a preview",
            event.id,
            event.event_type,
            size,
            MAX_EVENT_DATA_BYTES,
        )
        return json_dumps(
            {"_truncated": True, "original_bytes": size, "preview": text[:DATA_PREVIEW_CHARS]}
        )
    return text


def storable_message(message: str) -> str:
    """`message` cleaned of NUL/surrogates and cut to `MAX_EVENT_MESSAGE_CHARS` with a marker."""
    message = clean_text(message)
    if len(message) > MAX_EVENT_MESSAGE_CHARS:
        suffix = MESSAGE_TRUNCATED_SUFFIX.format(total=len(message))
        message = message[:MAX_EVENT_MESSAGE_CHARS] + suffix
    return message


# --- statements (built once; the compiled cache reuses them) --------------------------------

_wl = workflow_log
_EVENT_COLUMNS = tuple(_wl.c[name] for name in _STORED_FIELDS)


def _insert_event(
    next_sequence: ColumnElement[int], *, keep_given: bool, fenced: bool = False
) -> Executable:
    """WITH seq AS (UPDATE workflows ... RETURNING) INSERT INTO workflow_log ... RETURNING.

    `next_sequence` is the counter's new value (an expression over `workflows` columns); the
    event stores the caller's `sequence` when `keep_given`, else the counter's new value. The
    UPDATE matches nothing when the workflow does not exist, or when the event id is already
    stored (so re-saving an event does not burn a number); the INSERT then inserts nothing.
    ON CONFLICT DO NOTHING turns a race on the id or the (workflow_id, sequence) key into
    "nothing inserted" as well: the caller asks why (`_PROBE`) instead of a duplicate-key
    error aborting the statement (and the caller's transaction, on a held connection).

    Parameters are named `ev_*`: SQLAlchemy turns an execution parameter named like a column
    of an UPDATE's table (`id`) into an extra SET clause. `fenced` adds the run's fencing
    number to the UPDATE: a run that lost its workflow to another process inserts nothing.
    """
    guard = [workflows.c.fence == bindparam("ev_fence")] if fenced else []
    seq = (
        update(workflows)
        .where(
            workflows.c.id == bindparam("ev_workflow_id"),
            ~exists().where(_wl.c.id == bindparam("ev_id")),
            *guard,
        )
        .values(event_sequence=next_sequence)
        .returning(workflows.c.event_sequence)
        .cte("seq")
    )
    stored_sequence = (
        bindparam("ev_sequence", type_=_wl.c.sequence.type) if keep_given else seq.c.event_sequence
    )
    values = select(
        bindparam("ev_id", type_=_wl.c.id.type),
        bindparam("ev_workflow_id", type_=_wl.c.workflow_id.type),
        stored_sequence,
        bindparam("ev_timestamp", type_=_wl.c.timestamp.type),
        bindparam("ev_event_type", type_=Text),
        bindparam("ev_level", type_=Text),
        bindparam("ev_agent", type_=Text),
        bindparam("ev_message", type_=Text),
        # Already JSON text (serialised once, to measure it): the server parses it.
        cast(bindparam("ev_data", type_=Text), JSONB),
        bindparam("ev_is_error", type_=_wl.c.is_error.type),
    ).select_from(seq)  # explicit: with a given sequence no column refers to the CTE
    return (
        pg_insert(_wl)
        .from_select(list(_STORED_FIELDS), values)
        .on_conflict_do_nothing()
        .returning(*_EVENT_COLUMNS)
    )


def _insert_statements(fenced: bool) -> tuple[Executable, Executable, Executable]:
    """(allocated, given, resynced) inserts, with or without the run's fence."""
    # sequence 0: the next number.
    allocated = _insert_event(workflows.c.event_sequence + 1, keep_given=False, fenced=fenced)
    # A caller-given sequence: kept, and the counter raised so later allocations stay above it.
    given = _insert_event(
        func.greatest(
            workflows.c.event_sequence, bindparam("ev_sequence", type_=_wl.c.sequence.type)
        ),
        keep_given=True,
        fenced=fenced,
    )
    # After a clash: the next number above both the counter and the log (rows written around
    # the counter, e.g. by a bulk import, cannot make this clash again).
    resynced = _insert_event(
        func.greatest(
            workflows.c.event_sequence,
            select(func.coalesce(func.max(_wl.c.sequence), 0))
            .where(_wl.c.workflow_id == bindparam("ev_workflow_id"))
            .scalar_subquery(),
        )
        + 1,
        keep_given=False,
        fenced=fenced,
    )
    return allocated, given, resynced


_INSERT_ALLOCATED, _INSERT_GIVEN, _INSERT_RESYNCED = _insert_statements(fenced=False)
_FENCED_INSERTS = _insert_statements(fenced=True)
_FENCE_OF = select(workflows.c.fence).where(workflows.c.id == bindparam("ev_workflow_id"))

# Why nothing was inserted: does the workflow exist, and is this event id already stored?
# Always exactly one row (the stored event's columns are NULL when there is none).
_probe_workflow = select(
    exists().where(workflows.c.id == bindparam("ev_workflow_id")).label("workflow_exists")
).subquery("probe")
_probe_event = select(*_EVENT_COLUMNS).where(_wl.c.id == bindparam("ev_id")).subquery("stored")
_PROBE = select(_probe_workflow.c.workflow_exists, *_probe_event.c).select_from(
    _probe_workflow.outerjoin(_probe_event, true())
)

_MAX_SEQUENCE = select(func.coalesce(func.max(_wl.c.sequence), 0)).where(
    _wl.c.workflow_id == bindparam("workflow_id")
)
_EVENT_EXISTS = select(exists().where(_wl.c.id == bindparam("event_id")))

# The anchor and the events after it in one statement. The LEFT JOIN keeps one all-NULL event
# row when the anchor exists but nothing follows it, so "no anchor" (no rows) is distinguishable.
# The anchor is a single row, so the statement's LIMIT bounds the events of that one workflow.
_anchor_sq = (
    select(_wl.c.workflow_id, _wl.c.sequence).where(_wl.c.id == bindparam("event_id"))
).subquery("anchor")
_after = _wl.alias("after")
_EVENTS_AFTER = (
    select(_anchor_sq.c.workflow_id.label("anchor_workflow_id"), *_after.c)
    .select_from(
        _anchor_sq.outerjoin(
            _after,
            (_after.c.workflow_id == _anchor_sq.c.workflow_id)
            & (_after.c.sequence > _anchor_sq.c.sequence),
        )
    )
    .order_by(_after.c.sequence)
    .limit(bindparam("limit"))
)

_RECENT_EVENTS = (
    select(*_EVENT_COLUMNS)
    .where(_wl.c.workflow_id == bindparam("workflow_id"))
    .order_by(_wl.c.sequence.desc())
    .limit(bindparam("limit"))
)
_FAST_RECENT_EVENTS = FastQuery(_RECENT_EVENTS)
_FAST_INSERT_GIVEN = FastQuery(_INSERT_GIVEN)
_FAST_INSERT_ALLOCATED = FastQuery(_INSERT_ALLOCATED)
_FAST_FENCED_INSERT_ALLOCATED = FastQuery(_FENCED_INSERTS[0])
_FAST_FENCED_INSERT_GIVEN = FastQuery(_FENCED_INSERTS[1])


def row_to_event(row: Mapping[Any, Any]) -> WorkflowEvent:
    """A `workflow_log` row as a `WorkflowEvent` (trace-only fields take their defaults)."""
    return WorkflowEvent(
        id=row["id"],
        workflow_id=row["workflow_id"],
        sequence=row["sequence"],
        timestamp=row["timestamp"],
        agent=row["agent"] or "",
        event_type=row["event_type"],
        level=row["level"],
        message=row["message"],
        data=row["data"],
        is_error=row["is_error"],
    )


def _as_stored(event: WorkflowEvent, stored: WorkflowEvent) -> WorkflowEvent:
    # The stored columns win (sequence, truncated payload, ...); the caller's trace-only
    # fields survive so the returned event can still be broadcast as emitted.
    return event.model_copy(update={name: getattr(stored, name) for name in _STORED_FIELDS})


class EventLogMixin(RepositoryBase):
    """Event-log methods of `WorkflowRepository` (spec data-layer.md 4.1 items 13-17)."""

    @retry_if_connection_lost()  # idempotent by event id: a restart must not lose it
    async def save_event(self, event: WorkflowEvent, *, fence: int | None = None) -> WorkflowEvent:
        """Persist an event of a persisted type and return it as stored.

        Types outside `PERSISTED_TYPES` are returned unchanged without touching the database.
        Sequence 0 lets the database allocate the workflow's next number; a positive sequence
        is kept. If that number is already taken by another event, a fresh number is
        allocated instead (with a warning): two events must not share a position and the
        event must not be lost. Saving an event id that is already stored writes nothing and
        returns the stored event (idempotent). One round trip; one or two more only when nothing
        was inserted (already stored, unknown workflow, or a taken number).

        Args:
            event: the event; `data` over `MAX_EVENT_DATA_BYTES` and `message` over
                `MAX_EVENT_MESSAGE_CHARS` are truncated with a marker, NUL characters
                become U+FFFD.

        Returns:
            The event with the stored columns (sequence, level, cleaned/truncated message and
            data, UTC timestamp); trace-only fields are kept from `event`.

            fence: the writing run's fencing number (see run_leases.py): the event is
                stored only while the workflow row still carries it.

        Raises:
            WorkflowNotFoundError: no workflow has `event.workflow_id`.
            FencedOutError: `fence` is given and the workflow carries another one.
        """
        if event.event_type not in PERSISTED_TYPES:
            return event
        params: dict[str, Any] = {
            "ev_id": event.id,
            "ev_workflow_id": event.workflow_id,
            "ev_sequence": event.sequence,
            "ev_timestamp": event.timestamp,
            "ev_event_type": event.event_type.value,
            "ev_level": (event.level or EventLevel.DEBUG).value,
            "ev_agent": clean_text(event.agent),
            "ev_message": storable_message(event.message),
            "ev_data": encode_event_data(event),
            "ev_is_error": event.is_error,
        }
        given = event.sequence > 0
        if fence is None:
            fast = _FAST_INSERT_GIVEN if given else _FAST_INSERT_ALLOCATED
            statement, resynced = (_INSERT_GIVEN if given else _INSERT_ALLOCATED), _INSERT_RESYNCED
        else:
            params["ev_fence"] = fence
            fast = _FAST_FENCED_INSERT_GIVEN if given else _FAST_FENCED_INSERT_ALLOCATED
            statement = _FENCED_INSERTS[1] if given else _FENCED_INSERTS[0]
            resynced = _FENCED_INSERTS[2]
        # The common case, one round trip on the fast path; the rest only when it inserted
        # nothing (already stored, unknown workflow, a stale fence, or a taken number).
        first = await self._fast_one(fast, params)
        if first is not None:
            new = row_to_event(first)
            await self._announce(new)
            return _as_stored(event, new)
        async with self._connect() as conn:
            for _attempt in range(_SAVE_ATTEMPTS):
                stored = await _insert(conn, statement, params)
                if stored is not None:
                    await self._announce(stored)
                    return _as_stored(event, stored)
                probe = (await conn.execute(_PROBE, params)).mappings().one()
                if probe["id"] is not None:
                    # Stored earlier: maybe by an attempt whose answer (and hint) was lost.
                    earlier = row_to_event(probe)
                    await self._announce(earlier)
                    return _as_stored(event, earlier)
                if not probe["workflow_exists"]:
                    raise WorkflowNotFoundError(event.workflow_id)
                if fence is not None and await conn.scalar(_FENCE_OF, params) != fence:
                    raise FencedOutError(event.workflow_id, fence)
                logger.warning(
                    "event %s: %s of workflow %s is taken by another event; "
                    "allocating a fresh number",
                    event.id,
                    f"sequence {event.sequence}" if event.sequence else "the next sequence",
                    event.workflow_id,
                )
                statement = resynced
        raise RuntimeError(
            f"could not allocate a sequence for event {event.id} of workflow "
            f"{event.workflow_id} after {_SAVE_ATTEMPTS} attempts"
        )

    async def _announce(self, stored: WorkflowEvent) -> None:
        """Tell every process's relay that `stored` exists (see the module docstring)."""
        held = self._held
        if held is not None and not is_autocommit(held):
            # Not committed yet: a notification in the same transaction arrives with it.
            await held.execute(
                select(func.pg_notify(EVENTS_CHANNEL, f"{stored.workflow_id}:{stored.sequence}"))
            )
            return
        self._db.event_hints.add(stored.workflow_id, stored.sequence)

    async def get_max_event_sequence(self, workflow_id: uuid.UUID) -> int:
        """The highest stored event sequence of a workflow, 0 when it has no events."""
        async with self._connect() as conn:
            value = await conn.scalar(_MAX_SEQUENCE, {"workflow_id": workflow_id})
        return int(value or 0)

    async def event_exists(self, event_id: uuid.UUID) -> bool:
        """Whether an event with this id is stored."""
        async with self._connect() as conn:
            return bool(await conn.scalar(_EVENT_EXISTS, {"event_id": event_id}))

    async def get_events_after(
        self, since_event_id: uuid.UUID, limit: int = 1000
    ) -> list[WorkflowEvent]:
        """Events of the anchor's workflow that follow it, oldest first (one round trip).

        Args:
            since_event_id: the anchor event (the last one the client has seen).
            limit: at most this many events; 0 or less returns none (after checking the
                anchor).

        Returns:
            Events with a greater sequence than the anchor, ascending by sequence.

        Raises:
            ValueError: no stored event has `since_event_id` (the WebSocket route answers
                `backfill_expired`).
        """
        # Fetch at least one row: the anchor's presence is what the rows tell us.
        params = {"event_id": since_event_id, "limit": max(limit, 1)}
        async with self._connect() as conn:
            rows = (await conn.execute(_EVENTS_AFTER, params)).mappings().all()
        if not rows:
            raise ValueError(f"event {since_event_id} not found")
        if limit <= 0:
            return []
        return [row_to_event(row) for row in rows if row["id"] is not None]

    async def get_recent_events(
        self, workflow_id: uuid.UUID, limit: int = 50
    ) -> list[WorkflowEvent]:
        """The last `limit` events of a workflow by sequence, returned oldest first.

        Args:
            workflow_id: the workflow.
            limit: how many; 0 or less returns `[]` without a query.

        Returns:
            Up to `limit` events, ascending by sequence; `[]` for an unknown workflow.
        """
        if limit <= 0:
            return []
        rows = await self._fast_all(
            _FAST_RECENT_EVENTS, {"workflow_id": workflow_id, "limit": limit}
        )
        return [row_to_event(row) for row in reversed(rows)]


async def _insert(
    conn: AsyncConnection, statement: Executable, params: dict[str, Any]
) -> WorkflowEvent | None:
    """Run one insert statement; the stored event, or None when nothing was inserted."""
    with translate_integrity_errors():
        row = (await conn.execute(statement, params)).mappings().first()
    return None if row is None else row_to_event(row)
