"""Our saver against the stock `AsyncPostgresSaver` on the same data.

`PooledPostgresSaver` rewrites `aput`, `aput_writes` and the read query; these tests run one
scripted history (several channels and versions, inline primitives and blobs, a channel
without a value, a delta snapshot, a subgraph namespace, pending writes with duplicate keys, a write
big enough to be decoded off the loop, a pre-v4 checkpoint whose sends live with its parent)
through both savers and require the same rows in the tables and the same `CheckpointTuple`s
from every read, whichever saver wrote the thread.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import Checkpoint, CheckpointTuple, empty_checkpoint
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.types import ERROR, INTERRUPT, TASKS, _DeltaSnapshot
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row

from amelia.server.checkpoint import CheckpointStore, PooledPostgresSaver, checkpoint_serializer


def _version(n: int) -> str:
    return f"{n:032}.{0.25:016}"


@dataclass
class _Put:
    ns: str
    values: dict[str, Any]
    versions: dict[str, int]  # every channel's current version number
    changed: list[str]  # channels in new_versions (may name channels without a value)
    parent: str | None = None
    format_version: int = 4
    id: str = field(default_factory=lambda: str(uuid6()))
    writes: list[tuple[str, list[tuple[str, Any]]]] = field(default_factory=list)


def _script() -> list[_Put]:
    """One history, written the same way to every thread (same checkpoint ids)."""
    values = {
        "plan": "## Plan\n- step one",
        "count": 0,
        "approved": True,
        "ratio": 0.5,
        "nothing": None,
        "items": ["a"],
        "state": {"k": [1, 2], "nested": {"x": "y"}},
        "raw": b"\x00\x01\x02",
    }
    # "cleared" has a new version but no value (a channel emptied): no blob row for it.
    channels = [*values, "cleared"]
    first = _Put(ns="", values=values, versions=dict.fromkeys(channels, 1), changed=channels)
    second = _Put(
        ns="",
        values={**first.values, "count": 1, "items": ["a", "b"], "state": {"k": [3]}},
        versions={**first.versions, "count": 2, "items": 2, "state": 2},
        changed=["count", "items", "state"],
        parent=first.id,
        writes=[
            ("t1", [("items", ["c"]), ("count", 2)]),
            ("t2", [(INTERRUPT, {"value": "ask"}), (INTERRUPT, {"value": "again"})]),
            ("t3", [("items", ["d"]), (ERROR, "boom"), (ERROR, "boom 2")]),
            ("t5", [(INTERRUPT, {"value": "first"})]),
            ("t5", [(INTERRUPT, {"value": "second"})]),  # upserted over the first t5
            ("t1", [("items", ["ignored"])]),  # same keys as the first t1: kept as it was
        ],
    )
    child = _Put(
        ns="child:4f1c",
        values={"inner": [1, 2, 3], "label": "sub"},
        versions={"inner": 1, "label": 1},
        changed=["inner", "label"],
    )
    third = _Put(
        ns="",
        values={**second.values, "items": ["a", "b", "e"], "history": _DeltaSnapshot(["h1"])},
        versions={**second.versions, "items": 3, "history": 1},
        changed=["items", "history"],
        parent=second.id,
        writes=[("t4", [(TASKS, {"node": "review", "arg": 1}), ("big", b"z" * 300_000)])],
    )
    # A checkpoint in the old format: its pending sends are read from its parent's writes.
    old = _Put(
        ns="",
        values={**third.values, "count": 9},
        versions={**third.versions, "count": 3},
        changed=["count"],
        parent=third.id,
        format_version=1,
    )
    return [first, second, child, third, old]


def _checkpoint(put: _Put) -> Checkpoint:
    checkpoint = empty_checkpoint()
    checkpoint["id"] = put.id
    checkpoint["ts"] = "2025-06-01T12:00:00+00:00"
    checkpoint["v"] = put.format_version
    checkpoint["channel_values"] = dict(put.values)
    checkpoint["channel_versions"] = {ch: _version(n) for ch, n in put.versions.items()}
    return checkpoint


async def _write(saver: AsyncPostgresSaver, thread_id: str, script: list[_Put]) -> None:
    for step, put in enumerate(script):
        config: RunnableConfig = {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": put.ns,
                **({"checkpoint_id": put.parent} if put.parent else {}),
                "user": "ana",  # copied into the metadata by the saver
            },
            "metadata": {"run": 7},
        }
        checkpoint = _checkpoint(put)
        new_versions = {ch: checkpoint["channel_versions"][ch] for ch in put.changed}
        metadata: Any = {"source": "loop", "step": step, "writes": {"x": 1}}
        stored = await saver.aput(config, checkpoint, metadata, new_versions)
        assert stored == {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": put.ns,
                "checkpoint_id": put.id,
            }
        }
        for task_id, writes in put.writes:
            await saver.aput_writes(stored, writes, task_id, task_path=f"~{task_id}")


async def _rows(conn: AsyncConnection[DictRow], thread_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the thread in the saver's tables, with the thread id blanked."""
    queries = {
        "checkpoints": "SELECT * FROM checkpoints WHERE thread_id = %s "
        "ORDER BY checkpoint_ns, checkpoint_id",
        "checkpoint_blobs": "SELECT * FROM checkpoint_blobs WHERE thread_id = %s "
        "ORDER BY checkpoint_ns, channel, version",
        "checkpoint_writes": "SELECT * FROM checkpoint_writes WHERE thread_id = %s "
        "ORDER BY checkpoint_ns, checkpoint_id, task_id, idx",
    }
    found = {}
    for table, sql in queries.items():
        cur = await conn.execute(sql, (thread_id,))
        found[table] = [{**row, "thread_id": "-"} for row in await cur.fetchall()]
    return found


async def _reads(saver: AsyncPostgresSaver, thread_id: str, script: list[_Put]) -> list[Any]:
    """What every read API returns for the thread."""

    def config(ns: str, checkpoint_id: str | None = None) -> RunnableConfig:
        ids = {"checkpoint_id": checkpoint_id} if checkpoint_id else {}
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, **ids}}

    async def listed(*args: Any, **kwargs: Any) -> list[CheckpointTuple]:
        return [item async for item in saver.alist(*args, **kwargs)]

    root_ids = [put.id for put in script if put.ns == ""]
    reads: list[Any] = [
        await saver.aget_tuple(config("")),
        await saver.aget_tuple(config("child:4f1c")),
        await saver.aget_tuple({"configurable": {"thread_id": thread_id}}),  # ns defaults to ""
        await saver.aget_tuple(config("", str(uuid6()))),
        await saver.aget_tuple(config("no-such-ns")),
    ]
    reads += [await saver.aget_tuple(config(put.ns, put.id)) for put in script]
    reads += [
        await listed(config("")),
        await listed(config("child:4f1c")),
        await listed({"configurable": {"thread_id": thread_id}}),  # every namespace
        await listed(config(""), filter={"step": 1}),
        await listed(config(""), before=config("", root_ids[-1]), limit=2),
    ]
    return reads


@pytest.fixture
async def savers(checkpoint_url: str) -> AsyncIterator[dict[str, AsyncPostgresSaver]]:
    """The stock saver on one connection, ours on a pool and ours on one connection."""
    serde = checkpoint_serializer()
    async with (
        AsyncPostgresSaver.from_conn_string(checkpoint_url, serde=serde) as stock,
        CheckpointStore(checkpoint_url, min_size=1, max_size=4, serde=serde) as store,
        await AsyncConnection.connect(
            checkpoint_url, autocommit=True, prepare_threshold=0, row_factory=dict_row
        ) as single,
    ):
        assert not store.saver.serialises_calls
        yield {
            "stock": stock,
            "pooled": store.saver,
            "single": PooledPostgresSaver(single, serde=serde),
        }


async def test_same_rows_and_same_reads_as_the_stock_saver(
    checkpoint_url: str, savers: dict[str, AsyncPostgresSaver]
) -> None:
    script = _script()
    threads = {name: f"{name}-{uuid.uuid4()}" for name in savers}
    for name, saver in savers.items():
        await _write(saver, threads[name], script)

    async with await AsyncConnection.connect(checkpoint_url, row_factory=dict_row) as conn:
        rows = {name: await _rows(conn, thread) for name, thread in threads.items()}
    assert rows["stock"]["checkpoint_writes"], "the script wrote no pending writes"
    assert {row["type"] for row in rows["stock"]["checkpoint_blobs"]} == {"msgpack", "bytes"}
    assert rows["pooled"] == rows["stock"]
    assert rows["single"] == rows["stock"]

    stock = savers["stock"]
    for writer, thread in threads.items():
        expected = await _reads(stock, thread, script)
        for reader in ("pooled", "single"):
            assert await _reads(savers[reader], thread, script) == expected, (writer, reader)

    # The script really exercised what it is for: check a few reads in plain terms.
    latest = await savers["pooled"].aget_tuple(
        {"configurable": {"thread_id": threads["pooled"], "checkpoint_ns": ""}}
    )
    assert latest is not None
    values = latest.checkpoint["channel_values"]
    assert values["count"] == 9 and values["items"] == ["a", "b", "e"]
    assert values["history"] == _DeltaSnapshot(["h1"])
    assert values[TASKS] == [{"node": "review", "arg": 1}]  # migrated from the parent's writes
    assert "cleared" not in values
    assert latest.metadata == {"source": "loop", "step": 4, "user": "ana", "run": 7}
    second = await savers["pooled"].aget_tuple(
        {
            "configurable": {
                "thread_id": threads["pooled"],
                "checkpoint_ns": "",
                "checkpoint_id": script[1].id,
            }
        }
    )
    assert second is not None
    assert second.pending_writes == [
        ("t1", "items", ["c"]),
        ("t1", "count", 2),
        ("t2", INTERRUPT, {"value": "again"}),
        ("t3", ERROR, "boom"),
        ("t3", "items", ["d"]),
        ("t5", INTERRUPT, {"value": "second"}),
    ]


async def test_non_text_versions_are_stored_as_the_stock_saver_stores_them(
    checkpoint_url: str, savers: dict[str, AsyncPostgresSaver]
) -> None:
    """Integer versions (a custom `get_next_version`) take the stock statements."""
    threads = {name: f"{name}-{uuid.uuid4()}" for name in ("stock", "pooled")}
    for name, thread in threads.items():
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"items": [1, 2], "n": 3}
        checkpoint["channel_versions"] = {"items": 2, "n": 1}
        config: RunnableConfig = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        await savers[name].aput(config, checkpoint, {"step": 1}, {"items": 2, "n": 1})
    async with await AsyncConnection.connect(checkpoint_url, row_factory=dict_row) as conn:
        stock_rows = await _rows(conn, threads["stock"])
        pooled_rows = await _rows(conn, threads["pooled"])
    for rows in (stock_rows, pooled_rows):  # the checkpoint ids differ
        for row in rows["checkpoints"]:
            row.pop("checkpoint_id")
            row["checkpoint"].pop("id")
            row["checkpoint"].pop("ts")
    assert pooled_rows == stock_rows
    assert [row["version"] for row in pooled_rows["checkpoint_blobs"]] == ["2"]
    loaded = await savers["pooled"].aget_tuple(
        {"configurable": {"thread_id": threads["pooled"], "checkpoint_ns": ""}}
    )
    assert loaded is not None
    assert loaded.checkpoint["channel_values"] == {"items": [1, 2], "n": 3}


async def test_latest_read_is_whole_while_a_writer_runs(
    savers: dict[str, AsyncPostgresSaver],
) -> None:
    """A read during a stream of writes sees one checkpoint whole: inline value, blobs and
    pending writes all of the same step, and never a step older than one seen before."""
    saver = savers["pooled"]
    thread_id = str(uuid.uuid4())
    latest: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
    steps = 60
    done = asyncio.Event()

    async def writer() -> None:
        config = latest
        for step in range(steps):
            checkpoint = empty_checkpoint()
            checkpoint["v"] = 4
            checkpoint["channel_values"] = {
                "step": step,
                "blob": {"step": step, "pad": "x" * 3000},
                "list": [step] * 50,
            }
            checkpoint["channel_versions"] = {
                "step": _version(step + 1),
                "blob": _version(step + 1),
                "list": _version(step + 1),
            }
            config = await saver.aput(
                config, checkpoint, {"step": step}, dict(checkpoint["channel_versions"])
            )
            await saver.aput_writes(config, [("list", [step])], "task")
        done.set()

    async def reader() -> int:
        seen, reads = -1, 0
        while not done.is_set():
            found = await saver.aget_tuple(latest)
            if found is None:
                continue
            values = found.checkpoint["channel_values"]
            step = values["step"]
            assert values["blob"]["step"] == step and values["list"] == [step] * 50
            assert found.pending_writes in ([], [("task", "list", [step])])
            assert step >= seen
            seen, reads = step, reads + 1
        return reads

    results = await asyncio.gather(writer(), *(reader() for _ in range(3)))
    assert sum(results[1:]) > steps  # the readers really ran alongside the writer
