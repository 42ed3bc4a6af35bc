"""Usage analytics, `GET /api/usage` (spec server.md 2.2).

A date range of UTC days: `start` + `end`, or a `preset`, or by default the last 30 days
ending today (UTC). The three aggregates run on one held connection.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from fastapi import APIRouter, HTTPException, Response, status

from amelia.server.dependencies import Repository, Services
from amelia.server.models.usage import (
    UsageByModel,
    UsageResponse,
    UsageSummary,
    UsageTrendPoint,
)

router = APIRouter(prefix="/api/usage", tags=["usage"])

PRESET_DAYS = {"7d": 7, "30d": 30, "90d": 90, "all": 3650}
DEFAULT_DAYS = 30
# The per-model trend has one value per day: bound the range so a request cannot ask for
# millions of days (about 27 years, far beyond the `all` preset).
MAX_RANGE_DAYS = 10_000


def _bad_request(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, detail)


def resolve_range(
    start: date | None, end: date | None, preset: str | None, today: date
) -> tuple[date, date]:
    """The inclusive (start, end) of a usage request.

    Args:
        start: first day asked for.
        end: last day asked for.
        preset: `7d`, `30d`, `90d` or `all` (3650 days), ending `today`.
        today: the current UTC date.

    Returns:
        The first and last day of the range.

    Raises:
        HTTPException: 400 when a preset is combined with dates, only one of start/end is
            given, start is after end, the preset is empty or unknown, or the range is
            longer than `MAX_RANGE_DAYS`.
    """
    if preset is not None:
        if start is not None or end is not None:
            raise _bad_request("Use either preset or start/end, not both")
        if not preset:
            raise _bad_request("preset must not be empty")
        days = PRESET_DAYS.get(preset)
        if days is None:
            raise _bad_request(f"Unknown preset {preset!r}; use one of {', '.join(PRESET_DAYS)}")
        return today - timedelta(days=days - 1), today
    if start is None and end is None:
        return today - timedelta(days=DEFAULT_DAYS - 1), today
    if start is None or end is None:
        raise _bad_request("Give both start and end, or neither")
    if start > end:
        raise _bad_request("start must not be after end")
    if (end - start).days + 1 > MAX_RANGE_DAYS:
        raise _bad_request(f"The range must not exceed {MAX_RANGE_DAYS} days")
    return start, end


@router.get("", response_model=UsageResponse)
async def get_usage(
    services: Services,
    repository: Repository,
    start: date | None = None,
    end: date | None = None,
    preset: str | None = None,
) -> Response:
    """Cost, tokens and workflows over a range of UTC days: totals, per day, per model."""
    first, last = resolve_range(start, end, preset, datetime.now(UTC).date())
    async with services.db.connection() as conn:
        repo = repository.bind(conn)
        summary = await repo.get_usage_summary(first, last)
        trend = await repo.get_usage_trend(first, last)
        by_model = await repo.get_usage_by_model(first, last)
    body = UsageResponse(
        summary=UsageSummary.model_validate(summary),
        trend=[UsageTrendPoint.model_validate(point) for point in trend],
        by_model=[UsageByModel.model_validate(entry) for entry in by_model],
    )
    # Serialised once: FastAPI would dump the model and validate it again before that.
    return Response(body.model_dump_json(), media_type="application/json")
