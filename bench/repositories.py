"""Repository calls against raw asyncpg, on a seeded database (issue: the data layer).

Every simple call is timed three ways in the same run:
- `pooled`: `WorkflowRepository(db)`, one pooled checkout per call (what a route does today);
- `held`: the repository bound to a connection the caller holds (`repo.bind(conn)`);
- `raw`: the smallest single statement answering the same question on one asyncpg connection.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from amelia.server.database import Database
from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.events import EventType, WorkflowEvent
from amelia.server.models.state import ServerExecutionState, WorkflowStatus
from bench.common import Timing, measure, summarise, timing_dict

ITERATIONS = 400

COLUMNS = (
    "id, issue_id, worktree_path, status, created_at, started_at, completed_at, "
    "failure_reason, workflow_type, profile_id, plan_cache, issue_cache"
)

RAW = {
    "get": f"SELECT {COLUMNS} FROM workflows WHERE id = $1",
    "get_by_worktree": (
        f"SELECT {COLUMNS} FROM workflows WHERE worktree_path = $1 "
        "AND status IN ('in_progress', 'blocked') LIMIT 1"
    ),
    "set_status": (
        "UPDATE workflows SET status = 'in_progress', completed_at = NULL, "
        "failure_reason = NULL WHERE id = $1 AND status = 'pending'"
    ),
    "create": (
        "INSERT INTO workflows (id, issue_id, worktree_path, status, created_at, started_at, "
        "completed_at, failure_reason, workflow_type, profile_id, plan_cache, issue_cache) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12::jsonb)"
    ),
    "save_event": (
        "WITH seq AS (UPDATE workflows SET event_sequence = event_sequence + 1 WHERE id = $1 "
        "RETURNING event_sequence) "
        "INSERT INTO workflow_log (id, workflow_id, sequence, timestamp, event_type, level, "
        "agent, message, data, is_error) "
        "SELECT $2, $1, seq.event_sequence, $3, $4, $5, $6, $7, $8::jsonb, $9 FROM seq "
        "RETURNING sequence"
    ),
    "get_recent_events": (
        "SELECT * FROM (SELECT id, workflow_id, sequence, timestamp, event_type, level, agent, "
        "message, data, is_error FROM workflow_log WHERE workflow_id = $1 "
        "ORDER BY sequence DESC LIMIT $2) AS recent ORDER BY sequence"
    ),
    "get_token_summaries_batch": (
        "SELECT id, workflow_id, agent, model, input_tokens, output_tokens, cache_read_tokens, "
        "cache_creation_tokens, cost_usd, duration_ms, num_turns, timestamp FROM token_usage "
        "WHERE workflow_id = ANY($1::uuid[]) ORDER BY workflow_id, timestamp"
    ),
    "list_workflows": (
        f"SELECT {COLUMNS} FROM workflows ORDER BY started_at DESC NULLS LAST, id DESC LIMIT $1"
    ),
    "list_workflow_page": (
        "SELECT t.n, p.* FROM (SELECT coalesce(sum(workflows), 0) AS n "
        "FROM workflow_status_counts) AS t LEFT JOIN (SELECT w.id, w.issue_id, "
        "w.worktree_path, w.profile_id, w.status, w.created_at, w.started_at, u.cost_usd, "
        "u.input_tokens + u.output_tokens AS tokens, u.duration_ms FROM workflows w "
        "LEFT JOIN usage_workflow_totals u ON u.workflow_id = w.id "
        "ORDER BY w.started_at DESC NULLS LAST, w.id DESC LIMIT $1) AS p ON true "
        "ORDER BY p.started_at DESC NULLS LAST, p.id DESC"
    ),
    "list_workflows_cursor": (
        f"SELECT {COLUMNS} FROM workflows WHERE (started_at, id) < ($1, $2) "
        "ORDER BY started_at DESC NULLS LAST, id DESC LIMIT $3"
    ),
}

SIMPLE_CALLS = [
    "get",
    "get_by_worktree",
    "set_status",
    "create",
    "save_event",
    "get_recent_events",
    "get_token_summaries_batch",
]


def _new_state(i: int, tag: str) -> ServerExecutionState:
    return ServerExecutionState(
        id=uuid.uuid4(),
        issue_id=f"BENCH-{tag}-{i}",
        worktree_path=f"/bench/{tag}/{i}",
        workflow_status=WorkflowStatus.PENDING,
        created_at=datetime.now(UTC),
        issue_cache={"id": f"BENCH-{i}", "title": "t", "description": "d"},
    )


def _event(workflow_id: uuid.UUID) -> WorkflowEvent:
    return WorkflowEvent(
        id=uuid.uuid4(),
        workflow_id=workflow_id,
        sequence=0,
        timestamp=datetime.now(UTC),
        agent="developer",
        event_type=EventType.STAGE_STARTED,
        message="bench event",
        data={"stage": "developer", "n": 1},
    )


async def _fixtures(raw: asyncpg.Connection) -> dict[str, Any]:
    ids = [
        r["id"] for r in await raw.fetch("SELECT id FROM workflows ORDER BY issue_id LIMIT 2000")
    ]
    evented = [
        r["workflow_id"]
        for r in await raw.fetch(
            "SELECT workflow_id FROM workflow_log GROUP BY workflow_id LIMIT 500"
        )
    ]
    # A few running workflows on worktrees of their own, for get_by_worktree.
    running = await raw.fetch(
        "UPDATE workflows SET status = 'in_progress', worktree_path = '/running/' || id "
        "WHERE id IN (SELECT id FROM workflows WHERE status = 'pending' LIMIT 200) "
        "RETURNING worktree_path"
    )
    deep = await raw.fetchrow(
        "SELECT started_at, id FROM workflows ORDER BY started_at DESC NULLS LAST, id DESC "
        "OFFSET 40000 LIMIT 1"
    )
    return {
        "ids": ids,
        "evented": evented,
        "worktrees": [r["worktree_path"] for r in running],
        "deep_cursor": (deep["started_at"], deep["id"]),
    }


async def _pending_rows(raw: asyncpg.Connection, tag: str, count: int) -> list[uuid.UUID]:
    rows = await raw.fetch(
        "INSERT INTO workflows (id, issue_id, worktree_path, status) "
        "SELECT gen_random_uuid(), 'SET-' || g, '/set/' || $1 || '/' || g, 'pending' "
        "FROM generate_series(1, $2::int) g RETURNING id",
        tag,
        count,
    )
    return [r["id"] for r in rows]


async def _time_repository(
    label: str, repo: WorkflowRepository, raw: asyncpg.Connection, fx: dict[str, Any]
) -> dict[str, Timing]:
    n = ITERATIONS
    ids: list[uuid.UUID] = fx["ids"]
    evented: list[uuid.UUID] = fx["evented"]
    worktrees: list[str] = fx["worktrees"]
    pending = await _pending_rows(raw, label, n + 20)
    batches = [ids[i % 1900 : i % 1900 + 20] for i in range(n + 20)]
    out: dict[str, Timing] = {}
    out["get"] = await measure("get", lambda i: repo.get(ids[i % len(ids)]), n)
    out["get_by_worktree"] = await measure(
        "get_by_worktree", lambda i: repo.get_by_worktree(worktrees[i % len(worktrees)]), n
    )
    out["set_status"] = await measure(
        "set_status", lambda i: repo.set_status(pending[i], WorkflowStatus.IN_PROGRESS), n
    )
    out["create"] = await measure("create", lambda i: repo.create(_new_state(i, label)), n)
    out["save_event"] = await measure(
        "save_event", lambda i: repo.save_event(_event(evented[i % len(evented)])), n
    )
    out["get_recent_events"] = await measure(
        "get_recent_events", lambda i: repo.get_recent_events(evented[i % len(evented)], 50), n
    )
    out["get_token_summaries_batch"] = await measure(
        "get_token_summaries_batch", lambda i: repo.get_token_summaries_batch(batches[i]), n
    )
    started_at, after_id = fx["deep_cursor"]
    out["list_workflows"] = await measure(
        "list_workflows", lambda i: repo.list_workflows(limit=21), 100
    )
    out["list_workflows_deep"] = await measure(
        "list_workflows_deep",
        lambda i: repo.list_workflows(limit=21, after_started_at=started_at, after_id=after_id),
        100,
    )
    # The list route's one statement: a page with usage totals and the exact total.
    out["list_workflow_page"] = await measure(
        "list_workflow_page", lambda i: repo.list_workflow_page(limit=21), 100
    )
    return out


async def _time_raw(raw: asyncpg.Connection, fx: dict[str, Any]) -> dict[str, Timing]:
    n = ITERATIONS
    ids: list[uuid.UUID] = fx["ids"]
    evented: list[uuid.UUID] = fx["evented"]
    worktrees: list[str] = fx["worktrees"]
    pending = await _pending_rows(raw, "raw", n + 20)
    batches = [ids[i % 1900 : i % 1900 + 20] for i in range(n + 20)]
    now = datetime.now(UTC)
    out: dict[str, Timing] = {}
    out["get"] = await measure("get", lambda i: raw.fetchrow(RAW["get"], ids[i % len(ids)]), n)
    out["get_by_worktree"] = await measure(
        "get_by_worktree",
        lambda i: raw.fetchrow(RAW["get_by_worktree"], worktrees[i % len(worktrees)]),
        n,
    )
    out["set_status"] = await measure(
        "set_status", lambda i: raw.execute(RAW["set_status"], pending[i]), n
    )
    out["create"] = await measure(
        "create",
        lambda i: raw.execute(
            RAW["create"],
            uuid.uuid4(),
            f"RAW-{i}",
            f"/bench/raw/{i}",
            "pending",
            now,
            None,
            None,
            None,
            "full",
            None,
            None,
            '{"id": "RAW", "title": "t", "description": "d"}',
        ),
        n,
    )
    out["save_event"] = await measure(
        "save_event",
        lambda i: raw.fetchval(
            RAW["save_event"],
            evented[i % len(evented)],
            uuid.uuid4(),
            now,
            "stage_started",
            "info",
            "developer",
            "bench event",
            '{"stage": "developer", "n": 1}',
            False,
        ),
        n,
    )
    out["get_recent_events"] = await measure(
        "get_recent_events",
        lambda i: raw.fetch(RAW["get_recent_events"], evented[i % len(evented)], 50),
        n,
    )
    out["get_token_summaries_batch"] = await measure(
        "get_token_summaries_batch",
        lambda i: raw.fetch(RAW["get_token_summaries_batch"], batches[i]),
        n,
    )
    started_at, after_id = fx["deep_cursor"]
    out["list_workflows"] = await measure(
        "list_workflows", lambda i: raw.fetch(RAW["list_workflows"], 21), 100
    )
    out["list_workflows_deep"] = await measure(
        "list_workflows_deep",
        lambda i: raw.fetch(RAW["list_workflows_cursor"], started_at, after_id, 21),
        100,
    )
    out["list_workflow_page"] = await measure(
        "list_workflow_page", lambda i: raw.fetch(RAW["list_workflow_page"], 21), 100
    )
    return out


async def _time_usage(repo: WorkflowRepository) -> Timing:
    end = datetime.now(UTC).date()
    start = end - timedelta(days=89)
    samples: list[int] = []
    parts: dict[str, list[int]] = {"summary": [], "trend": [], "by_model": []}
    for i in range(12):
        t0 = time.perf_counter_ns()
        await repo.get_usage_summary(start, end)
        t1 = time.perf_counter_ns()
        await repo.get_usage_trend(start, end)
        t2 = time.perf_counter_ns()
        await repo.get_usage_by_model(start, end)
        t3 = time.perf_counter_ns()
        if i >= 2:  # two warm-up rounds
            samples.append(t3 - t0)
            parts["summary"].append(t1 - t0)
            parts["trend"].append(t2 - t1)
            parts["by_model"].append(t3 - t2)
    return summarise(
        "usage_90d_three_queries",
        samples,
        **{f"{k}_median_ms": sorted(v)[len(v) // 2] / 1e6 for k, v in parts.items()},
    )


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


async def run(url: str) -> dict[str, Any]:
    """Time every call; returns the section for latest.json."""
    dsn = url.replace("postgresql+asyncpg://", "postgresql://")
    raw = await asyncpg.connect(dsn)
    db = Database(url, min_size=2, max_size=4, statement_timeout_ms=0)
    await db.connect()
    try:
        fx = await _fixtures(raw)
        raw_t = await _time_raw(raw, fx)
        pooled_t = await _time_repository("pooled", WorkflowRepository(db), raw, fx)
        async with db.connection() as conn:
            held_t = await _time_repository("held", WorkflowRepository(db).bind(conn), raw, fx)
        usage = await _time_usage(WorkflowRepository(db))
        version = await raw.fetchval("SHOW server_version")
    finally:
        await raw.close()
        await db.close()
    calls: dict[str, Any] = {}
    for name in [*SIMPLE_CALLS, "list_workflows", "list_workflows_deep", "list_workflow_page"]:
        calls[name] = {
            "raw": timing_dict(raw_t[name]),
            "pooled": timing_dict(pooled_t[name]),
            "held": timing_dict(held_t[name]),
            "ratio_pooled": pooled_t[name].median_us / raw_t[name].median_us,
            "ratio_held": held_t[name].median_us / raw_t[name].median_us,
        }
    return {
        "server_version": version,
        "iterations": ITERATIONS,
        "calls": calls,
        "geomean_ratio_pooled": _geomean([calls[c]["ratio_pooled"] for c in SIMPLE_CALLS]),
        "geomean_ratio_held": _geomean([calls[c]["ratio_held"] for c in SIMPLE_CALLS]),
        "list_deep_vs_first_page": (
            held_t["list_workflows_deep"].median_us / held_t["list_workflows"].median_us
        ),
        "usage_90d": timing_dict(usage),
    }


def today() -> date:
    return datetime.now(UTC).date()
