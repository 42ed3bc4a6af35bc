"""Usage analytics: the payload of `GET /api/usage` and the shapes the repository returns.

The repository's usage methods return plain dicts (typed below) with money as floats and
days as ISO `YYYY-MM-DD` strings (UTC days); the route validates them into these models.
The cache_* fields exist for the dashboard and are never filled by the repository.
"""

from __future__ import annotations

from typing import TypedDict

from pydantic import BaseModel, Field

ISO_DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"


class UsageSummary(BaseModel):
    """Totals over a date range, with the previous period's cost for comparison."""

    total_cost_usd: float
    total_workflows: int
    total_tokens: int
    total_duration_ms: int
    cache_hit_rate: float | None = None
    cache_savings_usd: float | None = None
    previous_period_cost_usd: float | None = None
    successful_workflows: int | None = None
    success_rate: float | None = None


class UsageTrendPoint(BaseModel):
    """One UTC day with usage: its cost, distinct workflows and cost per model."""

    date: str = Field(pattern=ISO_DATE_PATTERN)
    cost_usd: float
    workflows: int
    by_model: dict[str, float] | None = None


class UsageByModel(BaseModel):
    """One model's usage over the range; `trend` has one cost per day of the range."""

    model: str
    workflows: int
    tokens: int
    cost_usd: float
    cache_hit_rate: float | None = None
    cache_savings_usd: float | None = None
    trend: list[float] | None = None
    successful_workflows: int | None = None
    success_rate: float | None = None


class UsageResponse(BaseModel):
    """`GET /api/usage`."""

    summary: UsageSummary
    trend: list[UsageTrendPoint]
    by_model: list[UsageByModel]


class UsageSummaryData(TypedDict):
    """What `WorkflowRepository.get_usage_summary` returns."""

    total_cost_usd: float
    total_workflows: int
    total_tokens: int
    total_duration_ms: int
    previous_period_cost_usd: float
    successful_workflows: int
    success_rate: float


class UsageTrendPointData(TypedDict):
    """One element of `WorkflowRepository.get_usage_trend`; `by_model` is cost-descending."""

    date: str
    cost_usd: float
    workflows: int
    by_model: dict[str, float]


class UsageByModelData(TypedDict):
    """One element of `WorkflowRepository.get_usage_by_model`."""

    model: str
    workflows: int
    tokens: int
    cost_usd: float
    trend: list[float]
    successful_workflows: int
    success_rate: float
