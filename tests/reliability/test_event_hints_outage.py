"""Event hints through faults: a killed hint connection, a database that goes away.

The hints of committed events are sent after commit on their own connection
(database/event_hints.py): a fault there must delay them, never drop them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import text

from amelia.server.database import Database
from amelia.server.database.schema import EVENTS_CHANNEL
from tests.cluster.test_event_hints import Notifications
from tests.reliability.owned_pg import OwnedPostgres


async def listen(url: str) -> Notifications:
    conn = await asyncpg.connect(url, server_settings={"application_name": "test-listen"})
    notes = Notifications(conn)
    await conn.add_listener(EVENTS_CHANNEL, notes.record)
    return notes


async def until_hinted(notes: Notifications, hint: tuple[uuid.UUID, int], timeout: float) -> None:
    await notes.until(lambda: hint in notes.hints(), timeout=timeout)


@pytest.fixture
async def hinting_db(database_url: str) -> AsyncIterator[Database]:
    db = Database(database_url, min_size=1, max_size=2, application_name="amelia-hints-test")
    await db.connect()
    try:
        yield db
    finally:
        await db.close()


async def test_a_killed_hint_connection_is_replaced_at_once(
    hinting_db: Database, database_url: str
) -> None:
    db = hinting_db
    notes = await listen(database_url)
    try:
        first = (uuid.uuid4(), 1)
        db.event_hints.add(*first)
        await until_hinted(notes, first, 10)
        # Every backend of the writer dies (its pooled ones and the hint connection).
        killer = await asyncpg.connect(database_url)
        try:
            killed = await killer.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'amelia-hints-test'"
            )
        finally:
            await killer.close()
        assert killed >= 2
        second = (uuid.uuid4(), 7)
        db.event_hints.add(*second)
        # Sooner than the 1 s retry pause: the dead connection is replaced by the next send.
        await until_hinted(notes, second, 0.9)
        assert db.event_hints.pending == 0
    finally:
        await notes.conn.close()


async def test_hints_added_while_the_database_is_down_are_sent_when_it_is_back(
    owned_pg: OwnedPostgres, scenario_db: str
) -> None:
    url = owned_pg.url(scenario_db)
    db = Database(url, min_size=1, max_size=2, pool_timeout=1.0, application_name="amelia-h")
    await db.connect()
    try:
        db.event_hints.add(uuid.uuid4(), 1)
        assert await db.event_hints.flush(timeout=5)
        sent_before = db.event_hints.sent_hints
        await asyncio.to_thread(owned_pg.stop, "immediate")
        workflow = uuid.uuid4()
        db.event_hints.add(workflow, 3)
        db.event_hints.add(workflow, 4)  # the same workflow: one hint, the lowest sequence
        assert not await db.event_hints.flush(timeout=2.5)  # tried and failed meanwhile
        assert db.event_hints.pending == 1
        await asyncio.to_thread(owned_pg.start_again)
        assert await db.event_hints.flush(timeout=15)
        assert db.event_hints.pending == 0
        assert db.event_hints.sent_hints == sent_before + 1
        # And the connection it reopened carries hints to listeners again.
        notes = await listen(url)
        try:
            after = (uuid.uuid4(), 9)
            db.event_hints.add(*after)
            await until_hinted(notes, after, 10)
        finally:
            await notes.conn.close()
        async with db.connection() as check:
            assert await check.scalar(text("SELECT 1")) == 1
    finally:
        await db.close()
