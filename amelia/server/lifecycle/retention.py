"""Retention: finished workflows past the retention window, their checkpoints, orphan threads.

One run (`LogRetentionService.cleanup`) reads the settings live, takes a PostgreSQL advisory
lock so only one process runs at a time, then:

1. deletes, in batches, terminal workflows whose `completed_at` is older than
   `log_retention_days`: each batch locks its rows, deletes their checkpoint threads through
   the saver first and then only the rows whose threads went away (the cascade removes their
   events, token usage and prompt-version links), so no thread is ever orphaned;
2. deletes the checkpoint threads of terminal workflows that stay, per
   `checkpoint_retention_days` (< 0 keep, 0 all terminal, N older than N days);
3. sweeps orphan threads: UUID thread ids with no `workflows` row.

The saver's tables are only read (which threads exist); every delete goes through
`adelete_thread`. Errors of either driver end the run with what it managed; nothing raises
into the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy import (
    BigInteger,
    Exists,
    Select,
    Text,
    any_,
    bindparam,
    case,
    cast,
    column,
    delete,
    exists,
    false,
    func,
    select,
    table,
    tuple_,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from amelia.server.checkpoint import CheckpointStore
from amelia.server.database.connection import Database
from amelia.server.database.schema import workflow_log, workflows
from amelia.server.database.settings_repository import ServerSettings, SettingsRepository
from amelia.server.models.state import TERMINAL_STATUSES

logger = logging.getLogger(__name__)

RETENTION_LOCK_KEY = 0x616D656C69610002
"""Advisory lock key of retention runs ("amelia" + 2; the migration lock is + 1)."""

DEFAULT_INTERVAL_SECONDS = 6 * 3600.0
DEFAULT_BATCH_SIZE = 500

_TERMINAL = sorted(status.value for status in TERMINAL_STATUSES)
# Thread ids we treat as workflow ids: the hyphenated UUID form, any case.
_UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

# The saver's main table, for read-only lookups of which threads exist.
_checkpoints = table("checkpoints", column("thread_id", Text))

_TRY_LOCK = select(func.pg_try_advisory_xact_lock(bindparam("key", type_=BigInteger)))
_HAS_CHECKPOINT_TABLE = select(func.to_regclass(bindparam("name", type_=Text)).is_not(None))

# One statement per batch: delete the rows and count their events. Every part of a statement
# sees the same snapshot, so the count sees the events the cascade is about to remove.
_gone = (
    delete(workflows)
    .where(workflows.c.id == any_(bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))))
    .returning(workflows.c.id)
    .cte("gone")
)
_DELETE_ROWS = select(
    select(func.count()).select_from(_gone).scalar_subquery().label("workflows"),
    select(func.count())
    .select_from(workflow_log)
    .where(workflow_log.c.workflow_id.in_(select(_gone.c.id)))
    .scalar_subquery()
    .label("events"),
)


@dataclass(frozen=True, slots=True)
class CleanupResult:
    """What one retention run did."""

    events_deleted: int = 0
    workflows_deleted: int = 0
    checkpoints_deleted: int = 0
    orphan_checkpoints_deleted: int = 0
    skipped: bool = False


@dataclass(slots=True)
class _Tally:
    events: int = 0
    workflows: int = 0
    checkpoints: int = 0
    orphans: int = 0

    def result(self) -> CleanupResult:
        return CleanupResult(self.events, self.workflows, self.checkpoints, self.orphans)


class _SaverUnavailable(Exception):
    """The checkpointer cannot delete anything right now; the run stops here."""


def _has_thread() -> Exists:
    # Cast the workflow id (canonical lower-case text) so the saver's primary key is used.
    return exists().where(_checkpoints.c.thread_id == cast(workflows.c.id, Text))


def _expired_rows(
    cutoff: datetime, has_table: bool, after: tuple[datetime, uuid.UUID] | None, limit: int
) -> Select[uuid.UUID, datetime, bool]:
    """A batch of workflows past the log cutoff, locked; rows in use are left for later."""
    has_thread = _has_thread() if has_table else false()
    statement = select(
        workflows.c.id, workflows.c.completed_at, has_thread.label("has_thread")
    ).where(workflows.c.status.in_(_TERMINAL), workflows.c.completed_at < cutoff)
    if after is not None:
        statement = statement.where(tuple_(workflows.c.completed_at, workflows.c.id) > after)
    return (
        statement.order_by(workflows.c.completed_at, workflows.c.id)
        .limit(limit)
        .with_for_update(of=workflows, skip_locked=True)
    )


def _kept_rows_with_threads(
    cutoff: datetime | None, after: uuid.UUID | None, limit: int
) -> Select[uuid.UUID]:
    """A batch of terminal workflows that stay but whose threads go (cutoff None: all)."""
    statement = select(workflows.c.id).where(workflows.c.status.in_(_TERMINAL), _has_thread())
    if cutoff is not None:
        statement = statement.where(workflows.c.completed_at < cutoff)
    if after is not None:
        statement = statement.where(workflows.c.id > after)
    # FOR SHARE: a concurrent resume (a status UPDATE) waits until the threads are gone,
    # and a row being changed right now is skipped instead of losing its threads mid-run.
    return (
        statement.order_by(workflows.c.id)
        .limit(limit)
        .with_for_update(read=True, of=workflows, skip_locked=True)
    )


def _orphan_threads(after: str | None, limit: int) -> Select[str]:
    """A batch of distinct UUID thread ids that no workflow row owns."""
    thread_id = _checkpoints.c.thread_id
    # CASE guards the cast: a non-UUID thread id must never reach `::uuid`.
    as_uuid = case((thread_id.regexp_match(_UUID_PATTERN), cast(thread_id, UUID)), else_=None)
    statement = (
        select(thread_id)
        .distinct()
        .where(thread_id.regexp_match(_UUID_PATTERN), ~exists().where(workflows.c.id == as_uuid))
    )
    if after is not None:
        statement = statement.where(thread_id > after)
    return statement.order_by(thread_id).limit(limit)


class LogRetentionService:
    """Deletes old finished workflows and checkpoint threads, periodically and at shutdown.

    Args:
        db: the application's `Database`.
        checkpoints: the open checkpoint store, or None when the server runs without one
            (then rows that still have checkpoint threads are kept, never orphaned).
        settings_repository: read at every run, so changed settings apply without a restart.
        interval_seconds: time between periodic runs (`start()`).
        batch_size: workflows or threads handled per transaction.
    """

    def __init__(
        self,
        db: Database,
        checkpoints: CheckpointStore | None,
        settings_repository: SettingsRepository,
        *,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {batch_size})")
        self._db = db
        self._checkpoints = checkpoints
        self._settings = settings_repository
        self._interval = interval_seconds
        self._batch_size = batch_size
        self._task: asyncio.Task[None] | None = None

    async def cleanup(self) -> CleanupResult:
        """Run retention once, unless another process is running it.

        Returns:
            The counts of what was deleted (partial when an error ended the run), or
            `skipped=True` when another run holds the lock. Never raises a database error.
        """
        started = time.monotonic()
        tally = _Tally()
        settings: ServerSettings | None = None
        try:
            # A transaction-scoped lock cannot leak: commit, rollback or a dropped connection
            # releases it. The lock transaction only idles (no snapshot, no xid) while the
            # batches commit on other connections.
            async with self._db.transaction() as lock_conn:
                if not await lock_conn.scalar(_TRY_LOCK, {"key": RETENTION_LOCK_KEY}):
                    logger.info("retention skipped: another process is running it")
                    return CleanupResult(skipped=True)
                settings = await self._settings.get_server_settings()
                await self._run(settings, lock_conn, tally)
        except _SaverUnavailable as exc:
            logger.warning("retention stopped, rows kept for the next run: %s", exc)
        except (SQLAlchemyError, psycopg.Error, OSError, TimeoutError) as exc:
            logger.error("retention stopped by a database error: %s: %s", type(exc).__name__, exc)
        except (ValueError, RuntimeError) as exc:  # settings row missing, database closed
            logger.error("retention could not run: %s", exc)
        result = tally.result()
        logger.info(
            "retention: %d workflows, %d events, %d checkpoint threads, %d orphan threads "
            "deleted (log %s days, checkpoints %s days) in %.2f s",
            result.workflows_deleted,
            result.events_deleted,
            result.checkpoints_deleted,
            result.orphan_checkpoints_deleted,
            settings.log_retention_days if settings else "?",
            settings.checkpoint_retention_days if settings else "?",
            time.monotonic() - started,
        )
        return result

    async def cleanup_on_shutdown(self) -> CleanupResult:
        """The spec's name for a final run; same as `cleanup()`."""
        return await self.cleanup()

    async def _run(self, settings: ServerSettings, conn: AsyncConnection, tally: _Tally) -> None:
        now = datetime.now(UTC)
        has_table = bool(await conn.scalar(_HAS_CHECKPOINT_TABLE, {"name": "checkpoints"}))
        await self._delete_expired(
            now - timedelta(days=settings.log_retention_days), has_table, tally
        )
        if not has_table:
            return
        if self._checkpoints is None:
            logger.info("retention: no checkpointer, checkpoint threads left alone")
            return
        days = settings.checkpoint_retention_days
        if days >= 0:
            await self._delete_kept_threads(now - timedelta(days=days) if days else None, tally)
        await self._delete_orphans(tally)

    async def _delete_expired(self, cutoff: datetime, has_table: bool, tally: _Tally) -> None:
        after: tuple[datetime, uuid.UUID] | None = None
        kept_for_threads = 0
        while True:
            async with self._db.transaction() as conn:
                rows = (
                    await conn.execute(_expired_rows(cutoff, has_table, after, self._batch_size))
                ).all()
                if not rows:
                    break
                after = (rows[-1].completed_at, rows[-1].id)
                if self._checkpoints is None or not has_table:
                    # Without a saver only rows that own no thread may go (without the
                    # saver's tables no row owns one).
                    deletable = [row.id for row in rows if not row.has_thread]
                    kept_for_threads += len(rows) - len(deletable)
                else:
                    # Threads first, rows second: a failure leaves the row (and its lock
                    # stops a concurrent resume), so no thread loses its workflow.
                    done = await self._delete_threads([str(row.id) for row in rows])
                    deletable = [row.id for row in rows if str(row.id) in done]
                    tally.checkpoints += sum(1 for r in rows if r.has_thread and str(r.id) in done)
                if deletable:
                    counts = (await conn.execute(_DELETE_ROWS, {"ids": deletable})).one()
                    tally.workflows += counts.workflows
                    tally.events += counts.events
            if len(rows) < self._batch_size:
                break
        if kept_for_threads:
            logger.info("retention: %d expired workflows kept (no checkpointer)", kept_for_threads)

    async def _delete_kept_threads(self, cutoff: datetime | None, tally: _Tally) -> None:
        after: uuid.UUID | None = None
        while True:
            async with self._db.transaction() as conn:
                statement = _kept_rows_with_threads(cutoff, after, self._batch_size)
                ids = list((await conn.scalars(statement)).all())
                if not ids:
                    break
                after = ids[-1]
                tally.checkpoints += len(await self._delete_threads([str(i) for i in ids]))
            if len(ids) < self._batch_size:
                break

    async def _delete_orphans(self, tally: _Tally) -> None:
        after: str | None = None
        while True:
            async with self._db.connection() as conn:
                threads = list((await conn.scalars(_orphan_threads(after, self._batch_size))).all())
            if not threads:
                break
            after = threads[-1]
            # The raw ids, not normalised: `adelete_thread` matches the text exactly.
            tally.orphans += len(await self._delete_threads(threads))
            if len(threads) < self._batch_size:
                break

    async def _delete_threads(self, thread_ids: Sequence[str]) -> set[str]:
        """Delete threads through the saver; returns the ids deleted without error.

        `CheckpointStore.delete_threads` only returns a count, and rows may go only when
        their own thread is gone, hence this per-thread variant.

        Raises:
            _SaverUnavailable: the store is closed, or every thread of the batch failed.
        """
        store = self._checkpoints
        if store is None:
            raise _SaverUnavailable("no checkpointer")
        try:
            saver = store.saver
            # Leave half of the saver's pool to the workflows running meanwhile.
            gate = asyncio.Semaphore(max(1, store.pool.max_size // 2))
        except RuntimeError as exc:
            raise _SaverUnavailable(str(exc)) from exc
        errors: list[psycopg.Error] = []

        async def delete(thread_id: str) -> str | None:
            async with gate:
                try:
                    await saver.adelete_thread(thread_id)
                except psycopg.Error as exc:
                    errors.append(exc)
                    return None
                return thread_id

        done = {t for t in await asyncio.gather(*map(delete, thread_ids)) if t is not None}
        if errors:
            first = errors[0]
            if not done:
                raise _SaverUnavailable(
                    f"no checkpoint thread of {len(errors)} could be deleted: "
                    f"{type(first).__name__}: {first}"
                )
            logger.warning(
                "retention: %d of %d checkpoint threads not deleted (kept for the next run): "
                "%s: %s",
                len(errors),
                len(thread_ids),
                type(first).__name__,
                first,
            )
        return done

    async def run_periodically(self, interval_seconds: float = DEFAULT_INTERVAL_SECONDS) -> None:
        """Run `cleanup()` every `interval_seconds`, the first time after one interval.

        Runs until cancelled; a failed run is logged and the loop goes on.
        """
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.cleanup()
            except Exception:  # cleanup() logs its own errors; this guards against bugs
                logger.exception("retention run failed; next try in %g s", interval_seconds)

    def start(self) -> None:
        """Start the periodic background task (no-op when it is already running)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                self.run_periodically(self._interval), name="amelia-retention"
            )

    async def stop(self, run_final: bool = True) -> CleanupResult | None:
        """Stop the periodic task (cancelling a run in progress) and optionally run once more.

        A cancelled run rolls back its open batch; rows whose threads were already deleted
        are simply deleted by the final or next run.

        Args:
            run_final: run `cleanup()` once after stopping (the shutdown run).

        Returns:
            The final run's result, or None when `run_final` is False.
        """
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                # Our own cancel of the task is expected; a cancel of stop() itself is not.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        return await self.cleanup() if run_final else None
