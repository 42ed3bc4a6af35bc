"""Event hints: batched by the writer, per row for other writers, lost hints swept up.

Real PostgreSQL and real LISTEN connections throughout: a hint counts only when a listening
session received it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from amelia.server.cluster.event_relay import LIVE_CHANNEL, EventRelay
from amelia.server.cluster.listener import Listener
from amelia.server.database import Database
from amelia.server.database.event_feed import _FAST_EVENTS_AFTER_SEQUENCES, EventFeedRepository
from amelia.server.database.event_hints import (
    MAX_HINT_PAYLOAD_BYTES,
    decode_hints,
    encode_hints,
)
from amelia.server.database.repository import WorkflowRepository
from amelia.server.database.schema import EVENTS_CHANNEL
from amelia.server.events.bus import EventBus
from amelia.server.models.events import WorkflowEvent
from tests.database.test_event_log import add_workflow, make_event


class Notifications:
    """A plain LISTEN session collecting (channel, payload) in arrival order."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.received: list[tuple[str, str]] = []
        self.arrived = asyncio.Event()

    def record(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        self.received.append((channel, payload))
        self.arrived.set()

    def hints(self) -> list[tuple[uuid.UUID, int]]:
        return [
            hint
            for channel, payload in self.received
            if channel == EVENTS_CHANNEL
            for hint in decode_hints(payload)
        ]

    async def until(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def listening(database_url: str) -> AsyncIterator[Notifications]:
    conn = await asyncpg.connect(database_url)
    notes = Notifications(conn)
    await conn.add_listener(EVENTS_CHANNEL, notes.record)
    await conn.add_listener(LIVE_CHANNEL, notes.record)
    try:
        yield notes
    finally:
        await conn.close()


def covered(hints: list[tuple[uuid.UUID, int]], workflow_id: uuid.UUID, sequence: int) -> bool:
    """Whether a hint tells a relay to read this event ("everything after" a lower one)."""
    return any(wid == workflow_id and low <= sequence for wid, low in hints)


async def test_a_burst_of_saves_is_announced_in_far_fewer_notifications(
    db: Database, listening: Notifications
) -> None:
    repo = WorkflowRepository(db)
    workflows = [await add_workflow(db) for _ in range(3)]

    async def write(wid: uuid.UUID) -> list[int]:
        return [(await repo.save_event(make_event(wid))).sequence for _ in range(100)]

    written = dict(zip(workflows, await asyncio.gather(*map(write, workflows)), strict=True))
    await listening.until(
        lambda: all(covered(listening.hints(), wid, seqs[-1]) for wid, seqs in written.items())
    )
    await asyncio.sleep(0.1)  # nothing is still on its way
    hints = listening.hints()
    for wid, sequences in written.items():
        assert sequences == list(range(1, 101))
        assert all(covered(hints, wid, s) for s in sequences)
        # Per workflow, the hints only move forward: a relay never reads backwards.
        lows = [low for w, low in hints if w == wid]
        assert lows == sorted(lows) and lows[0] == 1
    notifications = [c for c, _ in listening.received]
    assert len(notifications) < 300 / 3, f"{len(notifications)} notifications for 300 events"
    assert db.event_hints.sent_hints == len(hints)


async def test_a_single_save_is_announced_at_once(db: Database, listening: Notifications) -> None:
    wid = await add_workflow(db)
    stored = await WorkflowRepository(db).save_event(make_event(wid))
    started = time.monotonic()
    await listening.until(lambda: covered(listening.hints(), wid, stored.sequence), timeout=2)
    # Sent right after the commit (no batching delay after a quiet spell).
    assert time.monotonic() - started < 0.5
    assert listening.hints() == [(wid, 1)]


async def test_other_writers_still_notify_per_row(
    database_url: str, db: Database, listening: Notifications
) -> None:
    wid = await add_workflow(db)
    insert = (
        "INSERT INTO workflow_log (id, workflow_id, sequence, timestamp, event_type, level, "
        "message) VALUES ($1, $2, $3, now(), 'stage_started', 'info', 'from psql')"
    )
    foreign = await asyncpg.connect(database_url)  # no deferred-hints setting
    try:
        for sequence in (1, 2):
            await foreign.execute(insert, uuid.uuid4(), wid, sequence)
        await listening.until(lambda: len(listening.hints()) == 2)
        assert listening.hints() == [(wid, 1), (wid, 2)]
        # A session that says it sends its own hints is left to send them.
        await foreign.execute("SET amelia.event_hints = 'deferred'")
        await foreign.execute(insert, uuid.uuid4(), wid, 3)
        # This session's notifications arrive in order: the probe comes after any hint.
        await foreign.execute(f"NOTIFY {LIVE_CHANNEL}, 'probe'")
        await listening.until(lambda: (LIVE_CHANNEL, "probe") in listening.received)
        assert listening.hints() == [(wid, 1), (wid, 2)]
    finally:
        await foreign.close()


async def test_a_save_inside_an_open_transaction_is_announced_by_its_commit(
    db: Database, listening: Notifications
) -> None:
    wid = await add_workflow(db)
    repo = WorkflowRepository(db)
    async with db.transaction() as conn:
        kept = await repo.bind(conn).save_event(make_event(wid))
        await asyncio.sleep(0.2)
        assert listening.received == []  # not committed: nobody may read it yet
    await listening.until(lambda: covered(listening.hints(), wid, kept.sequence))
    listening.received.clear()
    with pytest.raises(RuntimeError):
        async with db.transaction() as conn:
            await repo.bind(conn).save_event(make_event(wid))
            raise RuntimeError("roll back")
    stored = await repo.save_event(make_event(wid))
    await listening.until(lambda: covered(listening.hints(), wid, stored.sequence))
    assert listening.hints() == [(wid, stored.sequence)]  # nothing from the rolled-back one


async def test_live_notices_keep_their_place_among_the_hints(
    db: Database, listening: Notifications
) -> None:
    first, second = await add_workflow(db), await add_workflow(db)
    repo = WorkflowRepository(db)
    # A stream: later saves land in batches, with live notices between them.
    for n in range(30):
        stored = await repo.save_event(make_event(first if n % 2 else second))
        db.event_hints.add_notice(LIVE_CHANNEL, f"after {stored.workflow_id}:{stored.sequence}")
    await listening.until(lambda: sum(c == LIVE_CHANNEL for c, _ in listening.received) == 30)
    hinted: list[tuple[uuid.UUID, int]] = []
    for channel, payload in listening.received:
        if channel == EVENTS_CHANNEL:
            hinted.extend(decode_hints(payload))
            continue
        wid_text, _, sequence = payload.removeprefix("after ").rpartition(":")
        # The event this notice followed was hinted before the notice arrived.
        assert covered(hinted, uuid.UUID(wid_text), int(sequence)), payload


def test_hint_payloads_fit_a_notification_and_decode_back() -> None:
    hints = {uuid.uuid4(): n for n in range(1, 1001)}
    payloads = encode_hints(hints)
    assert len(payloads) > 1
    assert all(len(p.encode()) <= MAX_HINT_PAYLOAD_BYTES for p in payloads)
    assert [h for p in payloads for h in decode_hints(p)] == list(hints.items())
    with pytest.raises(ValueError):
        decode_hints("not-a-uuid:3")


async def test_the_relay_sweeps_up_events_whose_hint_never_came(
    db: Database, database_url: str
) -> None:
    bus, delivered, arrived = EventBus(), [], asyncio.Event()

    def record(event: WorkflowEvent) -> None:
        delivered.append((event.workflow_id, event.sequence))
        arrived.set()

    async def until_delivered(count: int) -> None:
        async with asyncio.timeout(5):
            while len(delivered) < count:
                arrived.clear()
                await arrived.wait()

    bus.subscribe(record)
    listener = Listener(database_url, "amelia-test-listen")
    relay = EventRelay(EventFeedRepository(db), bus, listener, sweep_seconds=0.3)
    await listener.start()
    relay.start()
    # A writer that dies between its commits and its hints: its rows are stored, its hint
    # sender is gone (closed before the saves, so it sends nothing).
    silent = Database(database_url, min_size=1, max_size=1, application_name="amelia-dying")
    await silent.connect()
    try:
        wid = await add_workflow(db)  # pending: among the workflows a sweep checks
        repo = WorkflowRepository(db)
        await repo.save_event(make_event(wid))
        await until_delivered(1)
        await silent.event_hints.close()
        for _ in range(3):
            await WorkflowRepository(silent).save_event(make_event(wid))
        await until_delivered(4)
        await asyncio.sleep(0.7)  # two more sweeps: nothing is delivered twice
        assert delivered == [(wid, n) for n in range(1, 5)]
        assert relay.swept_count == 1
    finally:
        await silent.close()
        await relay.stop()
        await listener.stop()


async def test_reading_new_events_looks_them_up_by_index_even_in_a_generic_plan(
    db: Database,
) -> None:
    """The relay's read is a prepared statement: its generic plan must not scan the table."""
    workflows = [await add_workflow(db) for _ in range(3)]
    async with db.connection() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO workflow_log (id, workflow_id, sequence, timestamp, event_type, level, "
            "message) SELECT gen_random_uuid(), w, n, now(), 'stage_started', 'info', 'm' "
            "FROM unnest($1::uuid[]) AS w, generate_series(1, 20000) AS n",
            (workflows,),
        )
        await conn.exec_driver_sql("ANALYZE workflow_log")
        sql = _FAST_EVENTS_AFTER_SEQUENCES.compiled(db.engine.dialect).sql
        await conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        await conn.exec_driver_sql(f"PREPARE relay_read AS {sql}")
        ids = ",".join(map(str, workflows))
        result = await conn.exec_driver_sql(
            f"EXPLAIN EXECUTE relay_read('{{{ids}}}', '{{19990,19990,19990}}')"
        )
        plan = "\n".join(row[0] for row in result)
        await conn.exec_driver_sql("DEALLOCATE relay_read")
        await conn.exec_driver_sql("RESET plan_cache_mode")
    assert "uq_workflow_log__workflow_id_sequence" in plan, plan
    assert "Seq Scan on workflow_log" not in plan, plan
    events = await EventFeedRepository(db).events_after(dict.fromkeys(workflows, 19_990))
    assert [(e.workflow_id, e.sequence) for e in events] == sorted(
        (w, n) for w in workflows for n in range(19_991, 20_001)
    )


async def test_events_read_for_the_relay_equal_validated_events(db: Database) -> None:
    """The relay's unvalidated construction builds what validation would, field for field."""
    wid = await add_workflow(db)
    repo = WorkflowRepository(db)
    saved = [
        await repo.save_event(make_event(wid, data={"n": 1, "nested": {"ü": [1, 2]}})),
        await repo.save_event(make_event(wid, agent="", message="", data=None, is_error=True)),
    ]
    relayed = await EventFeedRepository(db).events_after({wid: 0})
    read = await repo.get_recent_events(wid, 10)  # validated rows (`row_to_event`)
    for fast, validated in zip(relayed, read, strict=True):
        assert fast == validated
        assert fast.model_dump() == validated.model_dump()
        assert fast.model_dump_json() == validated.model_dump_json()
        assert (
            fast.model_fields_set
            == WorkflowEvent.model_construct(
                **{name: getattr(validated, name) for name in fast.model_fields_set}
            ).model_fields_set
        )
        # Every field of the model is set (a new field must be added to stored_event).
        assert set(fast.__dict__) == set(WorkflowEvent.model_fields)
    assert [e.id for e in relayed] == [e.id for e in saved]
