"""The event log: event models, `save_event` sequencing and payload safety, and the readers."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy import event as sa_event
from sqlalchemy import insert, select

from amelia.server.database import Database, schema
from amelia.server.database.errors import ConstraintViolationError, translate_integrity_errors
from amelia.server.database.event_log import (
    DATA_PREVIEW_CHARS,
    MAX_EVENT_DATA_BYTES,
    MAX_EVENT_MESSAGE_CHARS,
)
from amelia.server.database.repository import WorkflowRepository
from amelia.server.exceptions import WorkflowNotFoundError
from amelia.server.models.events import (
    PERSISTED_TYPES,
    EventDomain,
    EventLevel,
    EventType,
    WorkflowEvent,
    get_event_level,
)

wl = schema.workflow_log


async def add_workflow(db: Database) -> uuid.UUID:
    wid = uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.workflows).values(id=wid, issue_id="I-1", worktree_path=f"/wt/{wid}")
        )
    return wid


def make_event(
    workflow_id: uuid.UUID,
    sequence: int = 0,
    event_type: EventType = EventType.STAGE_STARTED,
    **fields: Any,
) -> WorkflowEvent:
    values: dict[str, Any] = {
        "id": uuid.uuid4(),
        "workflow_id": workflow_id,
        "sequence": sequence,
        "timestamp": datetime.now(UTC),
        "agent": "developer",
        "event_type": event_type,
        "message": "hello",
    }
    values.update(fields)
    return WorkflowEvent(**values)


async def counter(db: Database, workflow_id: uuid.UUID) -> int:
    async with db.connection() as conn:
        value = await conn.scalar(
            select(schema.workflows.c.event_sequence).where(schema.workflows.c.id == workflow_id)
        )
    assert value is not None
    return int(value)


async def stored_sequences(db: Database, workflow_id: uuid.UUID) -> list[int]:
    async with db.connection() as conn:
        result = await conn.scalars(
            select(wl.c.sequence).where(wl.c.workflow_id == workflow_id).order_by(wl.c.sequence)
        )
        return list(result)


async def raw_data(db: Database, event_id: uuid.UUID) -> Any:
    """The stored `data` column, SQL NULL as None, without going through the mapper."""
    async with db.connection() as conn:
        return await conn.scalar(select(wl.c.data).where(wl.c.id == event_id))


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """Collect the SQL statements the engine sends while the block runs."""
    sent: list[str] = []

    def record(*args: Any) -> None:
        sent.append(args[2])

    sa_event.listen(db.engine.sync_engine, "before_cursor_execute", record)

    def record_direct(sql: str, arguments: tuple[Any, ...]) -> None:  # the fast read path
        sent.append(sql)

    db.direct_statement_listeners.append(record_direct)
    try:
        yield sent
    finally:
        sa_event.remove(db.engine.sync_engine, "before_cursor_execute", record)
        db.direct_statement_listeners.remove(record_direct)


@pytest.fixture
def repo(db: Database) -> WorkflowRepository:
    return WorkflowRepository(db)


# --- models ----------------------------------------------------------------------------------


def test_event_type_and_persisted_sets() -> None:
    assert len(EventType) == 41
    assert len(PERSISTED_TYPES) == 27
    ephemeral = set(EventType) - PERSISTED_TYPES
    assert EventType.STREAM in ephemeral and EventType.AGENT_MESSAGE in ephemeral
    assert EventType.BRAINSTORM_TEXT in ephemeral and EventType.ORACLE_TOOL_CALL in ephemeral
    assert EventType.BRAINSTORM_ARTIFACT_CREATED in PERSISTED_TYPES
    assert {d.value for d in EventDomain} == {"workflow", "brainstorm", "oracle"}


@pytest.mark.parametrize(
    ("event_type", "level"),
    [
        (EventType.WORKFLOW_FAILED, EventLevel.ERROR),
        (EventType.ORACLE_CONSULTATION_FAILED, EventLevel.ERROR),
        (EventType.SYSTEM_WARNING, EventLevel.WARNING),
        (EventType.APPROVAL_REJECTED, EventLevel.INFO),
        (EventType.REVIEW_COMPLETED, EventLevel.INFO),
        (EventType.REVIEW_REQUESTED, EventLevel.DEBUG),
        (EventType.FILE_CREATED, EventLevel.DEBUG),
        (EventType.CLAUDE_THINKING, EventLevel.DEBUG),
    ],
)
def test_level_is_derived_from_type(event_type: EventType, level: EventLevel) -> None:
    assert get_event_level(event_type) is level
    assert make_event(uuid.uuid4(), event_type=event_type).level is level


def test_explicit_level_wins_and_fields_are_validated() -> None:
    assert make_event(uuid.uuid4(), level=EventLevel.ERROR).level is EventLevel.ERROR
    parsed = make_event(str(uuid.uuid4()), id=str(uuid.uuid4()))  # type: ignore[arg-type]
    assert isinstance(parsed.id, uuid.UUID) and isinstance(parsed.workflow_id, uuid.UUID)
    with pytest.raises(ValidationError):
        make_event(uuid.uuid4(), sequence=-1)
    with pytest.raises(ValidationError):
        make_event(uuid.uuid4(), timestamp=datetime(2026, 1, 1))  # naive
    with pytest.raises(ValidationError):
        make_event(uuid.uuid4(), id="not-a-uuid")


# --- save_event: sequencing ------------------------------------------------------------------


async def test_ephemeral_types_are_returned_untouched(
    db: Database, repo: WorkflowRepository
) -> None:
    event = make_event(uuid.uuid4(), event_type=EventType.STREAM)  # not even a real workflow
    with statements(db) as sent:
        assert await repo.save_event(event) is event
    assert sent == []
    assert event.sequence == 0
    assert not await repo.event_exists(event.id)


async def test_database_allocates_sequences_in_one_statement(
    db: Database, repo: WorkflowRepository
) -> None:
    wid = await add_workflow(db)
    with statements(db) as sent:
        first = await repo.save_event(make_event(wid))
    assert len(sent) == 1
    second = await repo.save_event(make_event(wid, event_type=EventType.TASK_FAILED))
    assert (first.sequence, second.sequence) == (1, 2)
    assert await counter(db, wid) == 2
    assert await repo.get_recent_events(wid) == [first, second]


async def test_given_sequence_is_kept_and_raises_the_counter(
    db: Database, repo: WorkflowRepository
) -> None:
    wid = await add_workflow(db)
    assert (await repo.save_event(make_event(wid, sequence=7))).sequence == 7
    assert await counter(db, wid) == 7
    assert (await repo.save_event(make_event(wid, sequence=3))).sequence == 3  # a free slot
    assert await counter(db, wid) == 7  # GREATEST: never lowered
    assert (await repo.save_event(make_event(wid))).sequence == 8
    assert await stored_sequences(db, wid) == [3, 7, 8]


async def test_taken_sequence_gets_a_fresh_number(
    db: Database, repo: WorkflowRepository, caplog: pytest.LogCaptureFixture
) -> None:
    wid = await add_workflow(db)
    await repo.save_event(make_event(wid, sequence=5))
    clash = make_event(wid, sequence=5, message="second at 5")
    with caplog.at_level(logging.WARNING, logger="amelia.server.database.event_log"):
        stored = await repo.save_event(clash)
    assert stored.sequence == 6 and stored.id == clash.id
    assert "taken by another event" in caplog.text
    assert await stored_sequences(db, wid) == [5, 6]


async def test_counter_behind_the_log_resyncs(db: Database, repo: WorkflowRepository) -> None:
    """Rows written around the counter (e.g. a bulk import) cause no duplicate-key error."""
    wid = await add_workflow(db)
    async with db.connection() as conn:
        await conn.execute(
            insert(wl),
            [
                {
                    "id": uuid.uuid4(),
                    "workflow_id": wid,
                    "sequence": seq,
                    "event_type": "stage_started",
                    "level": "info",
                    "message": "imported",
                }
                for seq in (1, 2, 3)
            ],
        )
    assert (await repo.save_event(make_event(wid))).sequence == 4
    assert (await repo.save_event(make_event(wid))).sequence == 5


async def test_saving_the_same_event_twice_is_idempotent(
    db: Database, repo: WorkflowRepository
) -> None:
    wid = await add_workflow(db)
    event = make_event(wid)
    first = await repo.save_event(event)
    again = await repo.save_event(event)
    given = make_event(wid, sequence=40)
    assert await repo.save_event(given) == await repo.save_event(given)
    assert again == first and again.sequence == 1
    assert await stored_sequences(db, wid) == [1, 40]
    # The re-save did not burn a number.
    assert (await repo.save_event(make_event(wid))).sequence == 41


async def test_unknown_workflow_raises(db: Database, repo: WorkflowRepository) -> None:
    for sequence in (0, 3):
        event = make_event(uuid.uuid4(), sequence=sequence)
        with pytest.raises(WorkflowNotFoundError):
            await repo.save_event(event)
        assert not await repo.event_exists(event.id)


async def test_held_transaction_rolls_back_event_and_counter(
    db: Database, repo: WorkflowRepository
) -> None:
    wid = await add_workflow(db)
    async with db.engine.connect() as conn:
        transaction = await conn.begin()
        assert (await repo.bind(conn).save_event(make_event(wid))).sequence == 1
        await transaction.rollback()
    assert await counter(db, wid) == 0 and await stored_sequences(db, wid) == []
    assert (await repo.save_event(make_event(wid))).sequence == 1


async def test_concurrent_writers_get_exactly_one_to_n(database_url: str) -> None:
    """10 coroutines, each on its own pooled connection, 50 events each, all sequence 0."""
    async with Database(database_url, min_size=10, max_size=10) as db:
        wid = await add_workflow(db)
        repo = WorkflowRepository(db)
        start = asyncio.Event()

        async def writer() -> list[int]:
            async with db.connection() as conn:
                mine = repo.bind(conn)
                await start.wait()
                return [(await mine.save_event(make_event(wid))).sequence for _ in range(50)]

        tasks = [asyncio.create_task(writer()) for _ in range(10)]
        await asyncio.sleep(0.2)  # let every writer check out its connection
        start.set()
        results = await asyncio.gather(*tasks)
        assert await stored_sequences(db, wid) == list(range(1, 501))
        assert sorted(s for got in results for s in got) == list(range(1, 501))
        assert all(got == sorted(got) for got in results)
        assert await counter(db, wid) == 500


# --- save_event: what is stored ---------------------------------------------------------------


class Payload(BaseModel):
    path: Path
    when: datetime


async def test_columns_round_trip(db: Database, repo: WorkflowRepository) -> None:
    wid = await add_workflow(db)
    ref = uuid.uuid4()
    when = datetime(2026, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=5)))
    data = {
        "nested": {"list": [1, 2.5, None, True, {"deep": ["x"]}], "big": 2**62},
        "unicode": "héllo 世界 🚀 שלום",
        "emoji key 🔑": "v",
        "ref": ref,
        "path": Path("/repo/a.py"),
        "model": Payload(path=Path("/p"), when=when),
        "nan": math.nan,
    }
    event = make_event(
        wid,
        event_type=EventType.SYSTEM_ERROR,
        timestamp=when,
        agent="reviewer",
        data=data,
        is_error=True,
        session_id="s",
        correlation_id="c",
        tool_name="t",
        model="m",
        domain=EventDomain.ORACLE,
    )
    saved = await repo.save_event(event)
    (loaded,) = await repo.get_recent_events(wid)
    expected_data = {
        "nested": {"list": [1, 2.5, None, True, {"deep": ["x"]}], "big": 2**62},
        "unicode": "héllo 世界 🚀 שלום",
        "emoji key 🔑": "v",
        "ref": str(ref),
        "path": "/repo/a.py",
        "model": {"path": "/p", "when": when.isoformat()},
        "nan": None,
    }
    assert loaded.data == expected_data and saved.data == expected_data
    assert loaded.timestamp == when and loaded.timestamp.utcoffset() == timedelta(0)
    assert (loaded.level, loaded.is_error, loaded.agent) == (EventLevel.ERROR, True, "reviewer")
    # Trace-only fields: kept on the returned event, lost in the log.
    assert (saved.domain, saved.session_id, saved.tool_name) == (EventDomain.ORACLE, "s", "t")
    assert (loaded.domain, loaded.session_id, loaded.correlation_id) == (
        EventDomain.WORKFLOW,
        None,
        None,
    )
    assert loaded == saved.model_copy(
        update={"domain": EventDomain.WORKFLOW, "session_id": None, "correlation_id": None}
        | {"tool_name": None, "model": None}
    )


@pytest.mark.parametrize("data", [None, {}])
async def test_empty_data_is_sql_null(
    db: Database, repo: WorkflowRepository, data: dict[str, Any] | None
) -> None:
    wid = await add_workflow(db)
    event = await repo.save_event(make_event(wid, data=data))
    async with db.connection() as conn:
        is_null = await conn.scalar(select(wl.c.data.is_(None)).where(wl.c.id == event.id))
    assert is_null is True and event.data is None


async def test_missing_level_falls_back_to_debug(db: Database, repo: WorkflowRepository) -> None:
    wid = await add_workflow(db)
    event = make_event(wid, event_type=EventType.WORKFLOW_FAILED)
    event.level = None  # e.g. cleared after construction
    assert (await repo.save_event(event)).level is EventLevel.DEBUG


async def test_level_check_constraint(db: Database) -> None:
    wid = await add_workflow(db)
    row = {"id": uuid.uuid4(), "workflow_id": wid, "sequence": 1, "event_type": "x"}
    async with db.connection() as conn:
        with pytest.raises(ConstraintViolationError) as caught, translate_integrity_errors():
            await conn.execute(insert(wl).values(level="loud", message="m", **row))
    assert caught.value.constraint == "ck_workflow_log__level"


async def test_nul_and_surrogates_become_replacement_characters(
    db: Database, repo: WorkflowRepository
) -> None:
    wid = await add_workflow(db)
    data = {
        "k\x00ey": "va\x00lue",
        "list": ["a\x00", {"in\x00ner": ["\x00"]}],
        "literal": "\\u0000 and \\\\u0000 stay text",
        "surrogate": "x\ud800y",
        "escaped backslash then NUL": "\\\x00",
    }
    event = make_event(wid, message="bad\x00message \udfff", agent="dev\x00", data=data)
    await repo.save_event(event)
    (loaded,) = await repo.get_recent_events(wid)
    assert loaded.message == "bad\ufffdmessage \ufffd" and loaded.agent == "dev\ufffd"
    assert loaded.data == {
        "k\ufffdey": "va\ufffdlue",
        "list": ["a\ufffd", {"in\ufffdner": ["\ufffd"]}],
        "literal": "\\u0000 and \\\\u0000 stay text",
        "surrogate": "x\ufffdy",
        "escaped backslash then NUL": "\\\ufffd",
    }


async def test_huge_payload_is_truncated_with_a_marker(
    db: Database, repo: WorkflowRepository, caplog: pytest.LogCaptureFixture
) -> None:
    wid = await add_workflow(db)
    huge = {"tool_results": ["é" * 1000 for _ in range(2500)]}  # about 5 MB of UTF-8
    original = len(json.dumps(huge, ensure_ascii=False, separators=(",", ":")).encode())
    assert original > 4_900_000
    with caplog.at_level(logging.WARNING, logger="amelia.server.database.event_log"):
        saved = await repo.save_event(
            make_event(wid, event_type=EventType.STAGE_COMPLETED, data=huge)
        )
    assert "over the" in caplog.text
    stored = await raw_data(db, saved.id)
    assert stored == saved.data
    assert stored["_truncated"] is True and stored["original_bytes"] == original
    assert len(stored["preview"]) == DATA_PREVIEW_CHARS
    assert stored["preview"].startswith('{"tool_results":["éé')


async def test_data_budget_boundary(db: Database, repo: WorkflowRepository) -> None:
    wid = await add_workflow(db)
    overhead = len('{"s":""}')
    fits = {"s": "a" * (MAX_EVENT_DATA_BYTES - overhead)}
    too_big = {"s": "a" * (MAX_EVENT_DATA_BYTES - overhead + 1)}
    assert (await repo.save_event(make_event(wid, data=fits))).data == fits
    assert (await repo.save_event(make_event(wid, data=too_big))).data["_truncated"] is True  # type: ignore[index]


async def test_long_message_is_truncated(db: Database, repo: WorkflowRepository) -> None:
    wid = await add_workflow(db)
    exact = "m" * MAX_EVENT_MESSAGE_CHARS
    assert (await repo.save_event(make_event(wid, message=exact))).message == exact
    await repo.save_event(make_event(wid, message="x" * 1_000_000))
    _, long = await repo.get_recent_events(wid)
    assert long.message.startswith("x" * MAX_EVENT_MESSAGE_CHARS)
    assert long.message.endswith("[truncated: 1000000 characters]")
    assert len(long.message) < MAX_EVENT_MESSAGE_CHARS + 100


async def test_unserialisable_data_is_stored_as_a_marker(
    db: Database, repo: WorkflowRepository
) -> None:
    wid = await add_workflow(db)
    odd = await repo.save_event(make_event(wid, data={"obj": object()}))
    assert odd.data is not None and odd.data["obj"].startswith("<object object")
    broken = await repo.save_event(make_event(wid, data={"raw": b"\xff\xfe"}))
    assert broken.data is not None and broken.data["_unserializable"] is True
    assert "UnicodeDecodeError" in broken.data["error"]


# --- readers ---------------------------------------------------------------------------------


async def test_max_sequence_and_exists(db: Database, repo: WorkflowRepository) -> None:
    wid = await add_workflow(db)
    assert await repo.get_max_event_sequence(wid) == 0
    assert await repo.get_max_event_sequence(uuid.uuid4()) == 0
    event = await repo.save_event(make_event(wid))
    await repo.save_event(make_event(wid, sequence=12))
    assert await repo.get_max_event_sequence(wid) == 12
    assert await repo.event_exists(event.id)
    assert not await repo.event_exists(uuid.uuid4())


async def test_events_after_an_anchor(db: Database, repo: WorkflowRepository) -> None:
    wid, other = await add_workflow(db), await add_workflow(db)
    events = [await repo.save_event(make_event(wid, message=f"e{i}")) for i in range(6)]
    await repo.save_event(make_event(other))  # another workflow: never included
    with statements(db) as sent:
        after = await repo.get_events_after(events[1].id)
    assert len(sent) == 1
    assert after == events[2:]
    assert await repo.get_events_after(events[1].id, limit=2) == events[2:4]
    assert await repo.get_events_after(events[-1].id) == []
    assert await repo.get_events_after(events[0].id, limit=0) == []


async def test_events_after_an_unknown_anchor_raises(
    db: Database, repo: WorkflowRepository
) -> None:
    wid = await add_workflow(db)
    await repo.save_event(make_event(wid))
    for limit in (1000, 0):
        with pytest.raises(ValueError, match="not found"):
            await repo.get_events_after(uuid.uuid4(), limit=limit)


async def test_recent_events(db: Database, repo: WorkflowRepository, database_url: str) -> None:
    wid = await add_workflow(db)
    events = [await repo.save_event(make_event(wid, message=f"e{i}")) for i in range(8)]
    assert await repo.get_recent_events(wid, limit=3) == events[5:]
    assert await repo.get_recent_events(wid) == events
    assert await repo.get_recent_events(uuid.uuid4()) == []
    # limit <= 0 answers without a query: a repository whose database is not even connected.
    offline = WorkflowRepository(Database(database_url))
    assert await offline.get_recent_events(wid, limit=0) == []
    assert await offline.get_recent_events(wid, limit=-5) == []
