"""`GET /api/usage` through HTTP on seeded token-usage rows (real PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from amelia.server.database.repository import WorkflowRepository
from amelia.server.services import AppServices
from tests.api.workflow_fixtures import seed_usage, seed_workflow

# Days ago -> (model, cost). Costs are binary fractions, so float sums are exact.
SEEDED = {
    0: ("model-a", "1.000000"),
    6: ("model-b", "0.500000"),
    7: ("model-a", "0.250000"),
    29: ("model-b", "0.125000"),
    30: ("model-a", "0.062500"),
    89: ("model-a", "0.031250"),
    100: ("model-b", "0.015625"),
    4000: ("model-a", "2.000000"),
}


def cost_within(days: int) -> float:
    return sum(float(cost) for ago, (_, cost) in SEEDED.items() if ago < days)


@pytest.fixture
async def today(services: AppServices, tmp_path: Path) -> date:
    """Seed one workflow per entry of SEEDED, its usage at noon UTC of that day."""
    repo = WorkflowRepository(services.db)
    current = datetime.now(UTC).date()
    for ago, (model, cost) in SEEDED.items():
        row = await seed_workflow(repo, tmp_path / f"w{ago}", issue_id=f"U-{ago}")
        noon = datetime.combine(current - timedelta(days=ago), time(12), tzinfo=UTC)
        await seed_usage(repo, row.id, noon, model=model, cost=cost, duration_ms=ago + 1)
    return current


async def usage(client: httpx.AsyncClient, **params: str) -> dict[str, Any]:
    response = await client.get("/api/usage", params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_default_is_the_last_30_utc_days(client: httpx.AsyncClient, today: date) -> None:
    body = await usage(client)
    summary = body["summary"]
    assert summary["total_cost_usd"] == cost_within(30) == 1.875
    assert isinstance(summary["total_cost_usd"], float)
    assert summary["total_workflows"] == 4
    assert summary["total_tokens"] == 4 * 120
    assert summary["total_duration_ms"] == 1 + 7 + 8 + 30
    # The 30 days before (days 30..59 ago) hold only the row 30 days ago.
    assert summary["previous_period_cost_usd"] == 0.0625

    dates = [point["date"] for point in body["trend"]]
    expected = [(today - timedelta(days=ago)).isoformat() for ago in (29, 7, 6, 0)]
    assert dates == expected
    assert body["trend"][-1] == {
        "date": today.isoformat(),
        "cost_usd": 1.0,
        "workflows": 1,
        "by_model": {"model-a": 1.0},
    }

    models = body["by_model"]
    assert [m["model"] for m in models] == ["model-a", "model-b"]  # most expensive first
    assert models[0]["cost_usd"] == 1.25 and models[1]["cost_usd"] == 0.625
    assert models[0]["workflows"] == 2 and models[0]["tokens"] == 240
    assert len(models[0]["trend"]) == 30
    assert models[0]["trend"][-1] == 1.0 and models[0]["trend"][-8] == 0.25
    assert sum(models[1]["trend"]) == 0.625

    assert await usage(client, preset="30d") == body
    explicit = await usage(
        client, start=(today - timedelta(days=29)).isoformat(), end=today.isoformat()
    )
    assert explicit == body


@pytest.mark.parametrize(("preset", "days"), [("7d", 7), ("90d", 90), ("all", 3650)])
async def test_presets(client: httpx.AsyncClient, today: date, preset: str, days: int) -> None:
    body = await usage(client, preset=preset)
    assert body["summary"]["total_cost_usd"] == cost_within(days)
    assert body["summary"]["total_workflows"] == sum(1 for ago in SEEDED if ago < days)
    for model in body["by_model"]:
        assert len(model["trend"]) == days
    first_day = today - timedelta(days=days - 1)
    assert all(point["date"] >= first_day.isoformat() for point in body["trend"])


async def test_explicit_range(client: httpx.AsyncClient, today: date) -> None:
    day = (today - timedelta(days=7)).isoformat()
    body = await usage(client, start=day, end=day)
    assert body["summary"]["total_cost_usd"] == 0.25
    assert body["summary"]["previous_period_cost_usd"] == 0.0
    assert body["trend"] == [
        {"date": day, "cost_usd": 0.25, "workflows": 1, "by_model": {"model-a": 0.25}}
    ]
    assert [m["trend"] for m in body["by_model"]] == [[0.25]]
    old = (today - timedelta(days=4000)).isoformat()
    assert (await usage(client, start=old, end=old))["summary"]["total_cost_usd"] == 2.0


async def test_empty_range_has_zero_totals(client: httpx.AsyncClient) -> None:
    body = await usage(client, start="2001-01-01", end="2001-01-31")
    assert body["summary"]["total_cost_usd"] == 0.0
    assert body["summary"]["total_workflows"] == 0
    assert body["trend"] == [] and body["by_model"] == []


@pytest.mark.parametrize(
    "query",
    [
        "preset=7d&start=2025-01-01",
        "preset=7d&end=2025-01-01",
        "preset=7d&start=2025-01-01&end=2025-01-02",
        "start=2025-01-01",
        "end=2025-01-01",
        "start=2025-01-02&end=2025-01-01",
        "preset=",
        "preset=1y",
        "preset=7D",
        "start=1900-01-01&end=2025-01-01",
    ],
)
async def test_range_rules(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/api/usage?{query}")
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"detail"}
    assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize("query", ["start=2025-13-01&end=2025-12-31", "start=yesterday&end=x"])
async def test_malformed_dates(client: httpx.AsyncClient, query: str) -> None:
    assert (await client.get(f"/api/usage?{query}")).status_code == 422
