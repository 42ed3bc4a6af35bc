"""Usage analytics: summary, daily trend and per-model figures over UTC days."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, insert, select, text

from amelia.server.database import Database, schema
from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.usage import (
    UsageByModel,
    UsageResponse,
    UsageSummary,
    UsageTrendPoint,
)
from tests.statements import count_statements


def at(day: date, hour: int = 12, minute: int = 0, microsecond: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute, 0, microsecond), tzinfo=UTC)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


D1 = date(2025, 3, 10)
D2 = date(2025, 3, 11)
D3 = date(2025, 3, 12)


class Seed:
    """Inserts workflows and token rows directly (Core inserts, one statement per call)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def workflow(
        self, status: str = "pending", completed_at: datetime | None = None
    ) -> uuid.UUID:
        wid = uuid.uuid4()
        async with self.db.connection() as conn:
            await conn.execute(
                insert(schema.workflows).values(
                    id=wid,
                    issue_id="I-1",
                    worktree_path=f"/wt/{wid}",
                    status=status,
                    completed_at=completed_at,
                )
            )
        return wid

    async def usage(
        self,
        workflow_id: uuid.UUID,
        timestamp: datetime,
        cost: str = "1",
        model: str = "model-a",
        input_tokens: int = 100,
        output_tokens: int = 10,
        duration_ms: int = 1000,
    ) -> None:
        async with self.db.connection() as conn:
            await conn.execute(
                insert(schema.token_usage).values(
                    id=uuid.uuid4(),
                    workflow_id=workflow_id,
                    agent="developer",
                    model=model,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    cost_usd=Decimal(cost),
                    duration_ms=duration_ms,
                    timestamp=timestamp,
                )
            )


@pytest.fixture
def seed(db: Database) -> Seed:
    return Seed(db)


@pytest.fixture
def repo(db: Database) -> WorkflowRepository:
    return WorkflowRepository(db)


ZERO_SUMMARY = {
    "total_cost_usd": 0.0,
    "total_workflows": 0,
    "total_tokens": 0,
    "total_duration_ms": 0,
    "previous_period_cost_usd": 0.0,
    "successful_workflows": 0,
    "success_rate": 0.0,
}


async def test_no_usage_gives_zeros_and_empty_lists(repo: WorkflowRepository) -> None:
    summary = await repo.get_usage_summary(D1, D3)
    assert summary == ZERO_SUMMARY
    assert isinstance(summary["total_cost_usd"], float)
    assert await repo.get_usage_trend(D1, D3) == []
    assert await repo.get_usage_by_model(D1, D3) == []


async def test_range_with_no_rows_inside(repo: WorkflowRepository, seed: Seed) -> None:
    wid = await seed.workflow()
    await seed.usage(wid, midnight(D1) - timedelta(microseconds=1))
    await seed.usage(wid, midnight(D3 + timedelta(days=1)))
    summary = await repo.get_usage_summary(D1, D3)
    assert summary["total_cost_usd"] == 0.0
    assert summary["total_workflows"] == 0
    assert summary["previous_period_cost_usd"] == 1.0
    assert await repo.get_usage_trend(D1, D3) == []
    assert await repo.get_usage_by_model(D1, D3) == []


async def test_end_before_start_is_an_empty_range(repo: WorkflowRepository, seed: Seed) -> None:
    wid = await seed.workflow()
    await seed.usage(wid, at(D1))
    await seed.usage(wid, at(D2))
    assert await repo.get_usage_summary(D2, D1) == ZERO_SUMMARY
    assert await repo.get_usage_trend(D2, D1) == []
    assert await repo.get_usage_by_model(D2, D1) == []


async def test_summary_counts_exactly_the_utc_days_of_the_range(
    repo: WorkflowRepository, seed: Seed
) -> None:
    a, b, c = [await seed.workflow() for _ in range(3)]
    await seed.usage(a, midnight(D1), cost="0.1", input_tokens=1, output_tokens=2, duration_ms=5)
    await seed.usage(a, at(D2), cost="0.1", input_tokens=10, output_tokens=20, duration_ms=50)
    last_instant = midnight(D3 + timedelta(days=1)) - timedelta(microseconds=1)
    await seed.usage(b, last_instant, cost="0.1", input_tokens=100, output_tokens=200)
    # Outside: one microsecond before the range, and the first instant after it.
    await seed.usage(c, midnight(D1) - timedelta(microseconds=1), cost="5")
    await seed.usage(c, midnight(D3 + timedelta(days=1)), cost="7")
    summary = await repo.get_usage_summary(D1, D3)
    assert summary["total_cost_usd"] == 0.3  # exact decimal sum, not 0.30000000000000004
    assert summary["total_workflows"] == 2
    assert summary["total_tokens"] == 333
    assert summary["total_duration_ms"] == 1055
    assert summary["previous_period_cost_usd"] == 5.0


async def test_summary_sums_costs_at_the_column_limits_exactly(
    repo: WorkflowRepository, seed: Seed
) -> None:
    wid = await seed.workflow()
    await seed.usage(wid, at(D1), cost="9999.999999")
    await seed.usage(wid, at(D1, 13), cost="0.000001")
    await seed.usage(wid, at(D1, 14), cost="0.000001")
    summary = await repo.get_usage_summary(D1, D1)
    assert summary["total_cost_usd"] == float(Decimal("10000.000001"))
    [point] = await repo.get_usage_trend(D1, D1)
    assert point["cost_usd"] == float(Decimal("10000.000001"))
    [entry] = await repo.get_usage_by_model(D1, D1)
    assert entry["cost_usd"] == entry["trend"][0] == float(Decimal("10000.000001"))


async def test_previous_period_is_the_same_length_just_before(
    repo: WorkflowRepository, seed: Seed
) -> None:
    wid = await seed.workflow()
    # Range D2..D3 (2 days): the previous period is [D2 - 2 days, D2).
    previous_start = midnight(D2 - timedelta(days=2))
    await seed.usage(wid, previous_start - timedelta(microseconds=1), cost="100")  # too early
    await seed.usage(wid, previous_start, cost="0.000001")
    await seed.usage(wid, midnight(D2) - timedelta(microseconds=1), cost="0.25")
    await seed.usage(wid, midnight(D2), cost="3")  # in the range itself
    summary = await repo.get_usage_summary(D2, D3)
    assert summary["previous_period_cost_usd"] == 0.250001
    assert summary["total_cost_usd"] == 3.0


async def test_successful_workflows_are_those_completed_on_a_day_of_the_range(
    repo: WorkflowRepository, seed: Seed
) -> None:
    end_of_range = midnight(D2 + timedelta(days=1))
    counted = [
        await seed.workflow("completed", midnight(D1)),
        await seed.workflow("completed", end_of_range - timedelta(microseconds=1)),
    ]
    await seed.workflow("completed", midnight(D1) - timedelta(microseconds=1))
    await seed.workflow("completed", end_of_range)
    await seed.workflow("failed", at(D1))
    await seed.workflow("cancelled", at(D2))
    for wid in counted:
        await seed.usage(wid, at(D1))
    summary = await repo.get_usage_summary(D1, D2)
    assert summary["successful_workflows"] == 2
    assert summary["total_workflows"] == 2
    assert summary["success_rate"] == 1.0


async def test_success_rate_is_not_clamped_and_is_zero_without_usage(
    repo: WorkflowRepository, seed: Seed
) -> None:
    for _ in range(3):
        await seed.workflow("completed", at(D1))
    assert (await repo.get_usage_summary(D1, D1))["success_rate"] == 0.0  # 3 / no usage
    user = await seed.workflow("in_progress")
    await seed.usage(user, at(D1))
    await seed.usage(user, at(D1, 13))
    summary = await repo.get_usage_summary(D1, D1)
    assert summary["successful_workflows"] == 3
    assert summary["total_workflows"] == 1
    assert summary["success_rate"] == 3.0


async def test_trend_has_one_entry_per_day_with_usage(repo: WorkflowRepository, seed: Seed) -> None:
    a, b = await seed.workflow(), await seed.workflow()
    await seed.usage(a, at(D1, 1), cost="0.1", model="cheap")
    await seed.usage(a, at(D1, 2), cost="0.1", model="pricey")
    await seed.usage(b, at(D1, 3), cost="0.1", model="pricey")
    await seed.usage(a, at(D3), cost="2", model="cheap")  # nothing on D2
    trend = await repo.get_usage_trend(D1, D3)
    assert [p["date"] for p in trend] == ["2025-03-10", "2025-03-12"]
    first, last = trend
    assert first["cost_usd"] == 0.3
    assert first["workflows"] == 2
    assert list(first["by_model"].items()) == [("pricey", 0.2), ("cheap", 0.1)]
    assert last == {
        "date": "2025-03-12",
        "cost_usd": 2.0,
        "workflows": 1,
        "by_model": {"cheap": 2.0},
    }


async def test_trend_by_model_is_ordered_by_cost_descending(
    repo: WorkflowRepository, seed: Seed
) -> None:
    wid = await seed.workflow()
    costs = {"m-low": "0.5", "m-high": "3", "m-mid": "1.25", "a-tie": "1", "b-tie": "1"}
    for model, cost in costs.items():
        await seed.usage(wid, at(D1), cost=cost, model=model)
    [point] = await repo.get_usage_trend(D1, D1)
    assert list(point["by_model"]) == ["m-high", "m-mid", "a-tie", "b-tie", "m-low"]
    assert point["workflows"] == 1


async def test_trend_across_month_and_year_ends(repo: WorkflowRepository, seed: Seed) -> None:
    wid = await seed.workflow()
    days = [date(2024, 12, 31), date(2025, 1, 1), date(2024, 2, 28), date(2024, 2, 29)]
    for day in days:
        await seed.usage(wid, at(day, 23, 59))
    trend = await repo.get_usage_trend(date(2024, 2, 28), date(2025, 1, 1))
    assert [p["date"] for p in trend] == ["2024-02-28", "2024-02-29", "2024-12-31", "2025-01-01"]
    assert [p["cost_usd"] for p in trend] == [1.0] * 4


async def test_by_model_totals_order_and_success(repo: WorkflowRepository, seed: Seed) -> None:
    old = at(D1) - timedelta(days=300)  # completion long before the range still counts
    done = [await seed.workflow("completed", old) for _ in range(2)]
    failed = await seed.workflow("failed", at(D1))
    running = await seed.workflow("in_progress")
    # model-a: 3 workflows (2 completed), two rows of one workflow.
    await seed.usage(done[0], at(D1), cost="1", input_tokens=10, output_tokens=1)
    await seed.usage(done[0], at(D2), cost="1", input_tokens=10, output_tokens=1)
    await seed.usage(done[1], at(D2), cost="1", input_tokens=10, output_tokens=1)
    await seed.usage(failed, at(D2), cost="1", input_tokens=10, output_tokens=1)
    # model-b: more expensive, 3 workflows (1 completed) -> 0.3333.
    for wid in (done[0], failed, running):
        await seed.usage(wid, at(D3), cost="2.5", model="model-b", input_tokens=7, output_tokens=3)
    # model-c: cheapest, no completed workflow.
    await seed.usage(running, at(D1), cost="0.000001", model="model-c")
    entries = await repo.get_usage_by_model(D1, D3)
    assert [e["model"] for e in entries] == ["model-b", "model-a", "model-c"]
    b, a, c = entries
    assert b == {
        "model": "model-b",
        "workflows": 3,
        "tokens": 30,
        "cost_usd": 7.5,
        "trend": [0.0, 0.0, 7.5],
        "successful_workflows": 1,
        "success_rate": 0.3333,
    }
    assert a["workflows"] == 3
    assert a["tokens"] == 44
    assert a["cost_usd"] == 4.0
    assert a["trend"] == [1.0, 3.0, 0.0]
    assert a["successful_workflows"] == 2
    assert a["success_rate"] == 0.6667
    assert c["success_rate"] == 0.0
    assert c["successful_workflows"] == 0
    assert c["trend"] == [0.000001, 0.0, 0.0]


async def test_by_model_trend_is_zero_filled_for_every_day(
    repo: WorkflowRepository, seed: Seed
) -> None:
    wid = await seed.workflow()
    start, end = date(2025, 1, 30), date(2025, 3, 2)  # spans two month ends
    await seed.usage(wid, at(date(2025, 2, 1)), cost="0.5")
    await seed.usage(wid, at(date(2025, 3, 1)), cost="0.25")
    [entry] = await repo.get_usage_by_model(start, end)
    assert len(entry["trend"]) == (end - start).days + 1 == 32
    expected = [0.0] * 32
    expected[2], expected[30] = 0.5, 0.25
    assert entry["trend"] == expected


async def test_single_day_range(repo: WorkflowRepository, seed: Seed) -> None:
    wid = await seed.workflow()
    await seed.usage(wid, at(D1, 0), cost="0.5")
    await seed.usage(wid, at(D2, 0), cost="9")
    [entry] = await repo.get_usage_by_model(D1, D1)
    assert entry["trend"] == [0.5]
    [point] = await repo.get_usage_trend(D1, D1)
    assert point["date"] == "2025-03-10"
    assert (await repo.get_usage_summary(D1, D1))["total_cost_usd"] == 0.5


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "Pacific/Honolulu"])
async def test_days_are_utc_days_in_any_session_time_zone(
    db: Database, seed: Seed, zone: str
) -> None:
    wid = await seed.workflow("completed", at(D2, 23, 30))
    late = await seed.workflow()
    await seed.usage(wid, at(D1, 23, 30), cost="1", model="late")  # D2 in Kiritimati
    await seed.usage(wid, at(D2, 0, 30), cost="2", model="early")  # D1 in Honolulu
    await seed.usage(late, at(D2, 23, 30), cost="4", model="late")
    async with db.connection() as conn:
        await conn.execute(select(func.set_config("TimeZone", zone, False)))
        assert await conn.scalar(text("SHOW TIME ZONE")) == zone
        try:
            repo = WorkflowRepository(db).bind(conn)
            trend = await repo.get_usage_trend(D1, D2)
            by_model = await repo.get_usage_by_model(D1, D2)
            summary = await repo.get_usage_summary(D2, D2)
            first_day = await repo.get_usage_summary(D1, D1)
        finally:
            await conn.execute(text("RESET TIME ZONE"))
    assert [(p["date"], p["cost_usd"]) for p in trend] == [("2025-03-10", 1.0), ("2025-03-11", 6.0)]
    assert {e["model"]: e["trend"] for e in by_model} == {"late": [1.0, 4.0], "early": [0.0, 2.0]}
    assert summary["total_cost_usd"] == 6.0
    assert summary["successful_workflows"] == 1
    assert summary["previous_period_cost_usd"] == 1.0
    assert first_day["total_cost_usd"] == 1.0
    assert first_day["successful_workflows"] == 0


async def test_each_method_is_one_statement_and_fits_the_api_models(
    db: Database, repo: WorkflowRepository, seed: Seed
) -> None:
    wid = await seed.workflow("completed", at(D1))
    await seed.usage(wid, at(D1), cost="0.123456", model="model-a")
    await seed.usage(wid, at(D2), cost="1", model="model-b")
    with count_statements(db) as statements:
        summary = await repo.get_usage_summary(D1, D3)
        trend = await repo.get_usage_trend(D1, D3)
        by_model = await repo.get_usage_by_model(D1, D3)
    assert len(statements) == 3
    response = UsageResponse(
        summary=UsageSummary.model_validate(summary),
        trend=[UsageTrendPoint.model_validate(p) for p in trend],
        by_model=[UsageByModel.model_validate(e) for e in by_model],
    )
    payload = response.model_dump(mode="json")
    assert payload["summary"]["total_cost_usd"] == 1.123456
    assert payload["summary"]["cache_hit_rate"] is None
    assert [p["date"] for p in payload["trend"]] == ["2025-03-10", "2025-03-11"]
    assert [e["model"] for e in payload["by_model"]] == ["model-b", "model-a"]
    assert all(isinstance(v, float) for e in by_model for v in e["trend"])
