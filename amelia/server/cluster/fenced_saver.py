"""Checkpoint writes that carry the run's fencing number.

Inside a run (`fencing.current_run` is set) every `aput` and `aput_writes` runs in one
transaction that starts with `amelia_assert_fence(workflow, fence)` (see the migration):
the write is refused with `FencedOutError` when another process has claimed the run since,
and otherwise the check's share lock on the workflow row makes a concurrent claim wait until
the write has committed. Pipelined, so the check costs no extra round trip. Reads, and writes
outside a run (tests, tools), are unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

import psycopg
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import ChannelVersions, Checkpoint, CheckpointMetadata
from psycopg import AsyncCursor
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from amelia.server.checkpoint_saver import ConnectionLost, PooledPostgresSaver
from amelia.server.cluster.fencing import RunToken, current_run
from amelia.server.exceptions import FencedOutError

FENCE_SQLSTATE = "AF001"
_ASSERT_FENCE = "SELECT amelia_assert_fence(%s, %s)"

# The run whose write is in progress in this context (set around aput/aput_writes only).
_writing: ContextVar[RunToken | None] = ContextVar("amelia_fenced_write", default=None)


class FencedSaver(PooledPostgresSaver):
    """`PooledPostgresSaver` whose writes inside a run are checked against its fence."""

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        reset = _writing.set(current_run.get())
        try:
            return await super().aput(config, checkpoint, metadata, new_versions)
        finally:
            _writing.reset(reset)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        reset = _writing.set(current_run.get())
        try:
            await super().aput_writes(config, writes, task_id, task_path)
        finally:
            _writing.reset(reset)

    @asynccontextmanager
    async def _cursor(self, *, pipeline: bool = False) -> AsyncIterator[AsyncCursor[DictRow]]:
        token = _writing.get()
        if token is None or self.pipe is not None or not isinstance(self.conn, AsyncConnectionPool):
            async with super()._cursor(pipeline=pipeline) as cur:
                yield cur
            return
        async with self.conn.connection() as conn, self._deadline(conn):
            try:
                async with (
                    conn.pipeline(),
                    conn.transaction(),
                    conn.cursor(binary=True, row_factory=dict_row) as cur,
                ):
                    await cur.execute(_ASSERT_FENCE, (token.workflow_id, token.fence))
                    yield cur
            except psycopg.Error as exc:
                if getattr(exc, "sqlstate", None) == FENCE_SQLSTATE:
                    raise FencedOutError(token.workflow_id, token.fence) from exc
                if isinstance(exc, psycopg.OperationalError) and (conn.broken or conn.closed):
                    raise ConnectionLost(str(exc)) from exc
                raise
