"""Usage analytics of `WorkflowRepository`: the summary, daily trend and per-model figures.

Days are UTC days whatever the session's time zone: a day D covers the half-open range
[D 00:00 UTC, D+1 00:00 UTC), and a date range [start, end] the range [start 00:00 UTC,
end+1 00:00 UTC). Each method is one statement. Sums stay NUMERIC in SQL and become floats
only in the returned dicts.

How the statements are shaped (measured at 1M rows, see the report of this work):
- Every token read is an index-only scan of `ix_token_usage__timestamp` (it covers model,
  workflow_id, cost, tokens and duration) over a timestamp range.
- Per-day figures are computed by a LATERAL subquery per UTC day over that day's range,
  instead of grouping all rows by a computed day: no per-row time-zone arithmetic, and the
  distinct-workflow counts of a day sort a few thousand rows in memory instead of sorting
  (and spilling) the whole range.
- Distinct counts over the whole range use a hashed DISTINCT of the ids only.
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
    cast,
    column,
    distinct,
    func,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY, TIMESTAMP, aggregate_order_by
from sqlalchemy.sql.selectable import TableValuedAlias

from amelia.server.database.base import RepositoryBase
from amelia.server.database.schema import token_usage, workflows
from amelia.server.database.types import UTCDateTime
from amelia.server.models.state import WorkflowStatus
from amelia.server.models.usage import UsageByModelData, UsageSummaryData, UsageTrendPointData

_T = token_usage
_COMPLETED = WorkflowStatus.COMPLETED.value

_START = bindparam("start", type_=UTCDateTime)
_END = bindparam("end", type_=UTCDateTime)
_PREVIOUS_START = bindparam("previous_start", type_=UTCDateTime)
_DAYS = bindparam("days", type_=ARRAY(Date))

# Each statement's result rows are read by column name (`.mappings()`).
_Query = Select[*tuple[Any, ...]]

_IN_RANGE = and_(_T.c.timestamp >= _START, _T.c.timestamp < _END)


def _days(name: str) -> TableValuedAlias:
    """The range's days, one row each (`unnest(:days) AS name(day)`)."""
    return func.unnest(_DAYS).table_valued(column("day", Date)).render_derived(name=name)


def _utc_midnight(day: ColumnElement[Any]) -> ColumnElement[datetime]:
    """The instant a UTC day starts, independent of the session time zone."""
    return func.timezone("UTC", cast(day, TIMESTAMP(timezone=False)), type_=UTCDateTime)


def _in_day(days: TableValuedAlias) -> ColumnElement[bool]:
    """Token rows of the UTC day `days.c.day` (a range the timestamp index serves)."""
    return and_(
        _T.c.timestamp >= _utc_midnight(days.c.day),
        _T.c.timestamp < _utc_midnight(days.c.day + 1),
    )


def _build_summary() -> _Query:
    totals = (
        select(
            func.coalesce(func.sum(_T.c.cost_usd), 0).label("cost"),
            func.coalesce(func.sum(_T.c.input_tokens), 0).label("input_tokens"),
            func.coalesce(func.sum(_T.c.output_tokens), 0).label("output_tokens"),
            func.coalesce(func.sum(_T.c.duration_ms), 0).label("duration_ms"),
        )
        .where(_IN_RANGE)
        .subquery("totals")
    )
    # A hashed DISTINCT of the ids alone (small entries, no aggregate states): faster here
    # than count(DISTINCT ...), which sorts every row of the range.
    ids = select(_T.c.workflow_id).where(_IN_RANGE).distinct().subquery("ids")
    workflow_count = select(func.count()).select_from(ids).scalar_subquery()
    previous_cost = (
        select(func.coalesce(func.sum(_T.c.cost_usd), 0))
        .where(_T.c.timestamp >= _PREVIOUS_START, _T.c.timestamp < _START)
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
    days = _days("d")
    per_model = (
        select(_T.c.model, func.sum(_T.c.cost_usd).label("cost"))
        .where(_in_day(days))
        .group_by(_T.c.model)
        .lateral("m")
    )
    day_workflows = (
        select(func.count(distinct(_T.c.workflow_id)).label("workflows"))
        .where(_in_day(days))
        .lateral("w")
    )
    by_cost = (per_model.c.cost.desc(), per_model.c.model)
    # A day without rows has no per-model group, so the inner join drops it (no zero fill).
    return (
        select(
            days.c.day,
            func.sum(per_model.c.cost).label("cost"),
            day_workflows.c.workflows,
            func.array_agg(aggregate_order_by(per_model.c.model, *by_cost)).label("models"),
            func.array_agg(aggregate_order_by(per_model.c.cost, *by_cost)).label("costs"),
        )
        .select_from(days.join(per_model, true()).join(day_workflows, true()))
        .group_by(days.c.day, day_workflows.c.workflows)
        .order_by(days.c.day)
    )


def _build_by_model() -> _Query:
    pairs = select(_T.c.model, _T.c.workflow_id).where(_IN_RANGE).distinct().cte("pairs")
    completed = workflows.alias("completed")
    per_model = (
        select(
            pairs.c.model,
            func.count().label("workflows"),
            func.count(completed.c.id).label("successful"),
        )
        .select_from(
            pairs.outerjoin(
                completed,
                and_(completed.c.id == pairs.c.workflow_id, completed.c.status == _COMPLETED),
            )
        )
        .group_by(pairs.c.model)
        .cte("per_model")
    )
    days = _days("d")
    day_model = (
        select(
            _T.c.model,
            func.sum(_T.c.cost_usd).label("cost"),
            (func.sum(_T.c.input_tokens) + func.sum(_T.c.output_tokens)).label("tokens"),
        )
        .where(_in_day(days))
        .group_by(_T.c.model)
        .lateral("m")
    )
    daily = (
        select(days.c.day, day_model.c.model, day_model.c.cost, day_model.c.tokens)
        .select_from(days.join(day_model, true()))
        .cte("daily")
    )
    every_day = _days("every_day")
    cost = func.sum(daily.c.cost)
    # per_model x every day, left-joined to the days with usage: a zero-filled trend.
    return (
        select(
            per_model.c.model,
            per_model.c.workflows,
            per_model.c.successful,
            func.sum(daily.c.tokens).label("tokens"),
            cost.label("cost"),
            func.array_agg(
                aggregate_order_by(func.coalesce(daily.c.cost, 0), every_day.c.day)
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
            "start": _utc_start(start_date),
            "end": _utc_start(end_date + timedelta(days=1)),
            "previous_start": _utc_start(start_date - length),
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
        days = _days_between(start_date, end_date)
        if not days:
            return []
        async with self._connect() as conn:
            result = await conn.execute(_TREND, {"days": days})
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
        params = {
            "start": _utc_start(start_date),
            "end": _utc_start(end_date + timedelta(days=1)),
            "days": days,
        }
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
