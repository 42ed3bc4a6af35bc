"""The checkpointer on a real PostgreSQL: pooled saver, start-up check, thread ids, cleanup.

Concurrency is proven in the database, not by timing: the test holds row locks on the
saver's rows, and `pg_stat_activity` shows how many saver calls wait on them at once.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import Checkpoint, empty_checkpoint
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.graph import END, START, StateGraph
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from amelia.server.checkpoint import (
    CHECKPOINT_SETUP_TABLES,
    CheckpointSchemaError,
    CheckpointStore,
    PooledPostgresSaver,
    checkpoint_serializer,
    setup_checkpoint_tables,
    thread_config,
)
from amelia.server.config import load_config
from amelia.server.database.connection import DatabaseConnectionError
from tests.pg import with_database

APP = "amelia-ckpt-test"


class Note(BaseModel):
    """A custom type in graph state: revived only when allow-listed."""

    text: str


class PlanState(TypedDict):
    steps: Annotated[list[str], operator.add]
    note: Note | None


def _graph(saver: AsyncPostgresSaver) -> Any:
    def plan(state: PlanState) -> dict[str, Any]:
        return {"steps": ["plan"], "note": Note(text="draft")}

    def approve(state: PlanState) -> dict[str, Any]:
        return {"steps": ["approve"]}

    def build(state: PlanState) -> dict[str, Any]:
        return {"steps": ["build"]}

    graph = StateGraph(PlanState)
    graph.add_node("plan", plan)
    graph.add_node("approve", approve)
    graph.add_node("build", build)
    graph.add_edge(START, "plan")
    graph.add_edge("plan", "approve")
    graph.add_edge("approve", "build")
    graph.add_edge("build", END)
    return graph.compile(checkpointer=saver, interrupt_before=["approve"])


@pytest.fixture
async def store(checkpoint_url: str) -> AsyncIterator[CheckpointStore]:
    async with CheckpointStore(
        checkpoint_url, min_size=1, max_size=8, application_name=APP
    ) as opened:
        yield opened


@pytest.fixture
async def observer(checkpoint_url: str) -> AsyncIterator[AsyncConnection[DictRow]]:
    """An autocommit connection for assertions (pg_stat_activity snapshots per transaction)."""
    conn = await AsyncConnection.connect(checkpoint_url, autocommit=True, row_factory=dict_row)
    async with conn:
        yield conn


async def _scalar(conn: AsyncConnection[DictRow], sql: str, *params: Any) -> Any:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return next(iter(row.values()))


async def _rows_per_table(conn: AsyncConnection[DictRow], thread_id: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table in CHECKPOINT_SETUP_TABLES:  # constant names, not values
        sql = f"SELECT count(*) FROM {table} WHERE thread_id = %s"
        counts[table] = int(await _scalar(conn, sql, thread_id))
    return counts


async def _waiting_on_locks(conn: AsyncConnection[DictRow], app: str) -> int:
    return int(
        await _scalar(
            conn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND wait_event_type = 'Lock'",
            app,
        )
    )


async def _wait_until_waiting(conn: AsyncConnection[DictRow], app: str, expected: int) -> int:
    """Poll for up to 10 s until `expected` backends of `app` wait on a lock; return the count."""
    deadline = asyncio.get_running_loop().time() + 10.0
    seen = await _waiting_on_locks(conn, app)
    while seen < expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        seen = await _waiting_on_locks(conn, app)
    return seen


def _checkpoint(values: dict[str, Any]) -> Checkpoint:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = values
    checkpoint["channel_versions"] = dict.fromkeys(values, "1")
    return checkpoint


async def _put(
    saver: AsyncPostgresSaver, thread_id: str, values: dict[str, Any], *, writes: bool = False
) -> tuple[RunnableConfig, Checkpoint]:
    config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    checkpoint = _checkpoint(values)
    versions = dict(checkpoint["channel_versions"])
    stored = await saver.aput(config, checkpoint, {"source": "loop", "step": 1}, versions)
    if writes:
        await saver.aput_writes(stored, [("steps", ["next"])], task_id="task-1")
    return stored, checkpoint


async def test_graph_interrupts_resumes_and_reads_state_back(store: CheckpointStore) -> None:
    app = _graph(store.saver)
    config = thread_config(uuid.uuid4())

    first = await app.ainvoke({"steps": [], "note": None}, config)
    assert first["steps"] == ["plan"]
    paused = await app.aget_state(config)
    assert paused.next == ("approve",)
    assert paused.values["steps"] == ["plan"]

    final = await app.ainvoke(None, config)
    assert final["steps"] == ["plan", "approve", "build"]
    done = await app.aget_state(config)
    assert done.next == ()
    assert done.values["steps"] == ["plan", "approve", "build"]
    assert len([c async for c in store.saver.alist(config)]) >= 4


async def test_serializer_revives_only_allow_listed_types(checkpoint_url: str) -> None:
    config = thread_config(uuid.uuid4())
    allowed = CheckpointStore(checkpoint_url, serde=checkpoint_serializer([Note]))
    async with allowed:
        await _graph(allowed.saver).ainvoke({"steps": [], "note": None}, config)
        state = await _graph(allowed.saver).aget_state(config)
        assert state.values["note"] == Note(text="draft")
    async with CheckpointStore(checkpoint_url) as strict:
        state = await _graph(strict.saver).aget_state(config)
        # Not on the allow-list: LangGraph refuses to import it and hands back plain data.
        assert state.values["note"] == {"text": "draft"}


async def test_verify_tables_requires_the_saver_tables(database_url: str) -> None:
    async with CheckpointStore(database_url) as store:
        with pytest.raises(CheckpointSchemaError) as missing:
            await store.verify_tables()
        assert "amelia db upgrade" in str(missing.value)
        assert "checkpoints" in str(missing.value)

        await setup_checkpoint_tables(database_url)
        latest = len(AsyncPostgresSaver.MIGRATIONS) - 1
        assert await store.verify_tables() == latest

        async with store.pool.connection() as conn:
            await conn.execute("DELETE FROM checkpoint_migrations WHERE v = %s", (latest,))
        with pytest.raises(CheckpointSchemaError) as behind:
            await store.verify_tables()
        assert f"version {latest - 1}" in str(behind.value)
        assert "amelia db upgrade" in str(behind.value)


async def test_thread_ids_are_strings_even_for_uuids(
    store: CheckpointStore, observer: AsyncConnection[DictRow]
) -> None:
    workflow_id = uuid.uuid4()
    config = thread_config(workflow_id)
    assert config["configurable"]["thread_id"] == str(workflow_id)
    assert thread_config(str(workflow_id).upper()) == config
    assert thread_config("review-7")["configurable"]["thread_id"] == "review-7"

    await _graph(store.saver).ainvoke({"steps": [], "note": None}, config)
    stored = await _scalar(observer, "SELECT array_agg(DISTINCT thread_id) FROM checkpoints")
    assert stored == [str(workflow_id)]
    found = await store.saver.aget_tuple(thread_config(str(workflow_id)))
    assert found is not None
    assert found.config["configurable"]["thread_id"] == str(workflow_id)


async def test_delete_threads_removes_exactly_the_given_threads(
    store: CheckpointStore, observer: AsyncConnection[DictRow]
) -> None:
    ids = [uuid.uuid4() for _ in range(4)]
    for workflow_id in ids:
        await _put(store.saver, str(workflow_id), {"plan": ["a", "b"], "n": 1}, writes=True)
    before = {w: await _rows_per_table(observer, str(w)) for w in ids}
    assert all(count > 0 for counts in before.values() for count in counts.values())

    never_run = uuid.uuid4()
    deleted = await store.delete_threads([ids[0], str(ids[1]), ids[0], never_run])

    assert deleted == 3
    for gone in ids[:2]:
        assert await _rows_per_table(observer, str(gone)) == dict.fromkeys(
            CHECKPOINT_SETUP_TABLES, 0
        )
    for kept in ids[2:]:
        assert await _rows_per_table(observer, str(kept)) == before[kept]


async def test_delete_threads_logs_a_failing_thread_and_goes_on(
    checkpoint_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with CheckpointStore(checkpoint_url, statement_timeout_ms=300) as store:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        for thread_id in ids:
            await _put(store.saver, thread_id, {"n": 1})
        locker = await AsyncConnection.connect(checkpoint_url)
        async with locker, locker.transaction():
            # The DELETE of this thread's row now waits past the statement timeout.
            await locker.execute(
                "SELECT 1 FROM checkpoints WHERE thread_id = %s FOR UPDATE", (ids[0],)
            )
            with caplog.at_level(logging.WARNING, logger="amelia.server.checkpoint"):
                deleted = await store.delete_threads(ids)
        assert deleted == 2
        assert ids[0] in caplog.text
        assert await store.saver.aget_tuple(thread_config(ids[0])) is not None
        assert await store.saver.aget_tuple(thread_config(ids[1])) is None


async def test_pooled_saver_runs_calls_at_the_same_time(
    checkpoint_url: str, store: CheckpointStore, observer: AsyncConnection[DictRow]
) -> None:
    blockers = 5  # the store has 8 connections: 5 blocked writes, a read, the rest idle
    saver = store.saver
    assert not saver.serialises_calls
    threads = [str(uuid.uuid4()) for _ in range(blockers)]
    puts = [await _put(saver, t, {"n": 1}) for t in threads]
    other = str(uuid.uuid4())
    await _put(saver, other, {"n": 2})

    locker = await AsyncConnection.connect(checkpoint_url)
    async with locker:
        async with locker.transaction():
            await locker.execute(
                "SELECT 1 FROM checkpoints WHERE thread_id = ANY(%s) FOR UPDATE", (threads,)
            )
            # Re-putting the same checkpoints must wait for the test's row locks.
            blocked = [
                asyncio.create_task(saver.aput(cfg, cp, {"source": "loop", "step": 1}, {}))
                for cfg, cp in puts
            ]
            assert await _wait_until_waiting(observer, APP, blockers) == blockers
            # With the stock lock this read would queue behind the blocked writes.
            read = await asyncio.wait_for(saver.aget_tuple(thread_config(other)), 5)
            assert read is not None
            assert not any(task.done() for task in blocked)
        await asyncio.wait_for(asyncio.gather(*blocked), 10)


@pytest.mark.parametrize("saver_class", [AsyncPostgresSaver, PooledPostgresSaver])
async def test_one_connection_still_serialises(
    checkpoint_url: str,
    observer: AsyncConnection[DictRow],
    saver_class: type[AsyncPostgresSaver],
) -> None:
    app = f"stock-{uuid.uuid4().hex[:8]}"
    # What `AsyncPostgresSaver.from_conn_string` does, plus a name to find the backend by.
    conn = await AsyncConnection.connect(
        checkpoint_url, autocommit=True, prepare_threshold=0, row_factory=dict_row,
        application_name=app,
    )  # fmt: skip
    async with conn:
        saver = saver_class(conn)
        threads = [str(uuid.uuid4()) for _ in range(3)]
        puts = [await _put(saver, t, {"n": 1}) for t in threads]
        locker = await AsyncConnection.connect(checkpoint_url)
        async with locker:
            async with locker.transaction():
                await locker.execute(
                    "SELECT 1 FROM checkpoints WHERE thread_id = ANY(%s) FOR UPDATE", (threads,)
                )
                blocked = [
                    asyncio.create_task(saver.aput(cfg, cp, {"source": "loop", "step": 1}, {}))
                    for cfg, cp in puts
                ]
                read = asyncio.create_task(saver.aget_tuple(thread_config(threads[0])))
                assert await _wait_until_waiting(observer, app, 1) == 1
                await asyncio.sleep(0.5)
                assert await _waiting_on_locks(observer, app) == 1
                assert not read.done()
            await asyncio.wait_for(asyncio.gather(*blocked, read), 10)


async def test_alist_keeps_its_connection_while_iterating(store: CheckpointStore) -> None:
    saver = store.saver
    thread_id = str(uuid.uuid4())
    for step in range(3):
        await _put(saver, thread_id, {"n": step})
    config = thread_config(thread_id)
    seen = 0
    async for _item in saver.alist(config):
        stats = store.pool.get_stats()
        assert stats["pool_size"] - stats["pool_available"] >= 1
        # A nested call during iteration takes a second connection (the stock lock deadlocks).
        assert await asyncio.wait_for(saver.aget_tuple(config), 5) is not None
        seen += 1
    assert seen == 3
    stats = store.pool.get_stats()
    assert stats["pool_size"] == stats["pool_available"]


async def test_concurrent_prunes_in_one_process_do_not_conflict(checkpoint_url: str) -> None:
    # A warm pool (min_size 6), so the six prunes really get a connection each at once.
    async with CheckpointStore(checkpoint_url, min_size=6, max_size=6) as store:
        thread_id = str(uuid.uuid4())
        for step in range(30):
            await _put(store.saver, thread_id, {"plan": [step] * 10, "n": step}, writes=True)
        # Without the saver's prune lock these REPEATABLE READ prunes fail with
        # SerializationFailure (the stock lock used to keep them apart).
        await asyncio.gather(*(store.saver.aprune([thread_id]) for _ in range(6)))
        remaining = [c async for c in store.saver.alist(thread_config(thread_id))]
    assert len(remaining) == 1
    assert remaining[0].checkpoint["channel_values"]["n"] == 29


async def _kill_backends(observer: AsyncConnection[DictRow], app: str) -> int:
    return int(
        await _scalar(
            observer,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            app,
        )
    )


@pytest.mark.parametrize("check_connections", [False, True])
async def test_saver_survives_the_server_killing_its_connections(
    checkpoint_url: str, observer: AsyncConnection[DictRow], check_connections: bool
) -> None:
    app = f"kill-{uuid.uuid4().hex[:8]}"
    store = CheckpointStore(
        checkpoint_url,
        min_size=2,
        max_size=2,
        application_name=app,
        check_connections=check_connections,
    )
    async with store:
        thread_id = str(uuid.uuid4())
        await _put(store.saver, thread_id, {"n": 1})
        assert await _kill_backends(observer, app) == 2
        # Both pooled connections are dead: the read and the write still succeed.
        first = await store.saver.aget_tuple(thread_config(thread_id))
        assert first is not None
        assert first.checkpoint["channel_values"]["n"] == 1
        assert await _kill_backends(observer, app) >= 1
        await _put(store.saver, thread_id, {"n": 2}, writes=True)
        assert await store.delete_threads([str(uuid.uuid4())]) == 1
        latest = await store.saver.aget_tuple(thread_config(thread_id))
        assert latest is not None
        assert latest.checkpoint["channel_values"]["n"] == 2


async def test_connections_carry_the_configured_options(checkpoint_url: str) -> None:
    config = load_config(
        database_url=None,
        db_application_name="amelia-t",
        db_statement_timeout_ms=1234,
        checkpoint_prepare_threshold="none",
        checkpoint_pool_min_size=1,
        checkpoint_pool_max_size=3,
    )
    async with CheckpointStore.from_config(config, checkpoint_url) as store:
        async with store.pool.connection() as conn:
            assert conn.autocommit
            assert conn.prepare_threshold is None
            assert await _scalar(conn, "SHOW statement_timeout") == "1234ms"
            assert await _scalar(conn, "SHOW application_name") == "amelia-t-checkpoints"
        assert store.pool.max_size == 3


async def test_large_values_are_compressed_with_lz4_when_the_server_has_it(
    checkpoint_url: str, observer: AsyncConnection[DictRow]
) -> None:
    methods = await _scalar(
        observer, "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"
    )
    server_default = await _scalar(observer, "SHOW default_toast_compression")
    expected = "lz4" if "lz4" in methods else server_default
    # Compressible and big enough to be compressed (over ~2 KB).
    values = {"plan": ["write the tests first"] * 400, "n": 1}
    for method, wanted in (("lz4", expected), (None, server_default)):
        async with CheckpointStore(checkpoint_url, toast_compression=method) as store:
            async with store.pool.connection() as conn:
                assert await _scalar(conn, "SHOW default_toast_compression") == wanted
            thread_id = str(uuid.uuid4())
            await _put(store.saver, thread_id, values)
        stored = await _scalar(
            observer,
            "SELECT pg_column_compression(blob) FROM checkpoint_blobs "
            "WHERE thread_id = %s AND channel = 'plan'",
            thread_id,
        )
        assert stored == wanted
        # Whatever wrote it, the stock saver reads it back.
        async with AsyncPostgresSaver.from_conn_string(checkpoint_url) as stock:
            found = await stock.aget_tuple(thread_config(thread_id))
        assert found is not None
        assert found.checkpoint["channel_values"] == values


async def test_open_failure_names_the_target_without_the_password(pg_admin_url: str) -> None:
    bad = make_url(with_database(pg_admin_url, "amelia_missing_db")).set(password="s3cret-pw")
    store = CheckpointStore(bad, open_timeout=1)
    with pytest.raises(DatabaseConnectionError) as failure:
        await store.open()
    message = str(failure.value)
    assert "amelia_missing_db" in message
    assert "AMELIA_DATABASE_URL" in message
    assert "port" in message
    assert "s3cret-pw" not in message
    with pytest.raises(RuntimeError):
        _ = store.saver
