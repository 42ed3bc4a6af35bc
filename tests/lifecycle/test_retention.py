"""LogRetentionService on a real PostgreSQL with real LangGraph checkpoints.

Workflow rows are inserted with Core (any status and `completed_at`); checkpoint threads are
written by running a tiny graph through the real pooled saver. The saver's tables are read
here only to assert which threads exist, and locked only to make a saver call wait.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from psycopg import AsyncConnection
from sqlalchemy import column, insert, select, table, union

from amelia.server.checkpoint import (
    CheckpointStore,
    PooledPostgresSaver,
    setup_checkpoint_tables,
    thread_config,
)
from amelia.server.database import Database, SettingsRepository, schema
from amelia.server.database.migrations import MIGRATION_LOCK_KEY
from amelia.server.lifecycle import RETENTION_LOCK_KEY, CleanupResult, LogRetentionService

S = ("pending", "in_progress", "blocked", "completed", "failed", "cancelled")
TERMINAL = {"completed", "failed", "cancelled"}
DAY = timedelta(days=1)
LOGGER = "amelia.server.lifecycle.retention"


class GraphState(TypedDict):
    steps: Annotated[list[str], operator.add]


def _graph(saver: PooledPostgresSaver) -> Any:
    graph = StateGraph(GraphState)
    graph.add_node("plan", lambda state: {"steps": ["plan"]})
    graph.add_node("build", lambda state: {"steps": ["build"]})
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "build")
    graph.add_edge("build", END)
    return graph.compile(checkpointer=saver)


async def write_thread(store: CheckpointStore, thread: uuid.UUID | str) -> None:
    """Real checkpoints (and blobs) for a thread, written by a graph run."""
    config: RunnableConfig = (
        thread_config(thread)
        if isinstance(thread, uuid.UUID)
        else {"configurable": {"thread_id": thread}}
    )
    await _graph(store.saver).ainvoke({"steps": []}, config)


async def add_workflow(
    db: Database, status: str, completed_at: datetime | None, version_id: uuid.UUID
) -> uuid.UUID:
    """A workflow with 2 events, 1 token usage row and 1 prompt-version link."""
    wid = uuid.uuid4()
    async with db.transaction() as conn:
        await conn.execute(
            insert(schema.workflows).values(
                id=wid,
                issue_id="ISSUE-1",
                worktree_path=f"/repo/{wid}",
                status=status,
                completed_at=completed_at,
            )
        )
        await conn.execute(
            insert(schema.workflow_log),
            [
                {
                    "id": uuid.uuid4(),
                    "workflow_id": wid,
                    "sequence": n,
                    "event_type": "stage_started",
                    "level": "info",
                    "message": f"event {n}",
                }
                for n in (1, 2)
            ],
        )
        await conn.execute(
            insert(schema.token_usage).values(
                id=uuid.uuid4(),
                workflow_id=wid,
                agent="developer",
                model="m",
                input_tokens=10,
                output_tokens=5,
                cost_usd=Decimal("0.01"),
            )
        )
        await conn.execute(
            insert(schema.workflow_prompt_versions).values(
                workflow_id=wid, prompt_id="architect.plan", version_id=version_id
            )
        )
    return wid


async def thread_ids(db: Database) -> set[str]:
    """Thread ids present in any of the saver's three tables."""
    parts = [
        select(table(name, column("thread_id")).c.thread_id)
        for name in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")
    ]
    async with db.connection() as conn:
        return set((await conn.scalars(union(*parts))).all())


async def workflow_ids(db: Database) -> set[uuid.UUID]:
    async with db.connection() as conn:
        return set((await conn.scalars(select(schema.workflows.c.id))).all())


async def ids_in(db: Database, tbl: Any) -> list[uuid.UUID]:
    async with db.connection() as conn:
        return list((await conn.scalars(select(tbl.c.workflow_id))).all())


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def assert_lock_free(conn: AsyncConnection[Any]) -> None:
    """No session (not even an idle pooled one) kept the retention lock after a run."""
    cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK_KEY,))
    assert await cur.fetchone() == (True,)
    await conn.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK_KEY,))


async def assert_no_orphans(db: Database) -> None:
    rows = await workflow_ids(db)
    orphans = {t for t in await thread_ids(db) if (u := _as_uuid(t)) and u not in rows}
    assert orphans == set()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[CheckpointStore]:
    await setup_checkpoint_tables(database_url)
    async with CheckpointStore(database_url, min_size=1, max_size=4) as opened:
        yield opened


@pytest.fixture
def settings(db: Database) -> SettingsRepository:
    return SettingsRepository(db)


@pytest.fixture
async def version_id(db: Database) -> uuid.UUID:
    vid = uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.prompt_versions).values(
                id=vid, prompt_id="architect.plan", version_number=1, content="plan it"
            )
        )
    return vid


@pytest.fixture
async def observer(database_url: str) -> AsyncIterator[AsyncConnection[Any]]:
    """A psycopg connection the test uses to hold locks."""
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield conn


async def expired(
    db: Database, store: CheckpointStore | None, version_id: uuid.UUID, count: int
) -> list[uuid.UUID]:
    """`count` completed workflows far past any cutoff, each with a checkpoint thread."""
    ids = [
        await add_workflow(db, "completed", datetime.now(UTC) - 400 * DAY, version_id)
        for _ in range(count)
    ]
    if store is not None:
        await asyncio.gather(*(write_thread(store, wid) for wid in ids))
    return ids


# -- the rules ----------------------------------------------------------------------------


@pytest.mark.parametrize("checkpoint_days", [-1, 0, 10])
async def test_deletes_exactly_what_the_rules_say(
    db: Database,
    store: CheckpointStore,
    settings: SettingsRepository,
    version_id: uuid.UUID,
    checkpoint_days: int,
) -> None:
    await settings.update_server_settings(
        {"log_retention_days": 30, "checkpoint_retention_days": checkpoint_days}
    )
    now = datetime.now(UTC)
    ages: dict[str, timedelta | None] = {"null": None, "40d": 40 * DAY, "20d": 20 * DAY}
    ages["2d"] = 2 * DAY
    made: dict[tuple[str, str], uuid.UUID] = {}
    for status, (label, age) in itertools.product(S, ages.items()):
        at = None if age is None else now - age
        made[status, label] = await add_workflow(db, status, at, version_id)
    await asyncio.gather(*(write_thread(store, wid) for wid in made.values()))

    service = LogRetentionService(db, store, settings, batch_size=2)
    result = await service.cleanup()

    gone = {wid for (status, label), wid in made.items() if status in TERMINAL and label == "40d"}

    def loses_threads(status: str, label: str) -> bool:
        if status not in TERMINAL or checkpoint_days < 0:
            return False
        return checkpoint_days == 0 or label in ("40d", "20d")

    stripped = {wid for key, wid in made.items() if wid not in gone and loses_threads(*key)}
    remaining = set(made.values()) - gone
    assert await workflow_ids(db) == remaining
    assert {uuid.UUID(t) for t in await thread_ids(db)} == remaining - stripped
    assert result == CleanupResult(
        events_deleted=2 * len(gone),
        workflows_deleted=len(gone),
        checkpoints_deleted=len(gone) + len(stripped),
    )
    # The cascade took the events, usage and prompt links of deleted rows, and only theirs.
    for tbl in (schema.workflow_log, schema.token_usage, schema.workflow_prompt_versions):
        kept = await ids_in(db, tbl)
        assert set(kept) == remaining
        per_workflow = 2 if tbl is schema.workflow_log else 1
        assert len(kept) == per_workflow * len(remaining)
    await assert_no_orphans(db)
    # A second run finds nothing left to do.
    assert await service.cleanup() == CleanupResult()


async def test_orphan_threads_are_swept(
    db: Database, store: CheckpointStore, settings: SettingsRepository, version_id: uuid.UUID
) -> None:
    await settings.update_server_settings({"checkpoint_retention_days": -1})
    kept = await add_workflow(db, "completed", datetime.now(UTC), version_id)
    upper_orphan = str(uuid.uuid4()).upper()
    orphans = [uuid.uuid4(), uuid.uuid4()]
    # Not ours to judge: a thread id that is no UUID, and another spelling of a live id.
    foreign = ["not-a-uuid", str(kept).upper()]
    threads: list[uuid.UUID | str] = [kept, *orphans, upper_orphan, *foreign]
    for thread in threads:
        await write_thread(store, thread)

    result = await LogRetentionService(db, store, settings, batch_size=2).cleanup()

    assert result == CleanupResult(orphan_checkpoints_deleted=3)
    assert await thread_ids(db) == {str(kept), *foreign}
    assert await workflow_ids(db) == {kept}


async def test_settings_changed_between_runs_take_effect(
    db: Database, store: CheckpointStore, settings: SettingsRepository, version_id: uuid.UUID
) -> None:
    await settings.update_server_settings(
        {"log_retention_days": 30, "checkpoint_retention_days": -1}
    )
    now = datetime.now(UTC)
    older = await add_workflow(db, "failed", now - 20 * DAY, version_id)
    newer = await add_workflow(db, "cancelled", now - 5 * DAY, version_id)
    for wid in (older, newer):
        await write_thread(store, wid)
    service = LogRetentionService(db, store, settings)

    assert await service.cleanup() == CleanupResult()
    await settings.update_server_settings({"log_retention_days": 10})
    assert await service.cleanup() == CleanupResult(
        events_deleted=2, workflows_deleted=1, checkpoints_deleted=1
    )
    assert await workflow_ids(db) == {newer}
    assert await thread_ids(db) == {str(newer)}
    await settings.update_server_settings({"checkpoint_retention_days": 0})
    assert await service.cleanup() == CleanupResult(checkpoints_deleted=1)
    assert await workflow_ids(db) == {newer}
    assert await thread_ids(db) == set()


async def test_rows_in_use_are_skipped_not_waited_for(
    db: Database,
    store: CheckpointStore,
    settings: SettingsRepository,
    version_id: uuid.UUID,
    observer: AsyncConnection[Any],
) -> None:
    await settings.update_server_settings({"checkpoint_retention_days": 0})
    busy_expired, free_expired = await expired(db, store, version_id, 2)
    busy_kept = await add_workflow(db, "failed", datetime.now(UTC), version_id)
    free_kept = await add_workflow(db, "failed", datetime.now(UTC), version_id)
    for wid in (busy_kept, free_kept):
        await write_thread(store, wid)
    service = LogRetentionService(db, store, settings)
    async with observer.transaction():  # e.g. a resume changing these rows right now
        await observer.execute(
            "SELECT id FROM workflows WHERE id = ANY(%s) FOR UPDATE", ([busy_expired, busy_kept],)
        )
        result = await asyncio.wait_for(service.cleanup(), timeout=10)
    assert result == CleanupResult(events_deleted=2, workflows_deleted=1, checkpoints_deleted=2)
    assert await workflow_ids(db) == {busy_expired, busy_kept, free_kept}
    assert free_expired not in await workflow_ids(db)
    assert await thread_ids(db) == {str(busy_expired), str(busy_kept)}
    assert await service.cleanup() == CleanupResult(
        events_deleted=2, workflows_deleted=1, checkpoints_deleted=2
    )


# -- one runner at a time -----------------------------------------------------------------


async def test_a_held_lock_makes_the_run_skip(
    db: Database,
    store: CheckpointStore,
    database_url: str,
    version_id: uuid.UUID,
    observer: AsyncConnection[Any],
) -> None:
    assert RETENTION_LOCK_KEY != MIGRATION_LOCK_KEY
    ids = await expired(db, store, version_id, 2)
    # A pool that keeps every connection: a lock leaked on one would stay visible.
    async with Database(database_url, min_size=4, max_size=4) as roomy:
        service = LogRetentionService(roomy, store, SettingsRepository(roomy))
        await observer.execute("SELECT pg_advisory_lock(%s)", (RETENTION_LOCK_KEY,))

        assert await service.cleanup() == CleanupResult(skipped=True)
        assert await workflow_ids(db) == set(ids)

        await observer.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK_KEY,))
        assert (await service.cleanup()).workflows_deleted == 2
        await assert_lock_free(observer)


async def _second_service(database_url: str) -> tuple[Database, CheckpointStore]:
    other_db = Database(database_url, min_size=1, max_size=3)
    await other_db.connect()
    return other_db, await CheckpointStore(database_url, min_size=1, max_size=2).__aenter__()


async def test_concurrent_runs_one_works_one_skips(
    db: Database,
    store: CheckpointStore,
    settings: SettingsRepository,
    version_id: uuid.UUID,
    database_url: str,
    observer: AsyncConnection[Any],
) -> None:
    ids = await expired(db, store, version_id, 3)
    other_db, other_store = await _second_service(database_url)
    services = [
        LogRetentionService(db, store, settings),
        LogRetentionService(other_db, other_store, SettingsRepository(other_db)),
    ]
    try:
        # Whoever wins the lock blocks on a checkpoint row we hold, so the other run
        # certainly meets the lock taken.
        async with observer.transaction():
            await observer.execute(
                "SELECT thread_id FROM checkpoints WHERE thread_id = %s FOR UPDATE", (str(ids[0]),)
            )
            tasks = [asyncio.create_task(s.cleanup()) for s in services]
            done, pending = await asyncio.wait(tasks, timeout=20, return_when="FIRST_COMPLETED")
            assert len(done) == 1
            assert done.pop().result() == CleanupResult(skipped=True)
            assert len(pending) == 1
        worker = await pending.pop()
        assert worker == CleanupResult(events_deleted=6, workflows_deleted=3, checkpoints_deleted=3)
        assert await workflow_ids(db) == set()
        await assert_no_orphans(db)

        # And unaided races: never more than one run does the work, nothing is done twice.
        for _ in range(5):
            more = await expired(db, store, version_id, 4)
            results = await asyncio.gather(*(s.cleanup() for s in services))
            assert sum(r.workflows_deleted for r in results) == len(more)
            assert sum(r.checkpoints_deleted for r in results) == len(more)
            assert sum(1 for r in results if r.workflows_deleted) == 1
            assert await workflow_ids(db) == set()
            assert await thread_ids(db) == set()
    finally:
        await other_store.close()
        await other_db.close()


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["pool closed", "store closed"])
async def test_broken_checkpointer_keeps_rows_and_does_not_raise(
    db: Database,
    store: CheckpointStore,
    settings: SettingsRepository,
    version_id: uuid.UUID,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    ids = await expired(db, store, version_id, 3)
    if how == "pool closed":
        await store.pool.close()  # the saver keeps pointing at a dead pool
    else:
        await store.close()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = await LogRetentionService(db, store, settings).cleanup()

    assert result == CleanupResult()
    assert "rows kept for the next run" in caplog.text
    assert await workflow_ids(db) == set(ids)
    assert await thread_ids(db) == {str(i) for i in ids}

    async with CheckpointStore(database_url, min_size=1, max_size=2) as fresh:
        assert (await LogRetentionService(db, fresh, settings).cleanup()).workflows_deleted == 3
    assert await thread_ids(db) == set()


async def test_a_thread_that_cannot_be_deleted_keeps_only_its_row(
    db: Database,
    store: CheckpointStore,
    settings: SettingsRepository,
    version_id: uuid.UUID,
    database_url: str,
    observer: AsyncConnection[Any],
) -> None:
    ids = await expired(db, store, version_id, 4)
    stuck = ids[1]
    async with CheckpointStore(database_url, max_size=2, statement_timeout_ms=300) as impatient:
        service = LogRetentionService(db, impatient, settings, batch_size=2)
        async with observer.transaction():
            await observer.execute(
                "SELECT thread_id FROM checkpoints WHERE thread_id = %s FOR UPDATE", (str(stuck),)
            )
            result = await service.cleanup()
        assert result == CleanupResult(events_deleted=6, workflows_deleted=3, checkpoints_deleted=3)
        assert await workflow_ids(db) == {stuck}
        assert await thread_ids(db) == {str(stuck)}
        assert (await service.cleanup()).workflows_deleted == 1
    assert await workflow_ids(db) == set()
    await assert_no_orphans(db)


async def test_database_errors_end_the_run_without_raising(
    database_url: str,
    store: CheckpointStore,
    version_id: uuid.UUID,
    db: Database,
    observer: AsyncConnection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = await expired(db, store, version_id, 2)
    async with Database(database_url, min_size=1, max_size=3, statement_timeout_ms=300) as quick:
        service = LogRetentionService(quick, store, SettingsRepository(quick))
        async with observer.transaction():
            await observer.execute("LOCK TABLE workflows IN ACCESS EXCLUSIVE MODE")
            with caplog.at_level(logging.ERROR, logger=LOGGER):
                assert await service.cleanup() == CleanupResult()
        assert "database error" in caplog.text
        assert await workflow_ids(db) == set(ids)
        await assert_lock_free(observer)
        # The lock was released with the failed run: the next one works.
        assert (await service.cleanup()).workflows_deleted == 2


async def test_without_a_checkpointer_rows_owning_threads_are_kept(
    db: Database, store: CheckpointStore, settings: SettingsRepository, version_id: uuid.UUID
) -> None:
    with_thread = (await expired(db, store, version_id, 1))[0]
    without = (await expired(db, None, version_id, 1))[0]
    result = await LogRetentionService(db, None, settings).cleanup()
    assert result == CleanupResult(events_deleted=2, workflows_deleted=1)
    assert await workflow_ids(db) == {with_thread}
    await assert_no_orphans(db)
    assert without not in await workflow_ids(db)


async def test_without_checkpoint_tables_expired_rows_still_go(
    db: Database, settings: SettingsRepository, version_id: uuid.UUID
) -> None:
    await expired(db, None, version_id, 2)
    result = await LogRetentionService(db, None, settings).cleanup()
    assert result == CleanupResult(events_deleted=4, workflows_deleted=2)


# -- the periodic task ---------------------------------------------------------------------


async def _until(check: Any, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def _tasks_named(name: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == name and not t.done()]


async def test_periodic_loop_survives_errors_and_stops(
    database_url: str,
    db: Database,
    store: CheckpointStore,
    version_id: uuid.UUID,
    observer: AsyncConnection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = await expired(db, store, version_id, 1)
    async with Database(database_url, min_size=1, max_size=3, statement_timeout_ms=300) as quick:
        service = LogRetentionService(quick, store, SettingsRepository(quick), interval_seconds=0.2)
        with caplog.at_level(logging.INFO, logger=LOGGER):
            async with observer.transaction():
                await observer.execute("LOCK TABLE workflows IN ACCESS EXCLUSIVE MODE")
                service.start()
                service.start()  # idempotent
                assert len(_tasks_named("amelia-retention")) == 1

                async def failed_twice() -> bool:
                    return caplog.text.count("database error") >= 2

                await _until(failed_twice)
            assert await workflow_ids(db) == set(ids)  # runs failed, loop still alive

            async def all_gone() -> bool:
                return not await workflow_ids(db)

            await _until(all_gone)
            final = await service.stop()
        assert final == CleanupResult()
        assert not _tasks_named("amelia-retention")


async def test_first_run_waits_one_interval_and_stop_cancels(
    db: Database, store: CheckpointStore, settings: SettingsRepository, version_id: uuid.UUID
) -> None:
    ids = await expired(db, store, version_id, 1)
    service = LogRetentionService(db, store, settings, interval_seconds=3600)
    service.start()
    await asyncio.sleep(0.3)
    assert await workflow_ids(db) == set(ids)
    assert await service.stop(run_final=False) is None
    assert not _tasks_named("amelia-retention")
    assert await workflow_ids(db) == set(ids)
    # The shutdown path: stop and run once more.
    service.start()
    final = await service.stop()
    assert final is not None and final.workflows_deleted == 1
