"""usage rollups and workflow status counts

Why: the usage analytics scanned every token row of the range (a 90-day window at 1M rows
took about 500 ms, mostly distinct-workflow counts), and every list page counted the whole
workflows table for its `total` (10-40 ms). Triggers now keep derived figures exact in each
writer's own transaction: per-day sums, distinct-workflow counts keyed so that any range is
a sum over its days, per-workflow usage totals and per-status workflow counts. Existing rows
are backfilled by `amelia_usage_rebuild()`, which also recomputes everything on demand.

Revision ID: 5d1e0c7a9b21
Revises: 329cbafe0ae0
Create Date: 2026-11-28 08:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "5d1e0c7a9b21"
down_revision: str | Sequence[str] | None = "329cbafe0ae0"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Not in the metadata (autogenerate does not compare types, functions or triggers).
# Concurrency: every writer locks the workflows rows it affects (id order), then counter rows
# in key order, one statement per table, so writers never deadlock on them; one workflow's
# changes are recounted by one transaction at a time from the latest committed rows, which
# is why these triggers insist on READ COMMITTED. Generic plans: re-planning these statements
# on every call (PostgreSQL's choice for them) cost several times their execution.
_SQL = [
    """
    CREATE TYPE amelia_usage_delta AS (
        workflow_id uuid, model text, day date, calls bigint, input_tokens bigint,
        output_tokens bigint, cache_read_tokens bigint, cost_usd numeric, duration_ms bigint,
        num_turns bigint
    )
    """,
    # Recount the distinct-workflow contributions of some workflows from their day rows:
    # apply (new keys - keys counted so far) as net changes, then remember the new keys.
    """
    CREATE FUNCTION amelia_usage_recount(affected uuid[]) RETURNS void
    LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
    BEGIN
        WITH cur AS (
            SELECT * FROM usage_workflow_days WHERE workflow_id = ANY(affected)
        ), days AS (
            SELECT DISTINCT workflow_id, day FROM cur WHERE calls > 0
        ), delta AS (
            SELECT day,
                   coalesce(lag(day) OVER (PARTITION BY workflow_id ORDER BY day),
                            '-infinity') AS prev_day,
                   1 AS n
            FROM days
            UNION ALL
            SELECT day, workflow_prev_day, -1 FROM cur WHERE counted AND day_lead
        )
        INSERT INTO usage_day_workflows AS c (day, prev_day, workflows)
        SELECT day, prev_day, sum(n) FROM delta
        GROUP BY day, prev_day HAVING sum(n) <> 0 ORDER BY day, prev_day
        ON CONFLICT (day, prev_day) DO UPDATE SET workflows = c.workflows + excluded.workflows;

        WITH cur AS (
            SELECT * FROM usage_workflow_days WHERE workflow_id = ANY(affected)
        ), done AS (
            SELECT id FROM workflows WHERE id = ANY(affected) AND status = 'completed'
        ), delta AS (
            SELECT cur.day, cur.model,
                   coalesce(lag(cur.day) OVER (PARTITION BY cur.workflow_id, cur.model
                                               ORDER BY cur.day), '-infinity') AS prev_day,
                   done.id IS NOT NULL AS completed,
                   1 AS n
            FROM cur LEFT JOIN done ON done.id = cur.workflow_id
            WHERE cur.calls > 0
            UNION ALL
            SELECT day, model, model_prev_day, completed, -1 FROM cur WHERE counted
        )
        INSERT INTO usage_day_model_workflows AS c (day, model, prev_day, completed, workflows)
        SELECT day, model, prev_day, completed, sum(n) FROM delta
        GROUP BY day, model, prev_day, completed HAVING sum(n) <> 0
        ORDER BY day, model, prev_day, completed
        ON CONFLICT (day, model, prev_day, completed)
        DO UPDATE SET workflows = c.workflows + excluded.workflows;

        DELETE FROM usage_workflow_days WHERE workflow_id = ANY(affected) AND calls <= 0;
        WITH cur AS (
            SELECT workflow_id, model, day,
                   coalesce(lag(day) OVER (PARTITION BY workflow_id, model ORDER BY day),
                            '-infinity') AS model_prev_day,
                   row_number() OVER (PARTITION BY workflow_id, day ORDER BY model) = 1
                       AS day_lead
            FROM usage_workflow_days WHERE workflow_id = ANY(affected)
        ), leads AS (
            SELECT workflow_id, day,
                   coalesce(lag(day) OVER (PARTITION BY workflow_id ORDER BY day),
                            '-infinity') AS workflow_prev_day
            FROM cur WHERE day_lead
        ), fresh AS (
            SELECT cur.*,
                   coalesce(leads.workflow_prev_day, '-infinity') AS workflow_prev_day,
                   EXISTS (SELECT FROM workflows w
                           WHERE w.id = cur.workflow_id AND w.status = 'completed')
                       AS completed
            FROM cur LEFT JOIN leads
              ON cur.day_lead AND leads.workflow_id = cur.workflow_id AND leads.day = cur.day
        )
        UPDATE usage_workflow_days e
        SET counted = true, completed = f.completed, model_prev_day = f.model_prev_day,
            day_lead = f.day_lead, workflow_prev_day = f.workflow_prev_day
        FROM fresh f
        WHERE e.workflow_id = f.workflow_id AND e.model = f.model AND e.day = f.day
          AND (e.counted, e.completed, e.model_prev_day, e.day_lead, e.workflow_prev_day)
              IS DISTINCT FROM
              (true, f.completed, f.model_prev_day, f.day_lead, f.workflow_prev_day);
    END
    $$
    """,
    # Apply token_usage changes, grouped per (workflow, model, UTC day).
    """
    CREATE FUNCTION amelia_usage_apply(deltas amelia_usage_delta[]) RETURNS void
    LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
    DECLARE
        affected uuid[];
        days_changed boolean;
    BEGIN
        IF current_setting('transaction_isolation') <> 'read committed' THEN
            RAISE EXCEPTION 'token usage changes need READ COMMITTED isolation'
                USING HINT = 'The usage rollups recount a workflow from committed rows.';
        END IF;
        SELECT array_agg(DISTINCT d.workflow_id ORDER BY d.workflow_id) INTO affected
        FROM unnest(deltas) AS d;
        IF affected IS NULL THEN
            RETURN;
        END IF;
        PERFORM FROM workflows WHERE id = ANY(affected) ORDER BY id FOR NO KEY UPDATE;

        -- A day row that appears (its calls are all of this change) or empties changes the
        -- distinct counts; more calls on a known day, the usual case, do not.
        WITH d AS (
            SELECT d.workflow_id, d.model, d.day, sum(d.calls) AS calls
            FROM unnest(deltas) AS d GROUP BY 1, 2, 3
        ), up AS (
            INSERT INTO usage_workflow_days AS e
                (workflow_id, model, day, calls, counted, completed, model_prev_day,
                 day_lead, workflow_prev_day)
            SELECT workflow_id, model, day, calls, false, false, '-infinity', false,
                   '-infinity'
            FROM d ORDER BY 1, 2, 3
            ON CONFLICT (workflow_id, model, day) DO UPDATE SET calls = e.calls + excluded.calls
            RETURNING e.workflow_id, e.model, e.day, e.calls
        )
        SELECT EXISTS (
            SELECT FROM up JOIN d USING (workflow_id, model, day)
            WHERE up.calls <= 0 OR up.calls = d.calls
        ) INTO days_changed;

        IF days_changed THEN
            PERFORM amelia_usage_recount(affected);
        END IF;

        INSERT INTO usage_day_totals AS t
            (day, model, calls, input_tokens, output_tokens, cost_usd, duration_ms)
        SELECT d.day, d.model, sum(d.calls), sum(d.input_tokens), sum(d.output_tokens),
               sum(d.cost_usd), sum(d.duration_ms)
        FROM unnest(deltas) AS d GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (day, model) DO UPDATE SET
            calls = t.calls + excluded.calls,
            input_tokens = t.input_tokens + excluded.input_tokens,
            output_tokens = t.output_tokens + excluded.output_tokens,
            cost_usd = t.cost_usd + excluded.cost_usd,
            duration_ms = t.duration_ms + excluded.duration_ms;

        INSERT INTO usage_workflow_totals AS t
            (workflow_id, calls, input_tokens, output_tokens, cache_read_tokens, cost_usd,
             duration_ms, num_turns)
        SELECT d.workflow_id, sum(d.calls), sum(d.input_tokens), sum(d.output_tokens),
               sum(d.cache_read_tokens), sum(d.cost_usd), sum(d.duration_ms),
               sum(d.num_turns)
        FROM unnest(deltas) AS d GROUP BY 1 ORDER BY 1
        ON CONFLICT (workflow_id) DO UPDATE SET
            calls = t.calls + excluded.calls,
            input_tokens = t.input_tokens + excluded.input_tokens,
            output_tokens = t.output_tokens + excluded.output_tokens,
            cache_read_tokens = t.cache_read_tokens + excluded.cache_read_tokens,
            cost_usd = t.cost_usd + excluded.cost_usd,
            duration_ms = t.duration_ms + excluded.duration_ms,
            num_turns = t.num_turns + excluded.num_turns;

        -- Rows removed: drop totals that no longer count a row. Only rows this statement
        -- has locked already (zero distinct counts stay: they add nothing).
        IF EXISTS (SELECT FROM unnest(deltas) AS d WHERE d.calls < 0) THEN
            DELETE FROM usage_day_totals t USING unnest(deltas) AS d
            WHERE t.day = d.day AND t.model = d.model AND t.calls <= 0;
            DELETE FROM usage_workflow_totals WHERE workflow_id = ANY(affected) AND calls <= 0;
        END IF;
    END
    $$
    """,
    """
    CREATE FUNCTION amelia_token_usage_changed() RETURNS trigger
    LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
    DECLARE
        deltas amelia_usage_delta[];
    BEGIN
        IF TG_OP = 'INSERT' THEN
            SELECT array_agg(ROW(workflow_id, model, day, calls, input_tokens, output_tokens,
                                 cache_read_tokens, cost_usd, duration_ms, num_turns
                                )::amelia_usage_delta)
            INTO deltas
            FROM (
                SELECT workflow_id, model, (timestamp AT TIME ZONE 'UTC')::date AS day,
                       count(*) AS calls, sum(input_tokens) AS input_tokens,
                       sum(output_tokens) AS output_tokens,
                       sum(coalesce(cache_read_tokens, 0)) AS cache_read_tokens,
                       sum(cost_usd) AS cost_usd, sum(duration_ms) AS duration_ms,
                       sum(num_turns) AS num_turns
                FROM added GROUP BY 1, 2, 3
            ) AS g;
        ELSIF TG_OP = 'DELETE' THEN
            SELECT array_agg(ROW(workflow_id, model, day, -calls, -input_tokens,
                                 -output_tokens, -cache_read_tokens, -cost_usd, -duration_ms,
                                 -num_turns
                                )::amelia_usage_delta)
            INTO deltas
            FROM (
                SELECT workflow_id, model, (timestamp AT TIME ZONE 'UTC')::date AS day,
                       count(*) AS calls, sum(input_tokens) AS input_tokens,
                       sum(output_tokens) AS output_tokens,
                       sum(coalesce(cache_read_tokens, 0)) AS cache_read_tokens,
                       sum(cost_usd) AS cost_usd, sum(duration_ms) AS duration_ms,
                       sum(num_turns) AS num_turns
                FROM removed GROUP BY 1, 2, 3
            ) AS g;
        ELSE
            SELECT array_agg(ROW(workflow_id, model, day, calls, input_tokens, output_tokens,
                                 cache_read_tokens, cost_usd, duration_ms, num_turns
                                )::amelia_usage_delta)
            INTO deltas
            FROM (
                SELECT workflow_id, model, (timestamp AT TIME ZONE 'UTC')::date AS day,
                       sum(sign) AS calls, sum(sign * input_tokens) AS input_tokens,
                       sum(sign * output_tokens) AS output_tokens,
                       sum(sign * coalesce(cache_read_tokens, 0)) AS cache_read_tokens,
                       sum(sign * cost_usd) AS cost_usd,
                       sum(sign * duration_ms) AS duration_ms,
                       sum(sign * num_turns) AS num_turns
                FROM (SELECT *, 1 AS sign FROM added
                      UNION ALL SELECT *, -1 AS sign FROM removed) AS changed
                GROUP BY 1, 2, 3
            ) AS g;
        END IF;
        PERFORM amelia_usage_apply(deltas);
        RETURN NULL;
    END
    $$
    """,
    # Status counts, and the per-model counts that depend on whether a workflow is completed.
    # A status change touches two count rows: one statement, in key order.
    """
    CREATE FUNCTION amelia_workflow_status_changed() RETURNS trigger
    LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
    BEGIN
        IF TG_OP = 'UPDATE' THEN
            IF (OLD.status = 'completed') IS DISTINCT FROM (NEW.status = 'completed') THEN
                IF current_setting('transaction_isolation') <> 'read committed' THEN
                    RAISE EXCEPTION 'completing workflows needs READ COMMITTED isolation'
                        USING HINT = 'The usage rollups recount a workflow from committed rows.';
                END IF;
                PERFORM amelia_usage_recount(ARRAY[NEW.id]);
            END IF;
            INSERT INTO workflow_status_counts AS c (status, workflows)
            SELECT s, n FROM (VALUES (OLD.status, -1), (NEW.status, 1)) AS v(s, n) ORDER BY s
            ON CONFLICT (status) DO UPDATE SET workflows = c.workflows + excluded.workflows;
        ELSIF TG_OP = 'INSERT' THEN
            INSERT INTO workflow_status_counts AS c (status, workflows)
            SELECT status, count(*) FROM added GROUP BY status ORDER BY status
            ON CONFLICT (status) DO UPDATE SET workflows = c.workflows + excluded.workflows;
        ELSE
            INSERT INTO workflow_status_counts AS c (status, workflows)
            SELECT status, -count(*) FROM removed GROUP BY status ORDER BY status
            ON CONFLICT (status) DO UPDATE SET workflows = c.workflows + excluded.workflows;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE FUNCTION amelia_usage_truncated() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_TABLE_NAME = 'workflows' THEN
            TRUNCATE workflow_status_counts;
        ELSE
            TRUNCATE usage_workflow_days, usage_day_totals, usage_day_workflows,
                     usage_day_model_workflows, usage_workflow_totals;
        END IF;
        RETURN NULL;
    END
    $$
    """,
    # Everything from scratch (the backfill; also after bulk loads with triggers disabled).
    """
    CREATE FUNCTION amelia_usage_rebuild() RETURNS void
    LANGUAGE plpgsql AS $$
    BEGIN
        -- Writers wait for this transaction, so the figures are exact when it commits.
        LOCK TABLE workflows, token_usage IN SHARE ROW EXCLUSIVE MODE;
        TRUNCATE usage_workflow_days, usage_day_totals, usage_day_workflows,
                 usage_day_model_workflows, usage_workflow_totals, workflow_status_counts;
        WITH g AS (
            SELECT workflow_id, model, (timestamp AT TIME ZONE 'UTC')::date AS day,
                   count(*) AS calls
            FROM token_usage GROUP BY 1, 2, 3
        ), k AS (
            SELECT g.*,
                   coalesce(lag(day) OVER (PARTITION BY workflow_id, model ORDER BY day),
                            '-infinity') AS model_prev_day,
                   row_number() OVER (PARTITION BY workflow_id, day ORDER BY model) = 1
                       AS day_lead
            FROM g
        ), leads AS (
            SELECT workflow_id, day,
                   coalesce(lag(day) OVER (PARTITION BY workflow_id ORDER BY day),
                            '-infinity') AS workflow_prev_day
            FROM k WHERE day_lead
        )
        INSERT INTO usage_workflow_days (workflow_id, model, day, calls, counted, completed,
                                         model_prev_day, day_lead, workflow_prev_day)
        SELECT k.workflow_id, k.model, k.day, k.calls, true, w.status = 'completed',
               k.model_prev_day, k.day_lead, coalesce(leads.workflow_prev_day, '-infinity')
        FROM k
        JOIN workflows w ON w.id = k.workflow_id
        LEFT JOIN leads
          ON k.day_lead AND leads.workflow_id = k.workflow_id AND leads.day = k.day;

        INSERT INTO usage_day_workflows (day, prev_day, workflows)
        SELECT day, workflow_prev_day, count(*) FROM usage_workflow_days WHERE day_lead
        GROUP BY 1, 2;
        INSERT INTO usage_day_model_workflows (day, model, prev_day, completed, workflows)
        SELECT day, model, model_prev_day, completed, count(*) FROM usage_workflow_days
        GROUP BY 1, 2, 3, 4;
        INSERT INTO usage_day_totals
            (day, model, calls, input_tokens, output_tokens, cost_usd, duration_ms)
        SELECT (timestamp AT TIME ZONE 'UTC')::date, model, count(*), sum(input_tokens),
               sum(output_tokens), sum(cost_usd), sum(duration_ms)
        FROM token_usage GROUP BY 1, 2;
        INSERT INTO usage_workflow_totals (workflow_id, calls, input_tokens, output_tokens,
                                           cache_read_tokens, cost_usd, duration_ms, num_turns)
        SELECT workflow_id, count(*), sum(input_tokens), sum(output_tokens),
               sum(coalesce(cache_read_tokens, 0)), sum(cost_usd), sum(duration_ms),
               sum(num_turns)
        FROM token_usage GROUP BY 1;
        INSERT INTO workflow_status_counts (status, workflows)
        SELECT status, count(*) FROM workflows GROUP BY 1;
    END
    $$
    """,
    # Statement-level with transition tables: a bulk statement (retention's batch deletes
    # and their cascades, a seed) is applied once, set-based.
    "CREATE TRIGGER token_usage_rollup_insert AFTER INSERT ON token_usage "
    "REFERENCING NEW TABLE AS added "
    "FOR EACH STATEMENT EXECUTE FUNCTION amelia_token_usage_changed()",
    "CREATE TRIGGER token_usage_rollup_update AFTER UPDATE ON token_usage "
    "REFERENCING OLD TABLE AS removed NEW TABLE AS added "
    "FOR EACH STATEMENT EXECUTE FUNCTION amelia_token_usage_changed()",
    "CREATE TRIGGER token_usage_rollup_delete AFTER DELETE ON token_usage "
    "REFERENCING OLD TABLE AS removed "
    "FOR EACH STATEMENT EXECUTE FUNCTION amelia_token_usage_changed()",
    "CREATE TRIGGER token_usage_rollup_truncate AFTER TRUNCATE ON token_usage "
    "FOR EACH STATEMENT EXECUTE FUNCTION amelia_usage_truncated()",
    "CREATE TRIGGER workflows_status_insert AFTER INSERT ON workflows "
    "REFERENCING NEW TABLE AS added "
    "FOR EACH STATEMENT EXECUTE FUNCTION amelia_workflow_status_changed()",
    "CREATE TRIGGER workflows_status_delete AFTER DELETE ON workflows "
    "REFERENCING OLD TABLE AS removed "
    "FOR EACH STATEMENT EXECUTE FUNCTION amelia_workflow_status_changed()",
    # Row-level: other updates of workflows (events, leases) cost nothing here.
    "CREATE TRIGGER workflows_status_update AFTER UPDATE OF status ON workflows "
    "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) "
    "EXECUTE FUNCTION amelia_workflow_status_changed()",
    "CREATE TRIGGER workflows_status_truncate AFTER TRUNCATE ON workflows "
    "FOR EACH STATEMENT EXECUTE FUNCTION amelia_usage_truncated()",
]

_DROP_SQL = [
    "DROP TRIGGER IF EXISTS workflows_status_truncate ON workflows",
    "DROP TRIGGER IF EXISTS workflows_status_update ON workflows",
    "DROP TRIGGER IF EXISTS workflows_status_delete ON workflows",
    "DROP TRIGGER IF EXISTS workflows_status_insert ON workflows",
    "DROP TRIGGER IF EXISTS token_usage_rollup_truncate ON token_usage",
    "DROP TRIGGER IF EXISTS token_usage_rollup_delete ON token_usage",
    "DROP TRIGGER IF EXISTS token_usage_rollup_update ON token_usage",
    "DROP TRIGGER IF EXISTS token_usage_rollup_insert ON token_usage",
    "DROP FUNCTION IF EXISTS amelia_usage_rebuild()",
    "DROP FUNCTION IF EXISTS amelia_usage_truncated()",
    "DROP FUNCTION IF EXISTS amelia_workflow_status_changed()",
    "DROP FUNCTION IF EXISTS amelia_token_usage_changed()",
    "DROP FUNCTION IF EXISTS amelia_usage_apply(amelia_usage_delta[])",
    "DROP FUNCTION IF EXISTS amelia_usage_recount(uuid[])",
    "DROP TYPE IF EXISTS amelia_usage_delta",
]


def upgrade() -> None:
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_table(
        "usage_day_model_workflows",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("prev_day", sa.Date(), nullable=False),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("workflows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint(
            "day", "model", "prev_day", "completed", name=op.f("pk_usage_day_model_workflows")
        ),
    )
    op.create_table(
        "usage_day_totals",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "model", name=op.f("pk_usage_day_totals")),
    )
    op.create_table(
        "usage_day_workflows",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("prev_day", sa.Date(), nullable=False),
        sa.Column("workflows", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("day", "prev_day", name=op.f("pk_usage_day_workflows")),
    )
    op.create_table(
        "usage_workflow_days",
        sa.Column("workflow_id", sa.UUID(), nullable=False),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.Column("counted", sa.Boolean(), nullable=False),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("model_prev_day", sa.Date(), nullable=False),
        sa.Column("day_lead", sa.Boolean(), nullable=False),
        sa.Column("workflow_prev_day", sa.Date(), nullable=False),
        sa.PrimaryKeyConstraint("workflow_id", "model", "day", name=op.f("pk_usage_workflow_days")),
    )
    op.create_table(
        "usage_workflow_totals",
        sa.Column("workflow_id", sa.UUID(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", sa.Numeric(precision=20, scale=6), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("num_turns", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("workflow_id", name=op.f("pk_usage_workflow_totals")),
    )
    op.create_table(
        "workflow_status_counts",
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("workflows", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("status", name=op.f("pk_workflow_status_counts")),
    )
    op.create_index(
        "ix_workflows__completed_at__completed",
        "workflows",
        ["completed_at"],
        unique=False,
        postgresql_where=sa.text("status = 'completed'"),
    )
    # ### end Alembic commands ###
    for statement in _SQL:
        op.execute(statement)
    op.execute("SELECT amelia_usage_rebuild()")


def downgrade() -> None:
    for statement in _DROP_SQL:
        op.execute(statement)
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_index(
        "ix_workflows__completed_at__completed",
        table_name="workflows",
        postgresql_where=sa.text("status = 'completed'"),
    )
    op.drop_table("workflow_status_counts")
    op.drop_table("usage_workflow_totals")
    op.drop_table("usage_workflow_days")
    op.drop_table("usage_day_workflows")
    op.drop_table("usage_day_totals")
    op.drop_table("usage_day_model_workflows")
    # ### end Alembic commands ###
