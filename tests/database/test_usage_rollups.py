"""The usage rollups and status counts kept by triggers: exact after every kind of change,
equal to a rebuild from scratch, and exact under concurrent writers on separate connections.

The reference figures are computed here in Python from the token rows themselves, by the
spec's definitions (data-layer.md 4.1, 22-24), never from the rollups.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from amelia.server.database import Database
from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.tokens import TokenUsage

D0 = date(2025, 3, 1)
MODELS = ("m-alpha", "m-beta", "m-gamma")
DERIVED = {
    "usage_workflow_days": "workflow_id, model, day",
    "usage_day_totals": "day, model",
    "usage_day_workflows": "day, prev_day",
    "usage_day_model_workflows": "day, model, prev_day, completed",
    "usage_workflow_totals": "workflow_id",
    "workflow_status_counts": "status",
}
# Counts that went back to zero may stay behind as rows; they add nothing.
ZERO_ROWS = {
    "usage_day_workflows": "workflows <> 0",
    "usage_day_model_workflows": "workflows <> 0",
    "workflow_status_counts": "workflows <> 0",
}


def dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://")


def at(day: date, hour: int = 12) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=UTC)


async def new_workflow(conn: asyncpg.Connection, status: str = "in_progress") -> uuid.UUID:
    wid = uuid.uuid4()
    await conn.execute(
        "INSERT INTO workflows (id, issue_id, worktree_path, status, completed_at) "
        "VALUES ($1, 'I', $2, $3, CASE WHEN $3 = 'completed' THEN now() END)",
        wid,
        f"/wt/{wid}",
        status,
    )
    return wid


async def add_usage(
    conn: asyncpg.Connection,
    wid: uuid.UUID,
    when: datetime,
    model: str = MODELS[0],
    cost: str = "0.5",
    tokens: tuple[int, int] = (100, 10),
) -> None:
    await conn.execute(
        "INSERT INTO token_usage (id, workflow_id, agent, model, input_tokens, output_tokens, "
        "cache_read_tokens, cost_usd, duration_ms, num_turns, timestamp) "
        "VALUES ($1, $2, 'developer', $3, $4, $5, 3, $6, 40, 2, $7)",
        uuid.uuid4(),
        wid,
        model,
        tokens[0],
        tokens[1],
        Decimal(cost),
        when,
    )


async def derived_state(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    state = {}
    for table, order in DERIVED.items():
        where = f"WHERE {ZERO_ROWS[table]}" if table in ZERO_ROWS else ""
        rows = await conn.fetch(f"SELECT * FROM {table} {where} ORDER BY {order}")
        state[table] = [tuple(row) for row in rows]
    return state


async def assert_equal_to_rebuild(conn: asyncpg.Connection) -> None:
    """What the triggers kept equals what a rebuild from the rows gives."""
    kept = await derived_state(conn)
    # Rolled back: the next step of a test goes on from the triggers' own rows.
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute("SELECT amelia_usage_rebuild()")
        rebuilt = await derived_state(conn)
    finally:
        await transaction.rollback()
    assert kept == rebuilt
    assert kept["workflow_status_counts"] == [
        tuple(row)
        for row in await conn.fetch(
            "SELECT status, count(*) FROM workflows GROUP BY status ORDER BY status"
        )
    ]


# ------------------------------------------------------------------- the reference


@dataclass(frozen=True)
class Row:
    workflow_id: uuid.UUID
    model: str
    day: date
    cost: Decimal
    tokens: int
    duration: int


async def reference_rows(
    conn: asyncpg.Connection,
) -> tuple[list[Row], dict[uuid.UUID, tuple[str, datetime | None]]]:
    tokens = [
        Row(
            r["workflow_id"],
            r["model"],
            r["timestamp"].astimezone(UTC).date(),
            r["cost_usd"],
            r["input_tokens"] + r["output_tokens"],
            r["duration_ms"],
        )
        for r in await conn.fetch("SELECT * FROM token_usage")
    ]
    flows = {
        r["id"]: (r["status"], r["completed_at"])
        for r in await conn.fetch("SELECT id, status, completed_at FROM workflows")
    }
    return tokens, flows


def reference_figures(
    tokens: list[Row],
    flows: dict[uuid.UUID, tuple[str, datetime | None]],
    first: date,
    last: date,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    inside = [t for t in tokens if first <= t.day <= last]
    length = last - first + timedelta(days=1)
    workflows = {t.workflow_id for t in inside}
    successful = sum(
        1
        for status, done in flows.values()
        if status == "completed"
        and done is not None
        and first <= done.astimezone(UTC).date() <= last
    )
    summary = {
        "total_cost_usd": float(sum((t.cost for t in inside), Decimal(0))),
        "total_workflows": len(workflows),
        "total_tokens": sum(t.tokens for t in inside),
        "total_duration_ms": sum(t.duration for t in inside),
        "previous_period_cost_usd": float(
            sum((t.cost for t in tokens if first - length <= t.day < first), Decimal(0))
        ),
        "successful_workflows": successful,
        "success_rate": successful / len(workflows) if workflows else 0.0,
    }
    per_day: dict[date, list[Row]] = defaultdict(list)
    for t in inside:
        per_day[t.day].append(t)
    trend = []
    for day in sorted(per_day):
        costs: dict[str, Decimal] = defaultdict(Decimal)
        for t in per_day[day]:
            costs[t.model] += t.cost
        trend.append(
            {
                "date": day.isoformat(),
                "cost_usd": float(sum(costs.values(), Decimal(0))),
                "workflows": len({t.workflow_id for t in per_day[day]}),
                "by_model": {
                    m: float(c) for m, c in sorted(costs.items(), key=lambda kv: (-kv[1], kv[0]))
                },
            }
        )
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    by_model = []
    for model in {t.model for t in inside}:
        rows = [t for t in inside if t.model == model]
        ids = {t.workflow_id for t in rows}
        done = sum(1 for wid in ids if flows[wid][0] == "completed")
        cost = sum((t.cost for t in rows), Decimal(0))
        by_model.append(
            (
                -cost,
                model,
                {
                    "model": model,
                    "workflows": len(ids),
                    "tokens": sum(t.tokens for t in rows),
                    "cost_usd": float(cost),
                    "trend": [
                        float(sum((t.cost for t in rows if t.day == d), Decimal(0))) for d in days
                    ],
                    "successful_workflows": done,
                    "success_rate": round(done / len(ids), 4),
                },
            )
        )
    return summary, trend, [entry for _, _, entry in sorted(by_model, key=lambda e: e[:2])]


async def assert_figures_match_reference(
    db: Database, conn: asyncpg.Connection, ranges: list[tuple[date, date]]
) -> None:
    repo = WorkflowRepository(db)
    tokens, flows = await reference_rows(conn)
    for first, last in ranges:
        summary, trend, by_model = reference_figures(tokens, flows, first, last)
        assert await repo.get_usage_summary(first, last) == summary, (first, last)
        assert await repo.get_usage_trend(first, last) == trend, (first, last)
        assert await repo.get_usage_by_model(first, last) == by_model, (first, last)


def some_ranges(rng: random.Random, span: int, count: int = 12) -> list[tuple[date, date]]:
    ranges = [(D0, D0 + timedelta(days=span)), (D0 + timedelta(days=3), D0 + timedelta(days=3))]
    for _ in range(count):
        a, b = sorted(rng.randrange(-2, span + 2) for _ in range(2))
        ranges.append((D0 + timedelta(days=a), D0 + timedelta(days=b)))
    return ranges


# ------------------------------------------------------------------------ the tests


@pytest.fixture
async def conn(database_url: str) -> Any:
    connection = await asyncpg.connect(dsn(database_url))
    try:
        yield connection
    finally:
        await connection.close()


async def test_every_kind_of_change_keeps_rollups_equal_to_a_rebuild(
    db: Database, conn: asyncpg.Connection
) -> None:
    repo = WorkflowRepository(db)
    a, b, c = [await new_workflow(conn) for _ in range(3)]
    done = await new_workflow(conn, "completed")
    # Through the repository, out of day order, several models, a day used twice.
    for day, model in [(5, MODELS[0]), (1, MODELS[1]), (9, MODELS[0]), (5, MODELS[2])]:
        await repo.save_token_usage(
            TokenUsage(
                workflow_id=a,
                agent="developer",
                model=model,
                input_tokens=10,
                output_tokens=1,
                cost_usd=Decimal("0.1"),
                timestamp=at(D0 + timedelta(days=day)),
            )
        )
    await add_usage(conn, a, at(D0 + timedelta(days=5)))  # a known (workflow, model, day)
    await add_usage(conn, done, at(D0 + timedelta(days=2)), MODELS[1], cost="9999.999999")
    # One statement, several workflows and days (a bulk insert).
    await conn.execute(
        "INSERT INTO token_usage (id, workflow_id, agent, model, input_tokens, output_tokens, "
        "cost_usd, timestamp) SELECT gen_random_uuid(), w, 'a', $3, 1, 1, 0.25, "
        "$4::timestamptz + g * interval '1 day' "
        "FROM unnest($1::uuid[]) AS w, generate_series(0, $2::int) AS g",
        [b, c, done],
        6,
        MODELS[2],
        at(D0),
    )
    await assert_equal_to_rebuild(conn)
    await assert_figures_match_reference(db, conn, some_ranges(random.Random(1), 10))

    # Updates: move a row to another day, model and workflow; change a cost.
    await conn.execute(
        "UPDATE token_usage SET timestamp = timestamp - interval '4 days', model = $2 "
        "WHERE id = (SELECT id FROM token_usage WHERE workflow_id = $1 ORDER BY timestamp "
        "DESC LIMIT 1)",
        b,
        MODELS[0],
    )
    await conn.execute(
        "UPDATE token_usage SET workflow_id = $2 WHERE id = "
        "(SELECT id FROM token_usage WHERE workflow_id = $1 ORDER BY timestamp LIMIT 1)",
        c,
        a,
    )
    await conn.execute("UPDATE token_usage SET cost_usd = cost_usd + 1 WHERE workflow_id = $1", a)
    # Status: completing and reopening change the per-model success counts.
    await conn.execute("UPDATE workflows SET status = 'completed' WHERE id = $1", a)
    await conn.execute("UPDATE workflows SET status = 'failed' WHERE id = $1", done)
    await assert_equal_to_rebuild(conn)
    await assert_figures_match_reference(db, conn, some_ranges(random.Random(2), 10))

    # Deletes: single rows, a whole day of a workflow, a workflow with its rows (cascade).
    await conn.execute(
        "DELETE FROM token_usage WHERE id = (SELECT id FROM token_usage WHERE workflow_id = $1 "
        "LIMIT 1)",
        a,
    )
    await conn.execute(
        "DELETE FROM token_usage WHERE workflow_id = $1 AND timestamp >= $2 AND timestamp < $3",
        b,
        at(D0 + timedelta(days=2), 0),
        at(D0 + timedelta(days=3), 0),
    )
    await conn.execute("DELETE FROM workflows WHERE id = ANY($1::uuid[])", [c, done])
    await assert_equal_to_rebuild(conn)
    await assert_figures_match_reference(db, conn, some_ranges(random.Random(3), 10))
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM usage_workflow_totals WHERE workflow_id = ANY($1::uuid[])",
            [c, done],
        )
        == 0
    )

    await conn.execute("TRUNCATE workflows CASCADE")
    for table in DERIVED:
        assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table


async def test_rollups_refuse_repeatable_read(conn: asyncpg.Connection) -> None:
    wid = await new_workflow(conn)
    with pytest.raises(asyncpg.RaiseError, match="READ COMMITTED"):
        async with conn.transaction(isolation="repeatable_read"):
            await add_usage(conn, wid, at(D0))
    with pytest.raises(asyncpg.RaiseError, match="READ COMMITTED"):
        async with conn.transaction(isolation="serializable"):
            await conn.execute("UPDATE workflows SET status = 'completed' WHERE id = $1", wid)
    await add_usage(conn, wid, at(D0))  # READ COMMITTED (the default) is fine
    await assert_equal_to_rebuild(conn)


async def test_concurrent_writers_keep_every_figure_exact(
    db: Database, database_url: str, conn: asyncpg.Connection
) -> None:
    """Eight connections write usage for the same few workflows at once, out of day
    order, while others complete and reopen those workflows and delete rows."""
    flows = [await new_workflow(conn) for _ in range(6)]
    workers = 8
    connections = [await asyncpg.connect(dsn(database_url)) for _ in range(workers)]
    start = asyncio.Event()
    errors: list[BaseException] = []

    async def work(index: int, worker_conn: asyncpg.Connection) -> None:
        rng = random.Random(index)
        await start.wait()
        for _ in range(70):
            wid = rng.choice(flows)
            roll = rng.random()
            try:
                if roll < 0.6:
                    day = D0 + timedelta(days=rng.randrange(8))
                    await add_usage(
                        worker_conn,
                        wid,
                        at(day, rng.randrange(24)),
                        rng.choice(MODELS),
                        cost=f"0.{rng.randrange(1, 999):03d}",
                    )
                elif roll < 0.75:
                    # One statement for several workflows, days and models: many
                    # workflow rows and counter rows, locked in key order.
                    await worker_conn.execute(
                        "INSERT INTO token_usage (id, workflow_id, agent, model, input_tokens, "
                        "output_tokens, cost_usd, timestamp) SELECT gen_random_uuid(), u.w, 'a', "
                        "($2::text[])[1 + u.i % 3], 5, 5, 0.002, $3::timestamptz + u.i * "
                        "interval '1 day' FROM unnest($1::uuid[]) WITH ORDINALITY AS u(w, i)",
                        rng.sample(flows, 3),
                        rng.sample(MODELS, 3),
                        at(D0 + timedelta(days=rng.randrange(6))),
                    )
                elif roll < 0.88:
                    await worker_conn.execute(
                        "UPDATE workflows SET status = CASE status WHEN 'completed' "
                        "THEN 'in_progress' ELSE 'completed' END WHERE id = $1",
                        wid,
                    )
                else:
                    await worker_conn.execute(
                        "DELETE FROM token_usage WHERE id = (SELECT id FROM token_usage "
                        "WHERE workflow_id = $1 ORDER BY random() LIMIT 1)",
                        wid,
                    )
            except Exception as exc:  # deadlocks, lost updates: all must be absent
                errors.append(exc)

    tasks = [asyncio.create_task(work(i, c)) for i, c in enumerate(connections)]
    start.set()
    try:
        await asyncio.gather(*tasks)
    finally:
        for c in connections:
            await c.close()
    assert errors == []
    assert await conn.fetchval("SELECT count(*) FROM token_usage") > 200
    await assert_equal_to_rebuild(conn)
    await assert_figures_match_reference(db, conn, some_ranges(random.Random(4), 8, 20))


async def test_concurrent_status_changes_keep_counts_exact(
    database_url: str, conn: asyncpg.Connection
) -> None:
    """Status changes in both directions between the same statuses, inserts and deletes,
    from six connections at once: no deadlock, and the counts equal count(*)."""
    statuses = ["pending", "failed", "cancelled", "completed"]
    ids = [await new_workflow(conn, random.Random(i).choice(statuses)) for i in range(40)]
    connections = [await asyncpg.connect(dsn(database_url)) for _ in range(6)]
    start = asyncio.Event()
    errors: list[BaseException] = []

    async def work(index: int, worker_conn: asyncpg.Connection) -> None:
        rng = random.Random(100 + index)
        await start.wait()
        for _ in range(80):
            try:
                roll = rng.random()
                if roll < 0.8:
                    await worker_conn.execute(
                        "UPDATE workflows SET status = $2 WHERE id = $1",
                        rng.choice(ids),
                        rng.choice(statuses),
                    )
                elif roll < 0.9:
                    await new_workflow(worker_conn, rng.choice(statuses))
                else:
                    await worker_conn.execute(
                        "DELETE FROM workflows WHERE id = (SELECT id FROM workflows "
                        "WHERE NOT (id = ANY($1::uuid[])) ORDER BY random() LIMIT 1)",
                        ids,
                    )
            except Exception as exc:
                errors.append(exc)

    tasks = [asyncio.create_task(work(i, c)) for i, c in enumerate(connections)]
    start.set()
    try:
        await asyncio.gather(*tasks)
    finally:
        for c in connections:
            await c.close()
    assert errors == []
    counted = await conn.fetch(
        "SELECT status, workflows FROM workflow_status_counts WHERE workflows <> 0 ORDER BY 1"
    )
    actual = await conn.fetch("SELECT status, count(*) FROM workflows GROUP BY 1 ORDER BY 1")
    assert [tuple(r) for r in counted] == [tuple(r) for r in actual]
