"""Types round-trip exactly on a database whose sessions run in a zone with DST.

The repository tests cover each type on a UTC database (tests/database: Decimal costs at the
NUMERIC(10,6) limits, nested unicode JSONB, aware datetimes, UUIDs). Here the database's
default time zone is America/New_York, so every session the pools open sees DST, and the
values are the awkward ones: both readings of the hour that happens twice when clocks go
back, the instants either side of the hour that never happens when they go forward, and a
zone of the other hemisphere. They are written through the repositories (both the fast path
and SQLAlchemy's) and read back through them and through the HTTP API.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import text

from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.events import EventType, WorkflowEvent
from amelia.server.models.state import PlanCache, ServerExecutionState, WorkflowStatus
from amelia.server.models.tokens import MAX_COST_USD, TokenUsage
from amelia.server.services import AppServices
from bench.reliability_report import ScenarioResult, record
from tests.reliability.owned_pg import OwnedPostgres, observer
from tests.reliability.server import in_process_app

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
SYDNEY = ZoneInfo("Australia/Sydney")

# 2026-11-01 01:30 happens twice in New York (fold 0: EDT, fold 1: EST, an hour later).
TWICE_FIRST = datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK)
TWICE_SECOND = datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=NEW_YORK)
# 2026-03-08 02:00-03:00 never happens in New York: the last second before, the first after.
BEFORE_GAP = datetime(2026, 3, 8, 1, 59, 59, 999999, tzinfo=NEW_YORK)
AFTER_GAP = datetime(2026, 3, 8, 3, 0, tzinfo=NEW_YORK)
# Berlin's clocks go back on 2026-10-25; Sydney's go forward on 2026-10-04.
BERLIN_TWICE = datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=BERLIN)
SYDNEY_AFTER = datetime(2026, 10, 4, 3, 0, 0, 1, tzinfo=SYDNEY)

INSTANTS = [TWICE_FIRST, TWICE_SECOND, BEFORE_GAP, AFTER_GAP, BERLIN_TWICE, SYDNEY_AFTER]


def utc(*values: datetime | None) -> tuple[datetime | None, ...]:
    """The instants, in UTC. (PEP 495: an ambiguous local time never compares equal to a
    datetime of another zone, so comparing across zones needs a common one.)"""
    return tuple(None if v is None else v.astimezone(UTC) for v in values)


NESTED = {
    "名前": ["café", "🚀", {"עברית": None, "deep": [[1.5, True, "ß"], {"e\u0301": "é"}]}],
    "big": 2**62,
    "zero width": "a\u200bb",
}


async def test_dst_instants_costs_ids_and_unicode_round_trip_exactly(
    owned_pg: OwnedPostgres, scenario_db: str, tmp_path: Path
) -> None:
    async with await observer(owned_pg.admin_url) as admin:
        await admin.execute(f"ALTER DATABASE \"{scenario_db}\" SET timezone TO 'America/New_York'")
    assert timedelta(0) == TWICE_SECOND - TWICE_FIRST  # equal wall time...
    assert TWICE_SECOND.astimezone(UTC) - TWICE_FIRST.astimezone(UTC) == timedelta(hours=1)

    async with in_process_app(owned_pg.url(scenario_db), tmp_path / "home") as (app, client):
        services: AppServices = app.state.services
        repo = WorkflowRepository(services.db)
        ids = []
        for n, (created, started, completed) in enumerate(
            [
                (TWICE_FIRST, TWICE_SECOND, AFTER_GAP),
                (BEFORE_GAP, AFTER_GAP, BERLIN_TWICE),
                (BERLIN_TWICE, SYDNEY_AFTER, SYDNEY_AFTER + timedelta(microseconds=1)),
            ]
        ):
            state = ServerExecutionState(
                id=uuid.uuid4(),
                issue_id=f"DST-{n}",
                worktree_path=f"/dst/{n}",
                workflow_status=WorkflowStatus.COMPLETED,
                created_at=created,
                started_at=started,
                completed_at=completed,
                issue_cache=NESTED,
                plan_cache=PlanCache(goal="Zürich → 東京 ✈", plan_markdown="# Plan 📋\n- é"),
            )
            await repo.create(state)
            ids.append(state.id)
            loaded = await repo.get(state.id)
            assert loaded is not None
            assert utc(loaded.created_at, loaded.started_at, loaded.completed_at) == utc(
                created, started, completed
            )
            assert loaded.created_at.utcoffset() is not None
            assert loaded.issue_cache == NESTED
            assert loaded.plan_cache == state.plan_cache
            # Over HTTP: ISO 8601 with an offset, the same instants.
            body = (await client.get(f"/api/workflows/{state.id}")).json()
            assert body["id"] == str(state.id)
            for key, value in (
                ("created_at", created),
                ("started_at", started),
                ("completed_at", completed),
            ):
                assert utc(datetime.fromisoformat(body[key])) == utc(value), key

        # Events stamped at each instant come back stamped at the same instants.
        workflow = ids[0]
        for instant in INSTANTS:
            await repo.save_event(
                WorkflowEvent(
                    id=uuid.uuid4(),
                    workflow_id=workflow,
                    sequence=0,
                    timestamp=instant,
                    agent="system",
                    event_type=EventType.STAGE_COMPLETED,
                    message=f"at {instant.isoformat()}",
                    data={"when": instant.isoformat(), **NESTED},
                )
            )
        events = await repo.get_recent_events(workflow, 50)
        assert [utc(e.timestamp) for e in events] == [utc(i) for i in INSTANTS]
        assert all(e.data is not None and e.data["名前"] == NESTED["名前"] for e in events)

        # Costs at both ends of NUMERIC(10,6), stamped across the gap; exact Decimals back.
        costs = [Decimal("0.000001"), MAX_COST_USD, Decimal("1234.567891")]
        for cost, instant in zip(costs, [BEFORE_GAP, AFTER_GAP, TWICE_SECOND], strict=True):
            await repo.save_token_usage(
                TokenUsage(
                    workflow_id=workflow,
                    agent="developer",
                    model="m/ü",
                    input_tokens=1,
                    output_tokens=1,
                    cost_usd=cost,
                    timestamp=instant,
                )
            )
        usage = await repo.get_token_usage(workflow)
        assert [(u.cost_usd, utc(u.timestamp)) for u in usage] == [
            (Decimal("0.000001"), utc(BEFORE_GAP)),
            (MAX_COST_USD, utc(AFTER_GAP)),
            (Decimal("1234.567891"), utc(TWICE_SECOND)),
        ]
        summary = await repo.get_token_summary(workflow)
        assert summary is not None
        assert Decimal(str(summary.total_cost_usd)) == sum(costs)

        # The nested unicode of a profile's agent options, through the API both ways.
        options = {"base_url": "http://x", "extra": NESTED}
        agent = {"driver": "api", "model": "m/日本", "options": options}
        created_profile = await client.post(
            "/api/profiles", json={"id": "uni", "working_dir": "/ü/日本", "agents": {"a": agent}}
        )
        assert created_profile.status_code == 201, created_profile.text
        fetched = (await client.get("/api/profiles/uni")).json()
        assert fetched["agents"]["a"]["options"] == options
        assert fetched["working_dir"] == "/ü/日本"
        async with services.db.connection() as conn:
            session_zone = await conn.scalar(text("SELECT current_setting('TimeZone')"))

    assert session_zone == "America/New_York"  # the pools' sessions really saw DST
    record(
        ScenarioResult(
            scenario="type_round_trips",
            fault="sessions in America/New_York: DST gaps and repeats, NUMERIC limits, unicode",
            requests_sent=len(ids) * 2 + 2,
            failed_during_fault=0,
            failed_after_healing=0,
            recovery_s=None,
            rows_checked=len(ids) + len(INSTANTS) + len(costs) + 1,
            rows_lost=0,
            details={"instants": len(INSTANTS), "zones": "New York, Berlin, Sydney"},
        )
    )
