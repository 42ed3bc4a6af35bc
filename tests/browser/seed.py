"""Rows the browser tests show: finished workflows over the last days, with token usage.

Usage is written with the real repository (as the orchestrator records it); the expected
chart, the cost of each (day, model) pair, is returned so a test can compare bar by bar.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from amelia.server.database.connection import Database
from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.state import PlanCache, ServerExecutionState, WorkflowStatus
from tests.api.workflow_fixtures import seed_usage

MODELS = ("claude-sonnet-4-5", "gpt-5", "gemini-2.5-pro")
STATUSES = (
    WorkflowStatus.COMPLETED,
    WorkflowStatus.COMPLETED,
    WorkflowStatus.FAILED,
    WorkflowStatus.COMPLETED,
    WorkflowStatus.CANCELLED,
)
# Rows only: no run is attached, so the paths need not exist.
REPOS = ("/srv/repos/billing-api", "/srv/repos/web-console", "/srv/repos/search-indexer")
RECENT = 24  # in the last 12 days: more than one page of the list (20)
OLDER = 4  # 33-39 days back: the previous period of the 30-day view
WORKFLOWS = RECENT + OLDER

PLAN = """# Add rate limiting to the public API

**Goal:** Limit each API key to 100 requests per minute

## Tasks
### Task 1: Token bucket
Add a `TokenBucket` with tests.
### Task 2: Middleware
Reject over-limit requests with 429 and a `Retry-After` header.
"""


@dataclass
class Seeded:
    """What was written: workflow ids (newest first) and cost per (UTC day, model)."""

    workflow_ids: list[uuid.UUID] = field(default_factory=list)
    with_usage: uuid.UUID | None = None
    costs: dict[tuple[str, str], Decimal] = field(default_factory=dict)


async def seed(database_url: str) -> Seeded:
    """Write the finished workflows and their usage; return what the pages should show."""
    db = Database(database_url, min_size=1, max_size=2)
    await db.connect()
    try:
        repo = WorkflowRepository(db)
        now = datetime.now(UTC).replace(microsecond=0)
        costs: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
        seeded = Seeded()
        for n in range(WORKFLOWS):
            # Never today: live runs in other tests add usage today.
            days_back = 1 + n // 2 if n < RECENT else 33 + 2 * (n - RECENT)
            started = now - timedelta(days=days_back, hours=n % 2 * 3)
            status = STATUSES[n % len(STATUSES)]
            row = ServerExecutionState(
                id=uuid.uuid4(),
                issue_id=f"ENG-{120 - n}",
                worktree_path=REPOS[n % len(REPOS)],
                profile_id="dev",
                plan_cache=PlanCache(goal="Limit each API key", plan_markdown=PLAN),
                workflow_status=status,
                created_at=started - timedelta(minutes=5),
                started_at=started,
                completed_at=started + timedelta(minutes=20),
                failure_reason="Reviewer rejected twice"
                if status is WorkflowStatus.FAILED
                else None,
            )
            await repo.create(row)
            seeded.workflow_ids.append(row.id)
            for i, model in enumerate(MODELS[: 1 + n % 3]):
                cost = Decimal("0.150000") * (i + 1) + Decimal(n) / 100
                at = started + timedelta(minutes=2 + i)
                await seed_usage(
                    repo,
                    row.id,
                    at,
                    model=model,
                    cost=str(cost),
                    input_tokens=12_000 * (i + 1),
                    output_tokens=1_800 * (i + 1),
                    duration_ms=40_000,
                    agent=("architect", "developer", "reviewer")[i],
                )
                costs[(at.date().isoformat(), model)] += cost
            if n == 5:  # completed, three agent calls: the workflow page's example
                seeded.with_usage = row.id
        seeded.costs = dict(costs)
        return seeded
    finally:
        await db.close()
