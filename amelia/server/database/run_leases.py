"""Who runs which workflow: claims, leases and fencing tokens in the `workflows` row.

A workflow *wants to run* when it is `in_progress`, or `pending` with `planning` set (the
architect plans a queued workflow). A process owns a run while the row carries its
`owner_id` and an unexpired `lease_expires_at`; every claim adds one to `fence`, and the
run's writes are checked against that number, so a process whose lease ran out (and whose
run another process claimed) cannot write over the new owner. Lease times come from the
database clock (`clock_timestamp()`), never from the processes' clocks.

`max_concurrent` holds across every process: claims that respect it take one transaction-
scoped advisory lock, count the live runs and claim at most the free slots, so two
processes cannot both see the last free slot. Rows are picked `FOR UPDATE SKIP LOCKED`, so
a claimer never waits behind a row another transaction is changing.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import (
    Integer,
    Update,
    and_,
    any_,
    bindparam,
    case,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

from amelia.server.cluster.fencing import RunToken
from amelia.server.database.base import RepositoryBase
from amelia.server.database.schema import WANTS_TO_RUN_SQL, workflows
from amelia.server.models.state import WorkflowStatus

# pg_advisory_xact_lock key that serialises capacity-respecting claims ("amelia" + 3).
CLAIM_LOCK_KEY = 0x616D656C69610003

_w = workflows
_NOW = func.clock_timestamp()
# Parenthesised: the text holds an OR and is combined with other conditions.
_WANTS_TO_RUN = text(f"({WANTS_TO_RUN_SQL})")
_UNOWNED = or_(_w.c.owner_id.is_(None), _w.c.lease_expires_at < _NOW)
_LIVE_RUN = and_(
    text("status = 'in_progress'"), _w.c.owner_id.is_not(None), _w.c.lease_expires_at > _NOW
)


def _lease_end() -> Any:
    return _NOW + func.make_interval(0, 0, 0, 0, 0, 0, bindparam("lease_seconds"))


def _claim_values() -> dict[str, Any]:
    """SET clause of a claim: new owner, fresh lease, next fence; counts take-overs."""
    return {
        "owner_id": bindparam("claimer"),
        "lease_expires_at": _lease_end(),
        "fence": _w.c.fence + 1,
        "takeovers": _w.c.takeovers + case((_w.c.owner_id.is_(None), 0), else_=1).cast(Integer),
    }


_RETURNING = (_w.c.id, _w.c.fence, _w.c.status, _w.c.takeovers)


def _pick(condition: Any) -> Any:
    """The oldest runnable rows matching `condition`, locked, skipping locked ones."""
    return (
        select(_w.c.id)
        .where(_WANTS_TO_RUN, _UNOWNED, condition)
        .order_by(_w.c.created_at, _w.c.id)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )


def _claim_where(condition: Any) -> Update:
    return update(_w).where(_w.c.id.in_(_pick(condition))).values(**_claim_values())


_CLAIM_RUNS = _claim_where(text("status = 'in_progress'")).returning(*_RETURNING)
_CLAIM_PLANNING = _claim_where(text("status = 'pending' AND planning")).returning(*_RETURNING)
_CLAIM_ONE = (
    update(_w)
    .where(_w.c.id == bindparam("wid"), _WANTS_TO_RUN, _UNOWNED)
    .values(**_claim_values())
    .returning(*_RETURNING)
)
_COUNT_LIVE = select(func.count()).select_from(_w).where(_LIVE_RUN)
# The claim lock is held across a few round trips: should its holder stall there (stopped,
# starved), PostgreSQL ends that session after this long, so the other processes' claims
# go on instead of queueing behind it. Long enough for several slow round trips.
CLAIM_IDLE_TIMEOUT = "10s"
_LOCK = select(
    func.set_config("idle_in_transaction_session_timeout", CLAIM_IDLE_TIMEOUT, True),
    func.pg_advisory_xact_lock(literal_column(str(CLAIM_LOCK_KEY))),
)
_RUNNING_HERE = _w.c.id == any_(bindparam("running", type_=ARRAY(PG_UUID(as_uuid=True))))
_RENEW = (
    update(_w)
    .where(_w.c.owner_id == bindparam("claimer"), _RUNNING_HERE)
    .values(lease_expires_at=_lease_end())
    .returning(_w.c.id, _w.c.fence)
)

_RELEASE_ALL = (
    update(_w)
    .where(_w.c.owner_id == bindparam("claimer"))
    .values(owner_id=None, lease_expires_at=None, fence=_w.c.fence + 1)
    .returning(_w.c.id)
)
_RELEASE_ONE = (
    update(_w)
    .where(
        _w.c.id == bindparam("wid"),
        _w.c.fence == bindparam("token_fence"),
        _w.c.owner_id == bindparam("claimer"),
    )
    .values(owner_id=None, lease_expires_at=None, fence=_w.c.fence + 1)
    .returning(_w.c.id)
)
_OWNERS = select(_w.c.owner_id, _w.c.id).where(_w.c.owner_id.is_not(None))


def _token(row: Any) -> RunToken:
    return RunToken(
        workflow_id=row.id,
        fence=int(row.fence),
        planning=row.status == WorkflowStatus.PENDING.value,
        takeovers=int(row.takeovers),
    )


class RunLeaseRepository(RepositoryBase):
    """Claims, renews and releases runs for one server process (`owner_id`)."""

    async def claim_runnable(
        self, owner_id: uuid.UUID, lease_seconds: float, max_concurrent: int, limit: int
    ) -> list[RunToken]:
        """Claim up to `limit` runs that want a process: queued planning first, then runs
        within the free slots of `max_concurrent` (counted over every process)."""
        params: dict[str, Any] = {"claimer": owner_id, "lease_seconds": lease_seconds}
        async with self._transaction() as conn:
            await conn.execute(_LOCK)
            planning = (await conn.execute(_CLAIM_PLANNING, {**params, "limit": limit})).all()
            live = int(await conn.scalar(_COUNT_LIVE) or 0)
            free = min(max(max_concurrent - live, 0), max(limit - len(planning), 0))
            runs: Sequence[Any] = ()
            if free > 0:
                runs = (await conn.execute(_CLAIM_RUNS, {**params, "limit": free})).all()
        return [_token(row) for row in (*planning, *runs)]

    async def claim(
        self,
        workflow_id: uuid.UUID,
        owner_id: uuid.UUID,
        lease_seconds: float,
        max_concurrent: int | None,
    ) -> RunToken | None:
        """Claim one workflow that wants to run; None when it does not, when another live
        process owns it, or when `max_concurrent` (if given) has no free slot."""
        params = {"wid": workflow_id, "claimer": owner_id, "lease_seconds": lease_seconds}
        async with self._transaction() as conn:
            await conn.execute(_LOCK)
            if max_concurrent is not None:
                live = int(await conn.scalar(_COUNT_LIVE) or 0)
                if live >= max_concurrent:
                    return None
            row = (await conn.execute(_CLAIM_ONE, params)).first()
        return None if row is None else _token(row)

    async def claim_transition(
        self,
        workflow_id: uuid.UUID,
        owner_id: uuid.UUID,
        lease_seconds: float,
        expected: Collection[WorkflowStatus],
        target: WorkflowStatus,
    ) -> RunToken | None:
        """Change the status (compare-and-set) and claim the run in the same statement, so
        no other process can start it before this one has prepared it (approve, replan).

        Returns:
            The token, or None when the workflow is not in one of `expected`.
        """
        statement = (
            update(_w)
            .where(
                _w.c.id == bindparam("wid"),
                _w.c.status.in_([status.value for status in expected]),
            )
            .values(
                status=target.value,
                planning=target == WorkflowStatus.PENDING,
                owner_id=bindparam("claimer"),
                lease_expires_at=_lease_end(),
                fence=_w.c.fence + 1,
                takeovers=0,
            )
            .returning(*_RETURNING)
        )
        params = {"wid": workflow_id, "claimer": owner_id, "lease_seconds": lease_seconds}
        async with self._connect() as conn:
            row = (await conn.execute(statement, params)).first()
        return None if row is None else _token(row)

    async def renew(
        self, owner_id: uuid.UUID, lease_seconds: float, running: Collection[uuid.UUID]
    ) -> dict[uuid.UUID, int]:
        """Extend the leases of the runs `owner_id` still owns among `running` (the runs it
        is executing or preparing); {workflow id: fence} of those renewed.

        Only runs named in `running` are renewed: a row the process owns but no longer runs
        lets its lease run out, and then any process can claim it.
        """
        params = {"claimer": owner_id, "lease_seconds": lease_seconds, "running": list(running)}
        async with self._connect() as conn:
            rows = (await conn.execute(_RENEW, params)).all()
        return {row.id: int(row.fence) for row in rows}

    async def release(self, owner_id: uuid.UUID, token: RunToken) -> bool:
        """Give up a run without changing its status, if `owner_id` still holds it with
        `token` (another process may claim it at once); False when it did not."""
        params = {"wid": token.workflow_id, "token_fence": token.fence, "claimer": owner_id}
        async with self._connect() as conn:
            return (await conn.execute(_RELEASE_ONE, params)).first() is not None

    async def release_all(self, owner_id: uuid.UUID) -> list[uuid.UUID]:
        """Give up every run of `owner_id` (clean shutdown): others can claim them at once."""
        async with self._connect() as conn:
            rows = (await conn.execute(_RELEASE_ALL, {"claimer": owner_id})).all()
        return [row.id for row in rows]

    async def count_live_runs(self) -> int:
        """Runs (in_progress, owned, lease unexpired) over every process."""
        async with self._connect() as conn:
            return int(await conn.scalar(_COUNT_LIVE) or 0)

    async def owned_runs(self) -> dict[uuid.UUID, list[uuid.UUID]]:
        """{owner process id: [workflow ids]} of every owned run."""
        async with self._connect() as conn:
            rows = (await conn.execute(_OWNERS)).all()
        owned: dict[uuid.UUID, list[uuid.UUID]] = {}
        for row in rows:
            owned.setdefault(row.owner_id, []).append(row.id)
        return owned


WORK_CHANNEL = "amelia_work"
CONTROL_CHANNEL = "amelia_control"
_IS_PLANNING = select(_w.c.planning).where(_w.c.id == bindparam("wid"))


class RunSignals(RepositoryBase):
    """Notifications between processes: work to claim, commands for a run's owner."""

    async def announce_work(self) -> None:
        """Wake the claimers of every process (a run ended, or a run waits for a slot)."""
        async with self._connect() as conn:
            await conn.execute(select(func.pg_notify(WORK_CHANNEL, "")))

    async def announce_cancel(self, workflow_id: uuid.UUID) -> None:
        """Tell the process that owns `workflow_id`'s run to stop it now."""
        async with self._connect() as conn:
            await conn.execute(select(func.pg_notify(CONTROL_CHANNEL, f"cancel:{workflow_id}")))

    async def is_planning(self, workflow_id: uuid.UUID) -> bool:
        """Whether the architect is (asked to be) planning this queued workflow."""
        async with self._connect() as conn:
            return bool(await conn.scalar(_IS_PLANNING, {"wid": workflow_id}))
