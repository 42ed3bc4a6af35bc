"""Token usage: the models and pricing, and `WorkflowRepository`'s token-usage methods."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import func, insert, select
from sqlalchemy.exc import DBAPIError

from amelia.server.database import Database, schema
from amelia.server.database.errors import DuplicateKeyError, ReferenceNotFoundError
from amelia.server.database.repository import WorkflowRepository
from amelia.server.exceptions import WorkflowNotFoundError
from amelia.server.models.tokens import (
    DEFAULT_PRICING,
    MODEL_PRICING,
    TokenSummary,
    TokenUsage,
    calculate_token_cost,
    pricing_for,
)
from tests.statements import count_statements

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


async def add_workflow(db: Database) -> uuid.UUID:
    wid = uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.workflows).values(id=wid, issue_id="I-1", worktree_path=f"/wt/{wid}")
        )
    return wid


def usage(workflow_id: uuid.UUID, **fields: Any) -> TokenUsage:
    values: dict[str, Any] = {
        "workflow_id": workflow_id,
        "agent": "developer",
        "model": "claude-sonnet-4-5",
        "input_tokens": 1000,
        "output_tokens": 200,
        "cost_usd": Decimal("0.012345"),
        "timestamp": T0,
    }
    values.update(fields)
    return TokenUsage(**values)


async def row_count(db: Database) -> int:
    async with db.connection() as conn:
        count = await conn.scalar(select(func.count()).select_from(schema.token_usage))
    return int(count or 0)


# --- models and pricing -------------------------------------------------------------------


def test_cost_is_a_decimal_in_python_and_a_float_in_json() -> None:
    item = usage(uuid.uuid4(), cost_usd=Decimal("1.5"))
    assert isinstance(item.cost_usd, Decimal)
    assert item.model_dump()["cost_usd"] == Decimal("1.500000")
    dumped = item.model_dump(mode="json")
    assert dumped["cost_usd"] == 1.5
    assert isinstance(dumped["cost_usd"], float)
    assert '"cost_usd":1.5' in item.model_dump_json()
    assert isinstance(dumped["id"], str)
    assert TokenUsage.model_validate_json(item.model_dump_json()) == item


def test_cost_is_kept_at_the_column_precision() -> None:
    assert usage(uuid.uuid4(), cost_usd=0.1).cost_usd == Decimal("0.100000")
    assert usage(uuid.uuid4(), cost_usd="0.0000004").cost_usd == Decimal("0.000000")
    assert usage(uuid.uuid4(), cost_usd="0.0000005").cost_usd == Decimal("0.000001")


def test_defaults() -> None:
    item = TokenUsage(
        workflow_id=uuid.uuid4(),
        agent="architect",
        input_tokens=1,
        output_tokens=2,
        cost_usd=Decimal(0),
        timestamp=T0,
    )
    assert isinstance(item.id, uuid.UUID)
    assert item.id != usage(uuid.uuid4()).id
    assert item.model == "claude-sonnet-4-5-20251101"
    assert (item.cache_read_tokens, item.cache_creation_tokens) == (0, 0)
    assert (item.duration_ms, item.num_turns) == (0, 1)


@pytest.mark.parametrize(
    "fields",
    [
        {"input_tokens": -1},
        {"output_tokens": -1},
        {"cache_read_tokens": -1},
        {"cache_creation_tokens": -1},
        {"duration_ms": -1},
        {"num_turns": 0},
        {"cost_usd": Decimal("-0.000001")},
        {"cost_usd": "NaN"},
        {"cost_usd": float("inf")},
        {"timestamp": datetime(2025, 1, 1)},  # naive
    ],
)
def test_invalid_values_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        usage(uuid.uuid4(), **fields)


def test_from_usages_sums_cost_exactly_and_skips_cache_creation() -> None:
    wid = uuid.uuid4()
    rows = [
        usage(wid, cost_usd=Decimal("0.1"), cache_read_tokens=10, cache_creation_tokens=7),
        usage(wid, cost_usd=Decimal("0.1"), duration_ms=5, num_turns=3),
        usage(wid, cost_usd=Decimal("0.1"), input_tokens=1, output_tokens=2),
    ]
    summary = TokenSummary.from_usages(rows)
    assert 0.1 + 0.1 + 0.1 != 0.3  # why the sum must be decimal
    assert summary.total_cost_usd == 0.3
    assert summary.total_input_tokens == 2001
    assert summary.total_output_tokens == 402
    assert summary.total_cache_read_tokens == 10
    assert summary.total_duration_ms == 5
    assert summary.total_turns == 5
    assert summary.breakdown == rows
    assert not hasattr(summary, "total_cache_creation_tokens")
    assert TokenSummary.from_usages([]) == TokenSummary()


def test_calculate_token_cost_prices_cache_reads_and_writes() -> None:
    item = usage(
        uuid.uuid4(),
        model="claude-sonnet-4-5",
        input_tokens=1_000_000,  # includes the cache reads
        cache_read_tokens=400_000,
        cache_creation_tokens=100_000,
        output_tokens=10_000,
    )
    # 600k x $3 + 400k x $0.30 + 100k x $3.75 + 10k x $15, per million
    assert calculate_token_cost(item) == Decimal("2.445000")
    small = usage(uuid.uuid4(), model="gpt-5-mini", input_tokens=7, output_tokens=3)
    assert calculate_token_cost(small) == Decimal("0.000008")  # 7 x 0.25 + 3 x 2 = 7.75e-6


def test_unknown_models_use_the_documented_default_rate() -> None:
    assert pricing_for("some-new-model") == DEFAULT_PRICING == MODEL_PRICING["claude-sonnet-4-5"]
    item = usage(uuid.uuid4(), model="some-new-model", input_tokens=1000, output_tokens=1000)
    assert calculate_token_cost(item) == Decimal("0.018000")


def test_pricing_resolves_dated_and_prefixed_ids() -> None:
    assert pricing_for("claude-opus-4-1-20250805") == MODEL_PRICING["claude-opus-4-1"]
    assert pricing_for("anthropic/claude-haiku-4.5") == MODEL_PRICING["claude-haiku-4-5"]
    assert pricing_for("openai/gpt-4.1") == MODEL_PRICING["gpt-4.1"]
    assert pricing_for("claude-sonnet-4-5-20251101") == MODEL_PRICING["claude-sonnet-4-5"]
    with pytest.raises(TypeError):
        MODEL_PRICING["x"] = DEFAULT_PRICING  # type: ignore[index]


# --- save_token_usage / get_token_usage ---------------------------------------------------


async def test_save_and_read_back_every_field(db: Database) -> None:
    repo = WorkflowRepository(db)
    wid = await add_workflow(db)
    item = usage(
        wid,
        agent="reviewer",
        model="gpt-5",
        input_tokens=12_345,
        output_tokens=678,
        cache_read_tokens=9_000,
        cache_creation_tokens=321,
        cost_usd=Decimal("1.234567"),
        duration_ms=45_000,
        num_turns=7,
        timestamp=datetime(2025, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5))),
    )
    await repo.save_token_usage(item)
    [stored] = await repo.get_token_usage(wid)
    assert stored == item
    assert stored.timestamp.tzinfo == UTC
    assert stored.timestamp == datetime(2025, 3, 2, 4, 30, tzinfo=UTC)


async def test_rows_come_back_oldest_first(db: Database) -> None:
    repo = WorkflowRepository(db)
    wid = await add_workflow(db)
    other = await add_workflow(db)
    times = [T0 + timedelta(minutes=m) for m in (30, 0, 45, 15)]
    for at in times:
        await repo.save_token_usage(usage(wid, timestamp=at))
    await repo.save_token_usage(usage(other, timestamp=T0 - timedelta(days=1)))
    rows = await repo.get_token_usage(wid)
    assert [r.timestamp for r in rows] == sorted(times)
    assert {r.workflow_id for r in rows} == {wid}


async def test_unknown_workflow_has_no_usage(db: Database) -> None:
    repo = WorkflowRepository(db)
    assert await repo.get_token_usage(uuid.uuid4()) == []
    assert await repo.get_token_summary(uuid.uuid4()) is None


async def test_saving_for_an_unknown_workflow_raises_not_found(db: Database) -> None:
    repo = WorkflowRepository(db)
    missing = uuid.uuid4()
    with pytest.raises(WorkflowNotFoundError) as caught:
        await repo.save_token_usage(usage(missing))
    assert caught.value.workflow_id == missing
    assert isinstance(caught.value.__cause__, ReferenceNotFoundError)
    assert await row_count(db) == 0


async def test_duplicate_id_is_a_duplicate_key(db: Database) -> None:
    repo = WorkflowRepository(db)
    item = usage(await add_workflow(db))
    await repo.save_token_usage(item)
    with pytest.raises(DuplicateKeyError):
        await repo.save_token_usage(item)
    assert await row_count(db) == 1


@pytest.mark.parametrize("cost", ["9999.999999", "0.000001", "0"])
async def test_costs_at_the_column_limits_round_trip_exactly(db: Database, cost: str) -> None:
    repo = WorkflowRepository(db)
    wid = await add_workflow(db)
    await repo.save_token_usage(usage(wid, cost_usd=Decimal(cost)))
    [stored] = await repo.get_token_usage(wid)
    assert isinstance(stored.cost_usd, Decimal)
    assert stored.cost_usd == Decimal(cost)


@pytest.mark.parametrize("cost", ["10000", "9999.9999995", "123456.5"])
async def test_a_cost_the_column_cannot_hold_is_a_clear_value_error(
    db: Database, cost: str
) -> None:
    repo = WorkflowRepository(db)
    wid = await add_workflow(db)
    with pytest.raises(ValueError, match=r"9999\.999999") as caught:
        await repo.save_token_usage(usage(wid, cost_usd=Decimal(cost)))
    assert not isinstance(caught.value, DBAPIError)
    assert await row_count(db) == 0


async def test_a_cost_changed_after_validation_is_still_checked(db: Database) -> None:
    repo = WorkflowRepository(db)
    wid = await add_workflow(db)
    item = usage(wid)
    item.cost_usd = Decimal("-1")  # models validate on construction only
    with pytest.raises(ValueError, match="cost_usd"):
        await repo.save_token_usage(item)
    copied = usage(wid).model_copy(update={"cost_usd": 0.1234567})  # no validation either
    await repo.save_token_usage(copied)
    [stored] = await repo.get_token_usage(wid)
    assert stored.cost_usd == Decimal("0.123457")


async def test_null_cache_columns_read_as_zero(db: Database) -> None:
    wid = await add_workflow(db)
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.token_usage).values(
                id=uuid.uuid4(),
                workflow_id=wid,
                agent="developer",
                model="m",
                input_tokens=1,
                output_tokens=1,
                cache_read_tokens=None,
                cache_creation_tokens=None,
                cost_usd=Decimal("0.5"),
                timestamp=T0,
            )
        )
    [stored] = await WorkflowRepository(db).get_token_usage(wid)
    assert (stored.cache_read_tokens, stored.cache_creation_tokens) == (0, 0)


# --- summaries ----------------------------------------------------------------------------


async def test_summary_totals_and_breakdown(db: Database) -> None:
    repo = WorkflowRepository(db)
    wid = await add_workflow(db)
    first = usage(wid, cost_usd=Decimal("9999.999999"), timestamp=T0 + timedelta(seconds=1))
    second = usage(
        wid,
        cost_usd=Decimal("0.000001"),
        input_tokens=5,
        output_tokens=6,
        cache_read_tokens=4,
        cache_creation_tokens=99,
        duration_ms=70,
        num_turns=2,
        timestamp=T0,
    )
    await repo.save_token_usage(first)
    await repo.save_token_usage(second)
    with count_statements(db) as statements:
        summary = await repo.get_token_summary(wid)
    assert len(statements) == 1
    assert summary is not None
    assert summary.total_cost_usd == 10000.0
    assert summary.total_input_tokens == 1005
    assert summary.total_output_tokens == 206
    assert summary.total_cache_read_tokens == 4
    assert summary.total_duration_ms == 70
    assert summary.total_turns == 3
    assert summary.breakdown == [second, first]


async def test_batch_of_no_ids_does_not_touch_the_database(database_url: str) -> None:
    never_connected = Database(database_url)
    assert await WorkflowRepository(never_connected).get_token_summaries_batch([]) == {}


async def test_batch_keys_every_requested_id_in_one_query(db: Database) -> None:
    repo = WorkflowRepository(db)
    busy, idle, other = [await add_workflow(db) for _ in range(3)]
    unknown = uuid.uuid4()
    for minutes, cost in ((10, "0.1"), (0, "0.1"), (5, "0.1")):
        await repo.save_token_usage(
            usage(busy, cost_usd=Decimal(cost), timestamp=T0 + timedelta(minutes=minutes))
        )
    await repo.save_token_usage(usage(other, cost_usd=Decimal("2.5"), output_tokens=9))
    requested = [unknown, busy, idle, other, busy]
    with count_statements(db) as statements:
        result = await repo.get_token_summaries_batch(requested)
    assert len(statements) == 1
    assert list(result) == [unknown, busy, idle, other]
    assert result[unknown] is None
    assert result[idle] is None
    busy_summary = result[busy]
    assert busy_summary is not None
    assert busy_summary.total_cost_usd == 0.3
    assert [u.timestamp for u in busy_summary.breakdown] == [
        T0,
        T0 + timedelta(minutes=5),
        T0 + timedelta(minutes=10),
    ]
    assert busy_summary == await repo.get_token_summary(busy)
    other_summary = result[other]
    assert other_summary is not None
    assert other_summary.total_output_tokens == 9
    assert [u.workflow_id for u in other_summary.breakdown] == [other]


async def test_batch_statement_is_the_same_for_any_number_of_ids(db: Database) -> None:
    repo = WorkflowRepository(db)
    with count_statements(db) as statements:
        await repo.get_token_summaries_batch([uuid.uuid4()])
        await repo.get_token_summaries_batch([uuid.uuid4() for _ in range(20)])
    assert len(statements) == 2
    assert statements[0] == statements[1]


async def test_usage_is_deleted_with_its_workflow(db: Database) -> None:
    repo = WorkflowRepository(db)
    wid = await add_workflow(db)
    await repo.save_token_usage(usage(wid))
    async with db.connection() as conn:
        await conn.execute(schema.workflows.delete().where(schema.workflows.c.id == wid))
    assert await repo.get_token_usage(wid) == []
