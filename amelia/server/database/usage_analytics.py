"""Usage analytics of `WorkflowRepository`: the summary, daily trend and per-model figures.

Days are UTC days whatever the session's time zone: a day D covers the half-open range
[D 00:00 UTC, D+1 00:00 UTC). Each method is one statement. Sums stay NUMERIC in SQL and
become floats only in the returned dicts.

The statements read the rollups that triggers keep exact on every token_usage write
(schema.py, revision 5d1e0c7a9b21), never the token rows themselves, so their cost follows
the number of days and models in the range, not the number of rows:
- `usage_day_totals`: sums per (day, model), for totals, trends and the previous period;
- `usage_day_workflows` / `usage_day_model_workflows`: distinct-workflow counts. Each
  workflow counts once per day it has usage, keyed by its previous day with usage, so the
  workflows with usage in [first, last] are those counted on a day of the range whose
  previous day is before `first` (each exactly once: on its first day in the range). The
  per-model counts are also split by whether the workflow is completed now.
The summary's successful workflows are an index-only count of completed workflows by
completion time (`ix_workflows__completed_at__completed`).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Date,
    Select,
    and_,
    bindparam,
    column,
    func,
    literal_column,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.sql.selectable import TableValuedAlias

from amelia.server.database.base import RepositoryBase
from amelia.server.database.schema import (
    usage_day_model_workflows,
    usage_day_totals,
    usage_day_workflows,
    workflows,
)
from amelia.server.database.types import UTCDateTime
from amelia.server.models.state import WorkflowStatus
from amelia.server.models.usage import UsageByModelData, UsageSummaryData, UsageTrendPointData

_TOTALS = usage_day_totals
_COUNTS = usage_day_workflows
_MODEL_COUNTS = usage_day_model_workflows

_FIRST = bindparam("first", type_=Date)
_LAST = bindparam("last", type_=Date)
_PREVIOUS_FIRST = bindparam("previous_first", type_=Date)
_START = bindparam("start", type_=UTCDateTime)
_END = bindparam("end", type_=UTCDateTime)
_DAYS = bindparam("days", type_=ARRAY(Date))

# Literally the predicate of the partial index (a bound value would hide it from the planner).
_COMPLETED: ColumnElement[str] = literal_column(f"'{WorkflowStatus.COMPLETED.value}'")

# Each statement's result rows are read by column name (`.mappings()`).
_Query = Select[*tuple[Any, ...]]


def _days(name: str) -> TableValuedAlias:
    """The range's days, one row each (`unnest(:days) AS name(day)`)."""
    return func.unnest(_DAYS).table_valued(column("day", Date)).render_derived(name=name)


def _build_summary() -> _Query:
    in_range = _TOTALS.c.day.between(_FIRST, _LAST)
    totals = (
        select(
            func.coalesce(func.sum(_TOTALS.c.cost_usd), 0).label("cost"),
            func.coalesce(func.sum(_TOTALS.c.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(_TOTALS.c.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(_TOTALS.c.duration_ms), 0).label("duration_ms"),
        )
        .where(in_range)
        .subquery("totals")
    )
    workflow_count = (
        select(func.coalesce(func.sum(_COUNTS.c.workflows), 0))
        .where(_COUNTS.c.day.between(_FIRST, _LAST), _COUNTS.c.prev_day < _FIRST)
        .scalar_subquery()
    )
    previous_cost = (
        select(func.coalesce(func.sum(_TOTALS.c.cost_usd), 0))
        .where(_TOTALS.c.day >= _PREVIOUS_FIRST, _TOTALS.c.day < _FIRST)
        .scalar_subquery()
    )
    successful = (
        select(func.count())
        .select_from(workflows)
        .where(
            workflows.c.status == _COMPLETED,
            workflows.c.completed_at >= _START,
            workflows.c.completed_at < _END,
        )
        .scalar_subquery()
    )
    return select(
        totals,
        workflow_count.label("workflows"),
        previous_cost.label("previous_cost"),
        successful.label("successful"),
    )


def _build_trend() -> _Query:
    per_day = (
        select(_COUNTS.c.day, func.sum(_COUNTS.c.workflows).label("workflows"))
        .where(_COUNTS.c.day.between(_FIRST, _LAST))
        .group_by(_COUNTS.c.day)
        .subquery("per_day")
    )
    by_cost = (_TOTALS.c.cost_usd.desc(), _TOTALS.c.model)
    # Only days with usage have rows: no zero fill.
    return (
        select(
            _TOTALS.c.day,
            func.sum(_TOTALS.c.cost_usd).label("cost"),
            per_day.c.workflows,
            func.array_agg(aggregate_order_by(_TOTALS.c.model, *by_cost)).label("models"),
            func.array_agg(aggregate_order_by(_TOTALS.c.cost_usd, *by_cost)).label("costs"),
        )
        .join_from(_TOTALS, per_day, per_day.c.day == _TOTALS.c.day)
        .where(_TOTALS.c.day.between(_FIRST, _LAST))
        .group_by(_TOTALS.c.day, per_day.c.workflows)
        .order_by(_TOTALS.c.day)
    )


def _build_by_model() -> _Query:
    first_in_range = and_(
        _MODEL_COUNTS.c.day.between(_FIRST, _LAST), _MODEL_COUNTS.c.prev_day < _FIRST
    )
    counted = func.sum(_MODEL_COUNTS.c.workflows)
    per_model = (
        select(
            _MODEL_COUNTS.c.model,
            counted.label("workflows"),
            func.coalesce(counted.filter(_MODEL_COUNTS.c.completed), 0).label("successful"),
        )
        .where(first_in_range)
        .group_by(_MODEL_COUNTS.c.model)
        # Counts that went back to zero after deletions stay behind as zero rows.
        .having(counted > 0)
        .cte("per_model")
    )
    daily = (
        select(
            _TOTALS.c.day,
            _TOTALS.c.model,
            _TOTALS.c.cost_usd,
            (_TOTALS.c.input_tokens + _TOTALS.c.output_tokens).label("tokens"),
        )
        .where(_TOTALS.c.day.between(_FIRST, _LAST))
        .cte("daily")
    )
    every_day = _days("every_day")
    cost = func.coalesce(func.sum(daily.c.cost_usd), 0)
    # per_model x every day, left-joined to the days with usage: a zero-filled trend.
    return (
        select(
            per_model.c.model,
            per_model.c.workflows,
            per_model.c.successful,
            func.coalesce(func.sum(daily.c.tokens), 0).label("tokens"),
            cost.label("cost"),
            func.array_agg(
                aggregate_order_by(func.coalesce(daily.c.cost_usd, 0), every_day.c.day)
            ).label("trend"),
        )
        .select_from(
            per_model.join(every_day, true()).outerjoin(
                daily,
                and_(daily.c.model == per_model.c.model, daily.c.day == every_day.c.day),
            )
        )
        .group_by(per_model.c.model, per_model.c.workflows, per_model.c.successful)
        .order_by(cost.desc(), per_model.c.model)
    )


# Built once: each call only binds parameters.
_SUMMARY = _build_summary()
_TREND = _build_trend()
_BY_MODEL = _build_by_model()


def _utc_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _days_between(start_date: date, end_date: date) -> list[date]:
    return [start_date + timedelta(days=i) for i in range((end_date - start_date).days + 1)]


def _money(value: Decimal | int | None) -> float:
    return float(value) if value is not None else 0.0


class UsageAnalyticsMixin(RepositoryBase):
    """The usage methods of `WorkflowRepository` (spec data-layer.md 4.1, 22-24)."""

    async def get_usage_summary(self, start_date: date, end_date: date) -> UsageSummaryData:
        """Usage totals over the UTC days `start_date`..`end_date` (inclusive).

        Args:
            start_date: first day.
            end_date: last day; before `start_date` means an empty range (all zeros).

        Returns:
            `total_cost_usd`, `total_workflows` (distinct workflows with usage),
            `total_tokens` (input + output), `total_duration_ms`, `previous_period_cost_usd`
            (the same number of days just before `start_date`), `successful_workflows`
            (workflows completed on a day in the range) and `success_rate` = successful /
            total_workflows (0.0 when there is no usage; not clamped: the two counts come
            from different populations, so it can exceed 1).
        """
        if end_date < start_date:
            return UsageSummaryData(
                total_cost_usd=0.0,
                total_workflows=0,
                total_tokens=0,
                total_duration_ms=0,
                previous_period_cost_usd=0.0,
                successful_workflows=0,
                success_rate=0.0,
            )
        length = end_date - start_date + timedelta(days=1)
        params = {
            "first": start_date,
            "last": end_date,
            "previous_first": start_date - length,
            "start": _utc_start(start_date),
            "end": _utc_start(end_date + timedelta(days=1)),
        }
        async with self._connect() as conn:
            row = (await conn.execute(_SUMMARY, params)).mappings().one()
        total = int(row["workflows"])
        successful = int(row["successful"])
        return UsageSummaryData(
            total_cost_usd=_money(row["cost"]),
            total_workflows=total,
            total_tokens=int(row["input_tokens"]) + int(row["output_tokens"]),
            total_duration_ms=int(row["duration_ms"]),
            previous_period_cost_usd=_money(row["previous_cost"]),
            successful_workflows=successful,
            success_rate=successful / total if total else 0.0,
        )

    async def get_usage_trend(self, start_date: date, end_date: date) -> list[UsageTrendPointData]:
        """Daily usage over the UTC days `start_date`..`end_date`, one entry per day with usage.

        Args:
            start_date: first day.
            end_date: last day (inclusive).

        Returns:
            Ascending by day: `date` (ISO), `cost_usd`, `workflows` (distinct that day) and
            `by_model` ({model: cost}, most expensive model first). Days without usage are
            left out.
        """
        if end_date < start_date:
            return []
        async with self._connect() as conn:
            result = await conn.execute(_TREND, {"first": start_date, "last": end_date})
            rows = result.mappings().all()
        return [
            UsageTrendPointData(
                date=row["day"].isoformat(),
                cost_usd=_money(row["cost"]),
                workflows=int(row["workflows"]),
                by_model={
                    model: _money(cost)
                    for model, cost in zip(row["models"], row["costs"], strict=True)
                },
            )
            for row in rows
        ]

    async def get_usage_by_model(self, start_date: date, end_date: date) -> list[UsageByModelData]:
        """Per-model usage over the UTC days `start_date`..`end_date`, most expensive first.

        Args:
            start_date: first day.
            end_date: last day (inclusive).

        Returns:
            One entry per model with usage in the range: `model`, `workflows` (distinct),
            `tokens` (input + output), `cost_usd`, `trend` (the model's cost on every day of
            the range, 0.0 on days without usage), `successful_workflows` (its distinct
            workflows whose status is completed, whenever they completed) and
            `success_rate` (successful / workflows, rounded to 4 decimals).
        """
        days = _days_between(start_date, end_date)
        if not days:
            return []
        params = {"first": start_date, "last": end_date, "days": days}
        async with self._connect() as conn:
            rows = (await conn.execute(_BY_MODEL, params)).mappings().all()
        entries: list[UsageByModelData] = []
        for row in rows:
            total = int(row["workflows"])
            successful = int(row["successful"])
            entries.append(
                UsageByModelData(
                    model=row["model"],
                    workflows=total,
                    tokens=int(row["tokens"]),
                    cost_usd=_money(row["cost"]),
                    trend=[_money(cost) for cost in row["trend"]],
                    successful_workflows=successful,
                    success_rate=round(successful / total, 4) if total else 0.0,
                )
            )
        return entries
