"""Workflow rows: create, read, list, and status changes (part of `WorkflowRepository`).

Status changes are single guarded statements (`UPDATE ... WHERE id = :id AND status =
ANY(:allowed) RETURNING`): the check and the write happen in one step on the server, so two
processes racing on one workflow cannot both win, and the happy path costs one round trip.
A second statement runs only when the guarded one matched nothing, to say why.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    Update,
    any_,
    bindparam,
    func,
    insert,
    literal_column,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import RowMapping
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncConnection

from amelia.server.database.base import RepositoryBase, is_autocommit
from amelia.server.database.errors import ActiveWorktreeConflict, translate_integrity_errors
from amelia.server.database.fast_query import FastQuery
from amelia.server.database.lost_connections import retry_if_connection_lost
from amelia.server.database.schema import workflows
from amelia.server.database.types import NaiveDatetimeError
from amelia.server.exceptions import (
    FencedOutError,
    WorkflowConflictError,
    WorkflowNotFoundError,
)
from amelia.server.models.state import (
    TERMINAL_STATUSES,
    VALID_TRANSITIONS,
    InvalidStateTransitionError,
    PlanCache,
    ServerExecutionState,
    WorkflowStatus,
)

logger = logging.getLogger(__name__)

WorkflowId = uuid.UUID | str
"""A workflow id as callers may hold it; strings are parsed (ValueError when malformed)."""

# Columns internal to the data layer: the event log's counter and the run ownership that
# run_leases.py manages. The one column list of the model is every other column.
_INTERNAL = frozenset(
    {"event_sequence", "owner_id", "lease_expires_at", "fence", "planning", "takeovers"}
)
_COLUMNS = tuple(column for column in workflows.c if column.name not in _INTERNAL)

_WORKTREE_HOLDERS = (WorkflowStatus.IN_PROGRESS, WorkflowStatus.BLOCKED)
_ACTIVE = (WorkflowStatus.PENDING, WorkflowStatus.IN_PROGRESS, WorkflowStatus.BLOCKED)
# Completed and cancelled absorb later writes; failed stays resumable.
_ABSORBING = frozenset({WorkflowStatus.COMPLETED, WorkflowStatus.CANCELLED})

# Rendered as `status IN ('in_progress', 'blocked')`, literally the partial index's predicate:
# with bound parameters a generic plan cannot prove the index applies and scans instead.
_HOLDS_WORKTREE = workflows.c.status.in_(
    bindparam(
        "worktree_holders",
        [status.value for status in _WORKTREE_HOLDERS],
        expanding=True,
        literal_execute=True,
    )
)

# Matches ix_workflows__started_at_id (and the status / worktree_path variants) exactly.
_LIST_ORDER = (workflows.c.started_at.desc().nulls_last(), workflows.c.id.desc())


def _allowed_sources(target: WorkflowStatus) -> frozenset[WorkflowStatus]:
    sources = {source for source, targets in VALID_TRANSITIONS.items() if target in targets}
    if target is WorkflowStatus.COMPLETED:
        sources.add(WorkflowStatus.CANCELLED)  # a completion beats a concurrent cancel
    return frozenset(sources)


_ALLOWED_SOURCES = {target: _allowed_sources(target) for target in WorkflowStatus}


def _status_in(statuses: Collection[WorkflowStatus]) -> ColumnElement[bool]:
    """`status = ANY(:array)`: one parameter whatever the number of statuses."""
    values = sorted(WorkflowStatus(status).value for status in statuses)
    return workflows.c.status == any_(bindparam("statuses", values, type_=ARRAY(Text)))


def _run_values(target: WorkflowStatus) -> dict[str, Any]:
    """How a status change affects run ownership (see run_leases.py).

    A run that ends (terminal, or blocked for approval) gives up its owner; a workflow put
    back in progress (start of a queued one, resume) has no owner yet, so any process can
    claim it. The fence is not raised: only a new claim does that, so the owner's own final
    write (a completion beats a concurrent cancel) still lands.
    """
    if target is WorkflowStatus.PENDING:
        return {}
    return {"owner_id": None, "lease_expires_at": None, "planning": False, "takeovers": 0}


def _set_status_statement(target: WorkflowStatus) -> Update:
    return (
        update(workflows)
        .where(workflows.c.id == bindparam("workflow_id"))
        .where(_status_in(_ALLOWED_SOURCES[target]))
        .values(
            status=target.value,
            completed_at=func.now() if target in TERMINAL_STATUSES else None,
            failure_reason=bindparam("failure_reason", type_=Text),
            **_run_values(target),
        )
        .returning(workflows.c.id)
    )


# Built once per target: the statements are constant apart from the id and the reason.
_SET_STATUS = {target: _set_status_statement(target) for target in WorkflowStatus}
_GET = select(*_COLUMNS).where(workflows.c.id == bindparam("workflow_id"))
_GET_STATUS = select(workflows.c.status).where(workflows.c.id == bindparam("workflow_id"))
_GET_FENCE = select(workflows.c.status, workflows.c.fence).where(
    workflows.c.id == bindparam("workflow_id")
)
# The same predicate as plain SQL literals, for the fast read path (no post-compile step).
_HOLDS_WORKTREE_LITERAL = workflows.c.status.in_(
    [literal_column(f"'{status.value}'") for status in _WORKTREE_HOLDERS]
)
_GET_HOLDER = (
    select(*_COLUMNS)
    .where(workflows.c.worktree_path == bindparam("worktree_path"), _HOLDS_WORKTREE_LITERAL)
    .limit(1)
)
# Hot statements: compiled once, run on the asyncpg connection (see fast_query.py).
_FAST_GET = FastQuery(_GET)
_FAST_INSERT = FastQuery(
    insert(workflows).values({c.name: bindparam(c.name, type_=c.type) for c in _COLUMNS})
)
_FAST_SET_STATUS = {target: FastQuery(statement) for target, statement in _SET_STATUS.items()}
_FAST_GET_HOLDER = FastQuery(_GET_HOLDER)


@functools.cache
def _page_query(by_status: bool, by_worktree: bool, with_cursor: bool) -> FastQuery:
    """One list page for a combination of filters, built and compiled once per combination.

    The cursor is a row comparison: a single index range condition on (started_at, id), so a
    page deep in the list is as cheap as the first. Typed binds keep the column types'
    checks (a bare tuple would bind plain DateTime and accept naive values).
    """
    statement = list_filters(select(*_COLUMNS), by_status, by_worktree, with_cursor)
    return FastQuery(statement.order_by(*_LIST_ORDER).limit(bindparam("limit")))


def list_filters(
    statement: Select[Any], by_status: bool, by_worktree: bool, with_cursor: bool
) -> Select[Any]:
    """The list's equality filters and keyset cursor (binds `status`, `worktree_path`,
    `after_started_at`, `after_id`), shared by every list statement."""
    if by_status:
        statement = statement.where(workflows.c.status == bindparam("status"))
    if by_worktree:
        statement = statement.where(workflows.c.worktree_path == bindparam("worktree_path"))
    if with_cursor:
        cursor = tuple_(
            bindparam("after_started_at", type_=workflows.c.started_at.type),
            bindparam("after_id", type_=workflows.c.id.type),
        )
        statement = statement.where(tuple_(workflows.c.started_at, workflows.c.id) < cursor)
    return statement


def parse_workflow_id(value: WorkflowId) -> uuid.UUID:
    """A workflow id as a UUID; a malformed string raises ValueError naming the value."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"Malformed workflow id {value!r}: expected a UUID") from None


def _row_to_state(row: Mapping[Any, Any]) -> ServerExecutionState:
    """The one mapper from a `workflows` row to its model."""
    plan_cache = row["plan_cache"]
    return ServerExecutionState(
        id=row["id"],
        issue_id=row["issue_id"],
        worktree_path=row["worktree_path"],
        workflow_type=row["workflow_type"],
        profile_id=row["profile_id"],
        plan_cache=PlanCache.model_validate(plan_cache) if plan_cache is not None else None,
        issue_cache=row["issue_cache"],
        workflow_status=row["status"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        failure_reason=row["failure_reason"],
    )


def _dump_plan(plan_cache: PlanCache | None) -> dict[str, Any] | None:
    return None if plan_cache is None else plan_cache.model_dump(mode="json")


def _mutable_values(state: ServerExecutionState) -> dict[str, Any]:
    """The columns `update` writes (everything but id, issue, worktree and creation time)."""
    return {
        "status": state.workflow_status.value,
        "started_at": state.started_at,
        "completed_at": state.completed_at,
        "failure_reason": state.failure_reason,
        "workflow_type": state.workflow_type.value,
        "profile_id": state.profile_id,
        "plan_cache": _dump_plan(state.plan_cache),
        "issue_cache": state.issue_cache,
    }


@contextmanager
def _statement_errors() -> Iterator[None]:
    """Integrity errors as domain errors; a naive datetime as the column type's own error."""
    try:
        with translate_integrity_errors():
            yield
    except StatementError as exc:
        # SQLAlchemy wraps errors raised by bind processors; callers want the ValueError.
        if isinstance(exc.orig, NaiveDatetimeError):
            raise exc.orig from exc
        raise


class WorkflowRowsMixin(RepositoryBase):
    """Workflow persistence (spec data-layer.md section 4.1)."""

    """Workflow rows: the first half of `WorkflowRepository` (spec data-layer.md 4.1, 1-12)."""

    async def create(self, state: ServerExecutionState) -> None:
        """Insert a workflow row, every column (one statement).

        Raises:
            WorkflowConflictError: `state` is in_progress/blocked and its worktree already has
                a running or blocked workflow (the error carries that workflow's id).
            DuplicateKeyError: a workflow with this id exists.
            NaiveDatetimeError: a timestamp has no time zone.
        """
        values = _mutable_values(state)
        values.update(
            id=state.id,
            issue_id=state.issue_id,
            worktree_path=state.worktree_path,
            created_at=state.created_at,
        )
        try:
            with _statement_errors():
                await self._fast_all(_FAST_INSERT, values)
        except ActiveWorktreeConflict as exc:
            async with self._connect() as conn:
                raise await self._conflict(conn, state.id, state.worktree_path) from exc

    async def get(self, workflow_id: WorkflowId) -> ServerExecutionState | None:
        """The workflow with this id, or None."""
        row = await self._fast_one(_FAST_GET, {"workflow_id": parse_workflow_id(workflow_id)})
        return _row_to_state(row) if row is not None else None

    async def get_by_worktree(
        self,
        worktree_path: str,
        statuses: Collection[WorkflowStatus] = _WORKTREE_HOLDERS,
    ) -> ServerExecutionState | None:
        """The workflow on this exact worktree path whose status is one of `statuses`.

        By default the running/blocked one holding the worktree (at most one exists); empty
        `statuses` -> None without a query. When custom statuses match several rows, the
        first in list order (latest started, queued last) is returned.
        """
        wanted = frozenset(WorkflowStatus(status) for status in statuses)
        if not wanted:
            return None
        if wanted == frozenset(_WORKTREE_HOLDERS):
            holder = await self._fast_one(_FAST_GET_HOLDER, {"worktree_path": worktree_path})
            return _row_to_state(holder) if holder is not None else None
        else:
            statement = (
                select(*_COLUMNS)
                .where(workflows.c.worktree_path == bindparam("worktree_path"), _status_in(wanted))
                .order_by(*_LIST_ORDER)
                .limit(1)
            )
        async with self._connect() as conn:
            result = await conn.execute(statement, {"worktree_path": worktree_path})
            row = result.mappings().first()
        return _row_to_state(row) if row is not None else None

    async def update(self, state: ServerExecutionState) -> None:
        """Write a workflow's mutable columns without validating the transition.

        Writes status, started_at, completed_at, failure_reason, workflow_type, profile_id,
        plan_cache and issue_cache (not the id, issue, worktree or creation time). A missing
        row is a silent no-op, as before; prefer `transition` for status changes.

        Raises:
            WorkflowConflictError: the new status would give the worktree a second running or
                blocked workflow.
            NaiveDatetimeError: a timestamp has no time zone.
        """
        statement = (
            update(workflows).where(workflows.c.id == state.id).values(**_mutable_values(state))
        )
        async with self._connect() as conn:
            try:
                with _statement_errors():
                    await conn.execute(statement)
            except ActiveWorktreeConflict as exc:
                raise await self._conflict(conn, state.id) from exc

    @retry_if_connection_lost()  # idempotent: the same status again
    async def set_status(
        self,
        workflow_id: WorkflowId,
        new_status: WorkflowStatus,
        failure_reason: str | None = None,
    ) -> None:
        """Change a workflow's status atomically, with terminal precedence.

        `completed_at` becomes now for completed/failed/cancelled and NULL otherwise;
        `failure_reason` becomes the argument (None clears it). A completion overrides a
        cancel (cancelled -> completed is applied); any other write to a completed or
        cancelled workflow is absorbed silently. Failed stays resumable.

        Raises:
            WorkflowNotFoundError: no such workflow.
            InvalidStateTransitionError: the state machine forbids the change.
            WorkflowConflictError: the worktree already has a running or blocked workflow.
        """
        wid = parse_workflow_id(workflow_id)
        target = WorkflowStatus(new_status)
        statement = _SET_STATUS[target]
        params = {"workflow_id": wid, "failure_reason": failure_reason}
        # The happy path: one guarded UPDATE on the fast path.
        try:
            if await self._fast_one(_FAST_SET_STATUS[target], params) is not None:
                return
        except ActiveWorktreeConflict as exc:
            async with self._connect() as conn:
                raise await self._conflict(conn, wid) from exc
        async with self._connect() as conn:
            current: WorkflowStatus | None = None
            # Missed: read the status to say why. It may by now allow the change (someone
            # moved the row in between, e.g. resumed it): then try the guarded write again, a
            # bounded number of times.
            for _attempt in range(3):
                found = await conn.scalar(_GET_STATUS, {"workflow_id": wid})
                if found is None:
                    raise WorkflowNotFoundError(wid)
                current = WorkflowStatus(found)
                if current in _ALLOWED_SOURCES[target]:
                    if await self._guarded_write(conn, wid, statement, params) is not None:
                        return
                    continue
                if current in _ABSORBING:
                    if failure_reason is not None:
                        # The reason text may hold user data: say that one was dropped, not what.
                        logger.warning(
                            "workflow %s is already %s; %s and its failure reason were dropped",
                            wid,
                            current.value,
                            target.value,
                        )
                    else:
                        logger.debug("workflow %s is already %s; %s absorbed", wid, current, target)
                    return
                break
            raise InvalidStateTransitionError(current or target, target)

    @retry_if_connection_lost()  # a CAS: repeated after a commit it finds the row moved
    async def transition(
        self,
        workflow_id: WorkflowId,
        expected: Collection[WorkflowStatus],
        new_status: WorkflowStatus,
        *,
        failure_reason: str | None = None,
        set_started_at: bool = False,
        clear_completion: bool = False,
        fence: int | None = None,
    ) -> ServerExecutionState | None:
        """Compare-and-set a workflow's status: change it only if it is in `expected`.

        One guarded UPDATE ... RETURNING; the orchestrator's approve, reject, replan, cancel,
        resume and start-pending use it so that checking and changing happen in one step.

        Columns besides `status`: `completed_at` becomes now when `new_status` is terminal,
        NULL when `clear_completion`, else stays; `failure_reason` is written when given,
        cleared when `clear_completion`, else stays; `started_at` becomes now when
        `set_started_at`.

        Returns:
            The updated workflow, or None when it was not in one of the `expected` statuses
            (for instance because a concurrent call changed it first).

        Args:
            fence: a run's fencing number: the change applies only while the row still
                carries it (the run's owner writing; see run_leases.py).

        Raises:
            FencedOutError: `fence` is given and the row carries another one.
            InvalidStateTransitionError: an `expected` -> `new_status` pair is not a valid
                transition (checked before any query).
            ValueError: `clear_completion` with a terminal `new_status`.
            WorkflowNotFoundError: no such workflow.
            WorkflowConflictError: the worktree already has a running or blocked workflow.
        """
        wid = parse_workflow_id(workflow_id)
        target = WorkflowStatus(new_status)
        sources = frozenset(WorkflowStatus(status) for status in expected)
        invalid = sources - _ALLOWED_SOURCES[target]
        if invalid:
            raise InvalidStateTransitionError(min(invalid), target)
        if clear_completion and target in TERMINAL_STATUSES:
            raise ValueError(f"clear_completion makes no sense for terminal status {target}")
        values: dict[str, Any] = {"status": target.value, **_run_values(target)}
        if target in TERMINAL_STATUSES:
            values["completed_at"] = func.now()
        elif clear_completion:
            values["completed_at"] = None
        if failure_reason is not None or clear_completion:
            values["failure_reason"] = failure_reason
        if set_started_at:
            values["started_at"] = func.now()
        statement = (
            update(workflows)
            .where(workflows.c.id == bindparam("workflow_id"), _status_in(sources))
            .values(**values)
            .returning(*_COLUMNS)
        )
        params: dict[str, Any] = {"workflow_id": wid}
        if fence is not None:
            statement = statement.where(workflows.c.fence == bindparam("run_fence"))
            params["run_fence"] = fence
        async with self._connect() as conn:
            row = await self._guarded_write(conn, wid, statement, params)
            if row is not None:
                return _row_to_state(row)
            found = (await conn.execute(_GET_FENCE, {"workflow_id": wid})).first()
            if found is None:
                raise WorkflowNotFoundError(wid)
            if fence is not None and found.fence != fence:
                raise FencedOutError(wid, fence)
        return None

    @retry_if_connection_lost()  # idempotent
    async def update_plan_cache(
        self, workflow_id: WorkflowId, plan_cache: PlanCache, *, fence: int | None = None
    ) -> None:
        """Replace a workflow's plan cache (one UPDATE).

        Args:
            fence: a run's fencing number: write only while the row still carries it.

        Raises:
            WorkflowNotFoundError: no such workflow.
            FencedOutError: `fence` is given and the row carries another one.
        """
        wid = parse_workflow_id(workflow_id)
        statement = (
            update(workflows).where(workflows.c.id == wid).values(plan_cache=_dump_plan(plan_cache))
        )
        if fence is not None:
            statement = statement.where(workflows.c.fence == fence)
        async with self._connect() as conn:
            result = await conn.execute(statement)
            if result.rowcount == 0:
                if await conn.scalar(_GET_STATUS, {"workflow_id": wid}) is None:
                    raise WorkflowNotFoundError(wid)
                raise FencedOutError(wid, fence or 0)

    async def list_active(self, worktree_path: str | None = None) -> list[ServerExecutionState]:
        """Pending, running and blocked workflows (on `worktree_path` when given), latest
        started first, queued ones last."""
        statement = select(*_COLUMNS).where(_status_in(_ACTIVE)).order_by(*_LIST_ORDER)
        if worktree_path is not None:
            statement = statement.where(workflows.c.worktree_path == worktree_path)
        return await self._fetch(statement)

    async def count_active(self) -> int:
        """How many workflows are pending, running or blocked."""
        statement = select(func.count()).select_from(workflows).where(_status_in(_ACTIVE))
        return await self._count(statement)

    async def find_by_status(
        self, statuses: Collection[WorkflowStatus]
    ) -> list[ServerExecutionState]:
        """Workflows in any of `statuses`, oldest created first (queue order); [] for none."""
        if not statuses:
            return []
        statement = (
            select(*_COLUMNS)
            .where(_status_in(statuses))
            .order_by(workflows.c.created_at, workflows.c.id)
        )
        return await self._fetch(statement)

    async def list_workflows(
        self,
        status: WorkflowStatus | None = None,
        worktree_path: str | None = None,
        limit: int = 20,
        after_started_at: datetime | None = None,
        after_id: WorkflowId | None = None,
    ) -> list[ServerExecutionState]:
        """One page of workflows, ordered `started_at DESC NULLS LAST, id DESC`.

        Keyset pagination: the cursor (the last row of the previous page) applies only when
        both `after_started_at` and `after_id` are given. Rows with no `started_at` come last
        and cannot be reached through a cursor.

        `status` and `worktree_path` filter when given; `limit` <= 0 returns [] at once.

        Raises:
            NaiveDatetimeError: `after_started_at` has no time zone.
            ValueError: `after_id` is malformed.
        """
        if limit <= 0:
            return []
        params: dict[str, Any] = {"limit": limit}
        if status is not None:
            params["status"] = WorkflowStatus(status).value
        if worktree_path is not None:
            params["worktree_path"] = worktree_path
        with_cursor = after_started_at is not None and after_id is not None
        if after_started_at is not None and after_id is not None:
            params["after_started_at"] = after_started_at
            params["after_id"] = parse_workflow_id(after_id)
        query = _page_query(status is not None, worktree_path is not None, with_cursor)
        with _statement_errors():
            rows = await self._fast_all(query, params)
        return [_row_to_state(row) for row in rows]

    # count_workflows lives in workflow_list.py (status counts kept by triggers).

    # -- helpers --------------------------------------------------------------------------

    async def _fetch(self, statement: Any) -> list[ServerExecutionState]:
        async with self._connect() as conn:
            with _statement_errors():
                result = await conn.execute(statement)
            return [_row_to_state(row) for row in result.mappings()]

    async def _count(self, statement: Any) -> int:
        async with self._connect() as conn:
            count = await conn.scalar(statement)
        return int(count or 0)

    async def _guarded_write(
        self,
        conn: AsyncConnection,
        wid: uuid.UUID,
        statement: Update,
        params: Mapping[str, Any],
    ) -> RowMapping | None:
        """Run a guarded UPDATE ... RETURNING; the returned row, or None if none matched."""
        try:
            with _statement_errors():
                result = await conn.execute(statement, dict(params))
        except ActiveWorktreeConflict as exc:
            raise await self._conflict(conn, wid) from exc
        return result.mappings().first()

    async def _conflict(
        self, conn: AsyncConnection, wid: uuid.UUID, worktree_path: str | None = None
    ) -> WorkflowConflictError:
        """The 409 for an active-worktree violation, naming the workflow that holds the tree.

        Runs only on the failure path. Without `worktree_path`, the worktree is `wid`'s row's.
        """
        path: Any = worktree_path
        if path is None:
            path = select(workflows.c.worktree_path).where(workflows.c.id == wid).scalar_subquery()
        statement = (
            select(workflows.c.worktree_path, workflows.c.id)
            .where(workflows.c.worktree_path == path, workflows.c.id != wid, _HOLDS_WORKTREE)
            .limit(1)
        )
        async with self._usable_after_error(conn) as usable:
            row = (await usable.execute(statement)).first()
        if row is None:  # the holder finished in the meantime
            return WorkflowConflictError(
                f"The worktree of workflow {wid} already has a running or blocked workflow"
            )
        return WorkflowConflictError(row[0], row[1])

    @asynccontextmanager
    async def _usable_after_error(self, conn: AsyncConnection) -> AsyncIterator[AsyncConnection]:
        """`conn` unless a transaction on it was aborted by the error; then a fresh one."""
        if is_autocommit(conn):
            yield conn
            return
        async with self._db.connection() as fresh:
            yield fresh
