"""Seed a benchmark database server-side (generate_series): fast and reproducible in shape.

100,000 workflows (a year of history, 500 worktrees), 1,000,000 token-usage rows over the
last 365 days and 5 models, and 200,000 events (200 for each of 1,000 workflows).

The rows go in with triggers off (`session_replication_role = replica`, as a bulk load
would), then `amelia_usage_rebuild()` fills the rollups and status counts the triggers
would have kept: about 2.5x faster than maintaining them row set by row set.
"""

from __future__ import annotations

import time

import asyncpg

MODELS = ["claude-sonnet-4-5", "claude-opus-4-1", "gpt-5", "gpt-5-mini", "gemini-2.5-pro"]

WORKFLOWS_SQL = """
INSERT INTO workflows (id, issue_id, worktree_path, status, workflow_type, profile_id,
                       created_at, started_at, completed_at, plan_cache, issue_cache)
SELECT gen_random_uuid(),
       'ISSUE-' || g,
       '/repos/wt-' || (g % 500),
       s.status,
       CASE WHEN g % 7 = 0 THEN 'review' ELSE 'full' END,
       'default',
       t.ts - interval '1 minute',
       CASE WHEN s.status = 'pending' AND g % 3 = 0 THEN NULL ELSE t.ts END,
       CASE WHEN s.status IN ('completed', 'failed', 'cancelled')
            THEN t.ts + interval '40 minutes' END,
       jsonb_build_object('goal', 'Goal of ' || g, 'total_tasks', 3, 'current_task_index', 1),
       jsonb_build_object('id', 'ISSUE-' || g, 'title', 'Title ' || g, 'description', 'd')
FROM generate_series(1, $1::int) AS g
CROSS JOIN LATERAL (SELECT now() - (g * interval '315 seconds') AS ts) AS t
CROSS JOIN LATERAL (SELECT CASE WHEN g % 10 < 7 THEN 'completed'
                                WHEN g % 10 = 7 THEN 'failed'
                                WHEN g % 10 = 8 THEN 'cancelled'
                                ELSE 'pending' END AS status) AS s
"""

TOKENS_SQL = """
WITH ids AS (SELECT array_agg(id ORDER BY issue_id) AS a, count(*)::int AS n FROM workflows)
INSERT INTO token_usage (id, workflow_id, agent, model, input_tokens, output_tokens,
                         cache_read_tokens, cache_creation_tokens, cost_usd, duration_ms,
                         num_turns, timestamp)
SELECT gen_random_uuid(),
       ids.a[1 + (g % ids.n)],
       (ARRAY['architect', 'developer', 'reviewer', 'evaluator'])[1 + g % 4],
       ($2::text[])[1 + ((g::bigint * 7919) % 5)::int],
       1000 + (g * 31) % 20000,
       200 + (g * 17) % 4000,
       (g * 13) % 5000,
       0,
       round(((g * 97) % 50000) / 100000.0, 6),
       500 + (g * 7) % 60000,
       1 + g % 5,
       now() - (((g::bigint * 104729) % 31536000) * interval '1 second')
FROM ids, generate_series(1, $1::int) AS g
"""

EVENTS_SQL = """
WITH chosen AS (
    SELECT id FROM workflows ORDER BY issue_id LIMIT $1::int
)
INSERT INTO workflow_log (id, workflow_id, sequence, timestamp, event_type, level, agent,
                          message, data, is_error)
SELECT gen_random_uuid(), chosen.id, s, now() - ((200 - s) * interval '1 second'),
       (ARRAY['stage_started', 'stage_completed', 'task_started', 'task_completed'])[1 + s % 4],
       'info', 'developer', 'Event number ' || s,
       jsonb_build_object('step', s, 'note', repeat('x', 64)), false
FROM chosen CROSS JOIN generate_series(1, $2::int) AS s
"""


async def seed(
    dsn: str,
    workflows: int = 100_000,
    token_rows: int = 1_000_000,
    event_workflows: int = 1_000,
    events_each: int = 200,
) -> dict[str, float]:
    """Fill the database; returns the seconds each step took."""
    conn = await asyncpg.connect(dsn)
    timings: dict[str, float] = {}
    try:
        await conn.execute("SET session_replication_role = replica")
        started = time.perf_counter()
        await conn.execute(WORKFLOWS_SQL, workflows)
        timings["workflows_s"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute(TOKENS_SQL, token_rows, MODELS)
        timings["token_usage_s"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute(EVENTS_SQL, event_workflows, events_each)
        await conn.execute(
            "UPDATE workflows w SET event_sequence = m.seq FROM "
            "(SELECT workflow_id, max(sequence) AS seq FROM workflow_log GROUP BY 1) m "
            "WHERE w.id = m.workflow_id"
        )
        timings["events_s"] = time.perf_counter() - started
        await conn.execute("RESET session_replication_role")
        started = time.perf_counter()
        await conn.execute("SELECT amelia_usage_rebuild()")
        timings["rollups_s"] = time.perf_counter() - started
        started = time.perf_counter()
        await conn.execute("VACUUM ANALYZE")
        timings["vacuum_analyze_s"] = time.perf_counter() - started
    finally:
        await conn.close()
    return timings
