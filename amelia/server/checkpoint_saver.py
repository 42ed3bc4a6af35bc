"""`PooledPostgresSaver`: LangGraph's `AsyncPostgresSaver` tuned for a connection pool.

Same tables, same rows, same `CheckpointTuple`s as the stock saver (tests compare the two on
the same data); what differs is how the work reaches PostgreSQL:

- no global lock on a pool: each call checks out its own connection;
- `aput` is one statement (blob upserts in a CTE, then the checkpoint upsert) instead of a
  pipeline of an `executemany` and an insert; `aput_writes` is one multi-row insert;
- reads find each channel's blob by its primary key (`LATERAL ... LIMIT 1`) instead of letting
  the planner hash every blob the thread ever wrote, which grows with the thread's history;
- (de)serialisation runs inline rather than through `asyncio.to_thread`: the thread hop costs
  more than msgpack does, and the GIL gives it no parallelism anyway;
- a read gives its connection back before it decodes the row;
- with a `deadline`, a statement that gets no answer in time fails (`CheckpointTimeout`)
  instead of waiting for a dead link to heal, and its connection is discarded.

On a single connection or a pipeline every call takes the stock path (and its lock).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from functools import lru_cache, partial
from typing import Any, TypeVar, cast

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.base import SerializerProtocol
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from psycopg import AsyncConnection, AsyncCursor
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# The stock SELECT with one change: each channel's blob is a primary-key lookup. The stock
# join lets the planner hash all of the thread's blobs (every version ever written) to find
# the dozen the checkpoint names, so a read got slower as the thread grew. `LIMIT 1` keeps
# the subquery from being flattened back into that join; the key is unique, so it drops
# nothing.
SELECT_SQL = """
select
    thread_id,
    checkpoint,
    checkpoint_ns,
    checkpoint_id,
    parent_checkpoint_id,
    metadata,
    (
        select array_agg(array[bl.channel::bytea, bl.type::bytea, bl.blob])
        from jsonb_each_text(checkpoint -> 'channel_versions') as cv
        cross join lateral (
            select b.channel, b.type, b.blob
            from checkpoint_blobs b
            where b.thread_id = checkpoints.thread_id
                and b.checkpoint_ns = checkpoints.checkpoint_ns
                and b.channel = cv.key
                and b.version = cv.value
            limit 1
        ) as bl
    ) as channel_values,
    (
        select
        array_agg(array[cw.task_id::text::bytea, cw.channel::bytea, cw.type::bytea, cw.blob, convert_to(cw.task_path, 'UTF8'), cw.idx::text::bytea])
        from checkpoint_writes cw
        where cw.thread_id = checkpoints.thread_id
            and cw.checkpoint_ns = checkpoints.checkpoint_ns
            and cw.checkpoint_id = checkpoints.checkpoint_id
    ) as pending_writes
from checkpoints """  # noqa: E501

_UPSERT_CHECKPOINT = """
INSERT INTO checkpoints
    (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id)
DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata"""

# More rows than this in one call go the stock way (a statement holds at most 65535 params).
_MAX_ROWS = 1000
# Pending writes bigger than this are decoded in a worker thread, as the stock saver does.
_INLINE_WRITES_BYTES = 256 * 1024


@lru_cache(maxsize=64)
def _put_sql(blobs: int) -> str:
    """The checkpoint upsert, after `blobs` blob upserts in a CTE: one statement, one round
    trip, one transaction (the stock pipeline is one implicit transaction too)."""
    if not blobs:
        return _UPSERT_CHECKPOINT
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s::bytea)"] * blobs)
    return (
        "WITH blobs AS (INSERT INTO checkpoint_blobs"
        " (thread_id, checkpoint_ns, channel, version, type, blob)"
        f" VALUES {rows}"
        " ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING)"
        f"{_UPSERT_CHECKPOINT}"
    )


@lru_cache(maxsize=64)
def _writes_sql(writes: int, upsert: bool) -> str:
    rows = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s::bytea)"] * writes)
    conflict = (
        "DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob"
        if upsert
        else "DO NOTHING"
    )
    return (
        "INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id,"
        f" task_path, idx, channel, type, blob) VALUES {rows}"
        f" ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) {conflict}"
    )


class ConnectionLost(psycopg.OperationalError):
    """A pooled connection died under a saver call (terminated backend, server restart)."""


class CheckpointTimeout(TimeoutError):
    """A checkpoint statement got no answer within its deadline: PostgreSQL is unreachable.

    Its connection was cut and discarded. Not retried here: the next attempt would most
    likely wait as long (the caller decides, as for any timeout).
    """


class _Deadline:
    """Cuts `conn` when a statement on it is still waiting `seconds` after the checkout.

    Cancelling the waiting task would not do: psycopg then asks the server to cancel the
    statement and waits for that too, through the same dead link. Shutting the socket down
    makes the pending read fail at once and leaves the connection broken, so the pool
    discards it rather than handing it out again.
    """

    def __init__(self, conn: AsyncConnection[Any], seconds: float) -> None:
        self.conn = conn
        self.seconds = seconds
        self.expired = False
        self._timer = asyncio.get_running_loop().call_later(seconds, self._check)

    def _check(self) -> None:
        if self.conn.closed:
            return
        if self.conn.pgconn.transaction_status == TransactionStatus.IDLE:
            # Nothing in flight (an `alist` caller is still iterating): not our business.
            self._timer = asyncio.get_running_loop().call_later(self.seconds, self._check)
            return
        self.expired = True
        try:
            with socket.socket(fileno=os.dup(self.conn.pgconn.socket)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error) as exc:  # already gone: its read fails anyway
            logger.info("could not cut a timed-out checkpoint connection: %s", exc)

    def disarm(self) -> None:
        self._timer.cancel()


class PooledPostgresSaver(AsyncPostgresSaver):
    """`AsyncPostgresSaver` without the global lock, and with cheaper statements, on a pool.

    Each call checks out its own pooled connection for the length of the call (for `alist`,
    until the iteration ends), so calls from different workflows never share a connection
    and need no serialising. On a single connection, or with a pipeline, the stock methods
    and lock are kept: a psycopg connection runs one statement at a time.

    On a pool, `aput`, `aput_writes`, `aget_tuple` and `adelete_thread` run again on another
    connection when theirs turns out to be dead (the pool discards it). They are safe to
    repeat: the writes are upserts or ON CONFLICT DO NOTHING inserts, the delete is a delete.
    That replaces a check round trip on every checkout.
    """

    SELECT_SQL = SELECT_SQL

    def __init__(
        self,
        conn: AsyncConnection[DictRow] | AsyncConnectionPool[AsyncConnection[DictRow]],
        pipe: psycopg.AsyncPipeline | None = None,
        serde: SerializerProtocol | None = None,
        *,
        deadline: float | None = None,
    ) -> None:
        """`deadline`: seconds a call may wait for PostgreSQL once it has its pooled
        connection (the statement timeout plus one second); None waits for ever."""
        super().__init__(conn, pipe=pipe, serde=serde)
        self.deadline = deadline
        # Two in-process prunes of one thread fail each other (SerializationFailure); the
        # stock lock used to keep them apart, so prunes keep a lock of their own.
        self._prune_lock = asyncio.Lock()

    @property
    def serialises_calls(self) -> bool:
        """True when calls still queue behind the stock lock (single connection or pipeline)."""
        return self.pipe is not None or not isinstance(self.conn, AsyncConnectionPool)

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        if self.pipe is not None or not isinstance(self.conn, AsyncConnectionPool):
            async with super()._cursor(pipeline=pipeline) as cur:
                yield cur
            return
        # The same branches as the stock method, minus `self.lock`: the connection is ours
        # alone until the block ends and goes back to the pool.
        async with self.conn.connection() as conn, self._deadline(conn):
            try:
                if not pipeline:
                    async with conn.cursor(binary=True, row_factory=dict_row) as cur:
                        yield cur
                elif self.supports_pipeline:
                    async with (
                        conn.pipeline(),
                        conn.cursor(binary=True, row_factory=dict_row) as cur,
                    ):
                        yield cur
                else:
                    async with (
                        conn.transaction(),
                        conn.cursor(binary=True, row_factory=dict_row) as cur,
                    ):
                        yield cur
            except psycopg.OperationalError as exc:
                if isinstance(exc, ConnectionLost) or not (conn.broken or conn.closed):
                    raise
                raise ConnectionLost(str(exc)) from exc

    @asynccontextmanager
    async def _deadline(self, conn: AsyncConnection[Any]) -> AsyncIterator[None]:
        """Within the block, `conn` is cut when its statement outlives `self.deadline`;
        what the block then raises becomes a `CheckpointTimeout`."""
        if self.deadline is None:
            yield
            return
        deadline = _Deadline(conn, self.deadline)
        try:
            yield
        except Exception as exc:
            if not deadline.expired:
                raise
            raise CheckpointTimeout(
                f"PostgreSQL did not answer a checkpoint statement within {self.deadline:g} s "
                "(statement timeout + 1 s): the database is unreachable; the connection was "
                "discarded"
            ) from exc
        finally:
            deadline.disarm()

    async def _retrying(self, call: Callable[[], Awaitable[_T]]) -> _T:
        # Every pooled connection may be dead (server restart): allow one attempt per
        # connection the pool can hold, plus one on a fresh connection.
        attempts = self.conn.max_size + 1 if isinstance(self.conn, AsyncConnectionPool) else 1
        for attempt in range(1, attempts + 1):
            try:
                return await call()
            except ConnectionLost as exc:
                if attempt == attempts:
                    raise
                logger.warning("checkpoint connection lost (%s); retrying", exc.__cause__)
        raise AssertionError("unreachable")

    async def _execute(self, sql: str, params: Sequence[Any]) -> None:
        async with self._cursor() as cur:
            await cur.execute(sql, params)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Save a checkpoint (see `AsyncPostgresSaver.aput`); retried on a dead connection."""
        statement = (
            None
            if self.serialises_calls
            else self._put_statement(config, checkpoint, metadata, new_versions)
        )
        if statement is None:
            return await self._retrying(
                partial(super().aput, config, checkpoint, metadata, new_versions)
            )
        await self._retrying(partial(self._execute, *statement))
        configurable = config["configurable"]
        return {
            "configurable": {
                "thread_id": configurable["thread_id"],
                "checkpoint_ns": configurable["checkpoint_ns"],
                "checkpoint_id": checkpoint["id"],
            }
        }

    def _put_statement(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> tuple[str, list[Any]] | None:
        """The one statement of `aput` and its parameters, or None for the stock path."""
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        checkpoint_ns = configurable["checkpoint_ns"]
        # The stock split: primitives stay inline in the checkpoint row, the rest are blobs.
        copy = checkpoint.copy()
        inline = copy["channel_values"] = dict(checkpoint["channel_values"])
        blob_values: dict[str, Any] = {}
        for key, value in checkpoint["channel_values"].items():
            if isinstance(value, _DeltaSnapshot):
                blob_values[key] = inline.pop(key)
                inline[key] = True
            elif not (value is None or isinstance(value, (str, int, float, bool))):
                blob_values[key] = inline.pop(key)
        versions = {k: v for k, v in new_versions.items() if k in blob_values}
        # Multi-row VALUES needs one type per column: non-text versions (a custom
        # `get_next_version`) go row by row, the stock way. So do very large checkpoints.
        if len(versions) > _MAX_ROWS or not all(isinstance(v, str) for v in versions.values()):
            return None
        rows = self._dump_blobs(thread_id, checkpoint_ns, blob_values, versions)
        params: list[Any] = [value for row in rows for value in row]
        params += (
            thread_id,
            checkpoint_ns,
            checkpoint["id"],
            configurable.get("checkpoint_id"),
            Jsonb(copy),
            Jsonb(get_serializable_checkpoint_metadata(config, metadata)),
        )
        return _put_sql(len(rows)), params

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Save a task's pending writes (see `AsyncPostgresSaver.aput_writes`); retried."""
        if self.serialises_calls or len(writes) > _MAX_ROWS:
            await self._retrying(partial(super().aput_writes, config, writes, task_id, task_path))
            return
        configurable = config["configurable"]
        rows = self._dump_writes(
            configurable["thread_id"],
            configurable["checkpoint_ns"],
            configurable["checkpoint_id"],
            task_id,
            task_path,
            writes,
        )
        if not rows:
            return
        # The stock saver upserts row by row: of two writes with one key (say two interrupts)
        # the last stays on upsert, the first on insert-or-skip. One statement may not touch
        # a row twice, so keep just that one.
        upsert = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        kept = list({row[5]: row for row in (rows if upsert else reversed(rows))}.values())
        params = [value for row in kept for value in row]
        await self._retrying(partial(self._execute, _writes_sql(len(kept), upsert), params))

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """Load a checkpoint (see `AsyncPostgresSaver.aget_tuple`); retried.

        The row is decoded after its connection is back in the pool.
        """
        if self.serialises_calls:
            return await super().aget_tuple(config)
        row = await self._retrying(partial(self._fetch_checkpoint_row, config))
        return None if row is None else await self._load_checkpoint_tuple(row)

    async def _fetch_checkpoint_row(self, config: RunnableConfig) -> DictRow | None:
        # The statements of the stock `aget_tuple`, minus the decoding.
        thread_id = config["configurable"]["thread_id"]
        checkpoint_id = get_checkpoint_id(config)
        checkpoint_ns = config["configurable"].get("checkpoint_ns", "")
        args: tuple[Any, ...]
        if checkpoint_id:
            args = (thread_id, checkpoint_ns, checkpoint_id)
            where = "WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = %s"
        else:
            args = (thread_id, checkpoint_ns)
            where = (
                "WHERE thread_id = %s AND checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1"
            )
        async with self._cursor() as cur:
            await cur.execute(self.SELECT_SQL + where, args, binary=True)
            value = await cur.fetchone()
            if value is None:
                return None
            # Checkpoints older than format 4 keep their pending sends with their parent.
            if value["checkpoint"]["v"] < 4 and value["parent_checkpoint_id"]:
                await cur.execute(
                    self.SELECT_PENDING_SENDS_SQL, (thread_id, [value["parent_checkpoint_id"]])
                )
                if sends := await cur.fetchone():
                    if value["channel_values"] is None:
                        value["channel_values"] = []
                    self._migrate_pending_sends(
                        sends["sends"], value["checkpoint"], value["channel_values"]
                    )
        return value

    async def _load_checkpoint_tuple(self, value: DictRow) -> CheckpointTuple:
        """The stock conversion of a row, decoding small pending writes inline."""
        pending = value["pending_writes"]
        if pending and sum(len(w[3]) for w in pending) > _INLINE_WRITES_BYTES:
            return await super()._load_checkpoint_tuple(value)
        thread_id, checkpoint_ns = value["thread_id"], value["checkpoint_ns"]
        parent_id = value["parent_checkpoint_id"]
        checkpoint = cast(
            Checkpoint,
            {
                **value["checkpoint"],
                "channel_values": {
                    **(value["checkpoint"].get("channel_values") or {}),
                    **self._load_blobs(value["channel_values"]),
                },
            },
        )
        return CheckpointTuple(
            {
                "configurable": {
                    "thread_id": thread_id,
                    "checkpoint_ns": checkpoint_ns,
                    "checkpoint_id": value["checkpoint_id"],
                }
            },
            checkpoint,
            value["metadata"],
            (
                {
                    "configurable": {
                        "thread_id": thread_id,
                        "checkpoint_ns": checkpoint_ns,
                        "checkpoint_id": parent_id,
                    }
                }
                if parent_id
                else None
            ),
            self._load_writes(pending),
        )

    async def adelete_thread(self, thread_id: str) -> None:
        """Delete a thread's rows in all three tables (see the stock method); retried."""
        await self._retrying(partial(super().adelete_thread, thread_id))

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Prune checkpoints of the given threads (see `AsyncPostgresSaver.aprune`).

        In-process prunes run one at a time; other calls are not held up by them.
        """
        async with self._prune_lock:
            await super().aprune(thread_ids, strategy=strategy)
