"""The application schema: one MetaData, every table, index and constraint.

This module is the source of truth; Alembic revisions are generated from it and a test fails
when the two drift. LangGraph's checkpoint tables are not declared here (its saver owns them).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    literal_column,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

from amelia.server.database.types import JSONBData, Money, Seconds, UTCDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s__%(column_0_N_name)s",
    "uq": "uq_%(table_name)s__%(column_0_N_name)s",
    "ck": "ck_%(table_name)s__%(constraint_name)s",
    "fk": "fk_%(table_name)s__%(column_0_N_name)s__%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Tables LangGraph's AsyncPostgresSaver creates in the same database; never ours to migrate.
CHECKPOINT_TABLES = frozenset(
    {"checkpoints", "checkpoint_blobs", "checkpoint_writes", "checkpoint_migrations"}
)

WORKFLOW_STATUSES = ("pending", "in_progress", "blocked", "completed", "failed", "cancelled")
WORKFLOW_TYPES = ("full", "review")
EVENT_LEVELS = ("info", "warning", "error", "debug")

# Names the error mapper recognises (amelia/server/database/errors.py).
ACTIVE_WORKTREE_INDEX = "uq_workflows__active_worktree"
SINGLE_ACTIVE_PROFILE_INDEX = "uq_profiles__single_active"


# A workflow that wants a process to run it (literal, so the planner matches the index).
WANTS_TO_RUN_SQL = "status = 'in_progress' OR (status = 'pending' AND planning)"
# Channel the `workflow_log` insert trigger notifies with "<workflow id>:<sequence>".
EVENTS_CHANNEL = "amelia_events"


def _in_list(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


workflows = Table(
    "workflows",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("issue_id", Text, nullable=False),
    Column("worktree_path", Text, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("created_at", UTCDateTime, nullable=False, server_default=func.now()),
    Column("started_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Column("failure_reason", Text),
    Column("workflow_type", Text, nullable=False, server_default="full"),
    # A profile name; deliberately no FK: deleting a profile must not touch history.
    Column("profile_id", Text),
    Column("plan_cache", JSONBData),
    Column("issue_cache", JSONBData),
    # Last event sequence handed out for this workflow: the database allocates sequences, so
    # several processes can write one workflow's events without colliding.
    Column("event_sequence", Integer, nullable=False, server_default=text("0")),
    # Run ownership across server processes (see database/run_leases.py): the owning
    # process, until when it owns the run, the fencing number of the latest claim, whether
    # a pending workflow wants its plan made, and how often dead owners left the run.
    Column("owner_id", UUID(as_uuid=True)),
    Column("lease_expires_at", UTCDateTime),
    Column("fence", BigInteger, nullable=False, server_default=text("0")),
    Column("planning", Boolean, nullable=False, server_default=text("false")),
    Column("takeovers", Integer, nullable=False, server_default=text("0")),
    CheckConstraint(_in_list("status", WORKFLOW_STATUSES), name="status"),
    CheckConstraint(_in_list("workflow_type", WORKFLOW_TYPES), name="workflow_type"),
    CheckConstraint("event_sequence >= 0", name="event_sequence"),
)
# Claimers scan the workflows that want a process, oldest first; owners renew by owner_id.
Index("ix_workflows__runnable", workflows.c.created_at, postgresql_where=text(WANTS_TO_RUN_SQL))
Index(
    "ix_workflows__owner_id",
    workflows.c.owner_id,
    postgresql_where=text("owner_id IS NOT NULL"),
)
Index("ix_workflows__issue_id", workflows.c.issue_id)
# Keyset pagination orders by (started_at DESC NULLS LAST, id DESC): the index must match it
# exactly, alone and behind each equality filter the list route offers.
Index(
    "ix_workflows__started_at_id",
    workflows.c.started_at.desc().nulls_last(),
    workflows.c.id.desc(),
)
Index(
    "ix_workflows__status_started_at_id",
    workflows.c.status,
    workflows.c.started_at.desc().nulls_last(),
    workflows.c.id.desc(),
)
Index(
    "ix_workflows__worktree_path_started_at_id",
    workflows.c.worktree_path,
    workflows.c.started_at.desc().nulls_last(),
    workflows.c.id.desc(),
)
# Retention and the usage success counts select finished workflows by completion time.
Index("ix_workflows__completed_at", workflows.c.completed_at)
# At most one running or blocked workflow per worktree; any number may be queued (pending).
Index(
    ACTIVE_WORKTREE_INDEX,
    workflows.c.worktree_path,
    unique=True,
    postgresql_where=text("status IN ('in_progress', 'blocked')"),
)

workflow_log = Table(
    "workflow_log",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "workflow_id",
        UUID(as_uuid=True),
        ForeignKey("workflows.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("sequence", Integer, nullable=False),
    Column("timestamp", UTCDateTime, nullable=False, server_default=func.now()),
    Column("event_type", Text, nullable=False),
    Column("level", Text, nullable=False),
    Column("agent", Text),
    Column("message", Text, nullable=False),
    Column("data", JSONBData),
    Column("is_error", Boolean, nullable=False, server_default=literal_column("false")),
    # Also the index for "events of a workflow in sequence order".
    UniqueConstraint("workflow_id", "sequence"),
    CheckConstraint(_in_list("level", EVENT_LEVELS), name="level"),
    CheckConstraint("sequence >= 0", name="sequence"),
)
Index(
    "ix_workflow_log__workflow_id_errors",
    workflow_log.c.workflow_id,
    postgresql_where=text("is_error"),
)

token_usage = Table(
    "token_usage",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "workflow_id",
        UUID(as_uuid=True),
        ForeignKey("workflows.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("agent", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("input_tokens", Integer, nullable=False),
    Column("output_tokens", Integer, nullable=False),
    Column("cache_read_tokens", Integer, server_default=text("0")),
    Column("cache_creation_tokens", Integer, server_default=text("0")),
    Column("cost_usd", Money, nullable=False),
    Column("duration_ms", Integer, nullable=False, server_default=text("0")),
    Column("num_turns", Integer, nullable=False, server_default=text("1")),
    Column("timestamp", UTCDateTime, nullable=False, server_default=func.now()),
    CheckConstraint(
        "input_tokens >= 0 AND output_tokens >= 0 AND cache_read_tokens >= 0 "
        "AND cache_creation_tokens >= 0 AND duration_ms >= 0",
        name="non_negative",
    ),
    CheckConstraint("num_turns >= 1", name="num_turns"),
)
# A workflow's usage in time order (detail page, batch summaries).
Index("ix_token_usage__workflow_id_timestamp", token_usage.c.workflow_id, token_usage.c.timestamp)
# Date-range analytics read only these columns: covering lets them scan the index alone.
Index(
    "ix_token_usage__timestamp",
    token_usage.c.timestamp,
    postgresql_include=[
        "model",
        "workflow_id",
        "cost_usd",
        "input_tokens",
        "output_tokens",
        "duration_ms",
    ],
)

prompts = Table(
    "prompts",
    metadata,
    Column("id", Text, primary_key=True),  # human-readable, e.g. "architect.plan"
    Column("agent", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text),
    # NULL means "use the built-in default". use_alter: prompts and versions refer to each other.
    Column(
        "current_version_id",
        UUID(as_uuid=True),
        ForeignKey("prompt_versions.id", ondelete="SET NULL", use_alter=True),
    ),
)

prompt_versions = Table(
    "prompt_versions",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("prompt_id", Text, ForeignKey("prompts.id"), nullable=False),
    Column("version_number", Integer, nullable=False),
    Column("content", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False, server_default=func.now()),
    Column("change_note", Text),
    # Also serves "versions of a prompt, newest first".
    UniqueConstraint("prompt_id", "version_number"),
    CheckConstraint("version_number >= 1", name="version_number"),
)

workflow_prompt_versions = Table(
    "workflow_prompt_versions",
    metadata,
    Column(
        "workflow_id",
        UUID(as_uuid=True),
        ForeignKey("workflows.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("prompt_id", Text, ForeignKey("prompts.id"), nullable=False),
    Column("version_id", UUID(as_uuid=True), ForeignKey("prompt_versions.id"), nullable=False),
    PrimaryKeyConstraint("workflow_id", "prompt_id"),
)
Index("ix_workflow_prompt_versions__version_id", workflow_prompt_versions.c.version_id)

server_settings = Table(
    "server_settings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("log_retention_days", Integer, nullable=False, server_default=text("30")),
    Column("checkpoint_retention_days", Integer, nullable=False, server_default=text("0")),
    Column("websocket_idle_timeout_seconds", Seconds, nullable=False, server_default=text("300.0")),
    Column("workflow_start_timeout_seconds", Seconds, nullable=False, server_default=text("60.0")),
    Column("max_concurrent", Integer, nullable=False, server_default=text("5")),
    Column("stream_tool_results", Boolean, nullable=False, server_default=literal_column("false")),
    Column("created_at", UTCDateTime, nullable=False, server_default=func.now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=func.now()),
    CheckConstraint("id = 1", name="singleton"),
    CheckConstraint("max_concurrent BETWEEN 1 AND 100", name="max_concurrent"),
    CheckConstraint("log_retention_days >= 1", name="log_retention_days"),
    CheckConstraint("checkpoint_retention_days >= -1", name="checkpoint_retention_days"),
    CheckConstraint(
        "websocket_idle_timeout_seconds > 0 AND workflow_start_timeout_seconds > 0",
        name="timeouts",
    ),
)

profiles = Table(
    "profiles",
    metadata,
    Column("id", Text, primary_key=True),  # the profile name
    Column("tracker", Text, nullable=False, server_default="noop"),
    Column("working_dir", Text, nullable=False),
    Column("plan_output_dir", Text, nullable=False, server_default="docs/plans"),
    Column(
        "plan_path_pattern",
        Text,
        nullable=False,
        server_default="docs/plans/{date}-{issue_key}.md",
    ),
    Column("agents", JSONBData, nullable=False),
    Column("is_active", Boolean, nullable=False, server_default=literal_column("false")),
    Column("created_at", UTCDateTime, nullable=False, server_default=func.now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=func.now()),
)
# At most one active profile: every active row has the same key (true), so a second clashes.
Index(
    SINGLE_ACTIVE_PROFILE_INDEX,
    profiles.c.is_active,
    unique=True,
    postgresql_where=text("is_active"),
)

brainstorm_sessions = Table(
    "brainstorm_sessions",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("profile_id", Text, nullable=False),  # a profile name; no FK, like workflows
    Column("driver_session_id", Text),
    Column("driver_type", Text),
    Column("status", Text, nullable=False, server_default="active"),
    Column("topic", Text),
    Column("created_at", UTCDateTime, nullable=False, server_default=func.now()),
    Column("updated_at", UTCDateTime, nullable=False, server_default=func.now()),
)
Index("ix_brainstorm_sessions__profile_id", brainstorm_sessions.c.profile_id)
Index("ix_brainstorm_sessions__status", brainstorm_sessions.c.status)
Index("ix_brainstorm_sessions__updated_at", brainstorm_sessions.c.updated_at.desc())

brainstorm_messages = Table(
    "brainstorm_messages",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "session_id",
        UUID(as_uuid=True),
        ForeignKey("brainstorm_sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("sequence", Integer, nullable=False),
    Column("role", Text, nullable=False),
    Column("content", Text, nullable=False),
    Column("parts", JSONBData),
    Column("created_at", UTCDateTime, nullable=False, server_default=func.now()),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("cost_usd", Money),
    # Legacy "priming message" flag; kept for shape, never written by the repositories.
    Column("is_system", Boolean, nullable=False, server_default=literal_column("false")),
    # Also the index for "messages of a session in order".
    UniqueConstraint("session_id", "sequence"),
)

brainstorm_artifacts = Table(
    "brainstorm_artifacts",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column(
        "session_id",
        UUID(as_uuid=True),
        ForeignKey("brainstorm_sessions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("type", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("title", Text),
    Column("created_at", UTCDateTime, nullable=False, server_default=func.now()),
)
Index("ix_brainstorm_artifacts__session_id", brainstorm_artifacts.c.session_id)

APP_TABLES = tuple(metadata.sorted_tables)


# Every `amelia serve` process sharing the database (database/process_registry.py).
server_processes = Table(
    "server_processes",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("hostname", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("address", Text),
    Column("version", Text, nullable=False),
    Column("started_at", UTCDateTime, nullable=False, server_default=func.now()),
    Column("heartbeat_at", UTCDateTime, nullable=False, server_default=func.now()),
    Column("stopped_at", UTCDateTime),
)


# -- Derived figures, maintained by triggers (revision 5d1e0c7a9b21) -------------------------
# Usage analytics and the list's `total` read these instead of scanning token_usage or
# workflows. Triggers on token_usage and workflows keep them exact in the writer's own
# transaction (SQL in that revision; `SELECT amelia_usage_rebuild()` recomputes them all).
# No foreign keys: rows leave through the token_usage triggers, which need them until then.

# Exact sums can pass NUMERIC(10,6), the limit of one row's cost.
TotalMoney = Numeric(20, 6, asdecimal=True)

# One row per (workflow, model, UTC day) with usage, and what it adds to the distinct
# counts below: a workflow is counted on each of its days, keyed by its previous day with
# usage (`-infinity` for none), so "workflows with usage in [s, e]" is the sum over days in
# [s, e] of the entries whose previous day is before s. `day_lead` marks the row that stands
# for (workflow, day) in the all-model count; `counted` says its keys are in the counts.
usage_workflow_days = Table(
    "usage_workflow_days",
    metadata,
    Column("workflow_id", UUID(as_uuid=True), nullable=False),
    Column("model", Text, nullable=False),
    Column("day", Date, nullable=False),
    Column("calls", Integer, nullable=False),
    Column("counted", Boolean, nullable=False),
    Column("completed", Boolean, nullable=False),
    Column("model_prev_day", Date, nullable=False),
    Column("day_lead", Boolean, nullable=False),
    Column("workflow_prev_day", Date, nullable=False),
    PrimaryKeyConstraint("workflow_id", "model", "day"),
)

# Sums per (UTC day, model): totals, trends and the previous period's cost.
usage_day_totals = Table(
    "usage_day_totals",
    metadata,
    Column("day", Date, nullable=False),
    Column("model", Text, nullable=False),
    Column("calls", BigInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cost_usd", TotalMoney, nullable=False),
    Column("duration_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("day", "model"),
)

# Distinct-workflow counts: (day, previous day with usage) -> workflows, all models.
usage_day_workflows = Table(
    "usage_day_workflows",
    metadata,
    Column("day", Date, nullable=False),
    Column("prev_day", Date, nullable=False),
    Column("workflows", Integer, nullable=False),
    PrimaryKeyConstraint("day", "prev_day"),
)

# The same per model, split by whether the workflow is completed now.
usage_day_model_workflows = Table(
    "usage_day_model_workflows",
    metadata,
    Column("day", Date, nullable=False),
    Column("model", Text, nullable=False),
    Column("prev_day", Date, nullable=False),
    Column("completed", Boolean, nullable=False),
    Column("workflows", Integer, nullable=False),
    PrimaryKeyConstraint("day", "model", "prev_day", "completed"),
)

# A workflow's usage totals (list pages).
usage_workflow_totals = Table(
    "usage_workflow_totals",
    metadata,
    Column("workflow_id", UUID(as_uuid=True), primary_key=True),
    Column("calls", BigInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cache_read_tokens", BigInteger, nullable=False),
    Column("cost_usd", TotalMoney, nullable=False),
    Column("duration_ms", BigInteger, nullable=False),
    Column("num_turns", BigInteger, nullable=False),
)

# Workflows per status: the list's exact `total` without counting rows.
workflow_status_counts = Table(
    "workflow_status_counts",
    metadata,
    Column("status", Text, primary_key=True),
    Column("workflows", BigInteger, nullable=False),
)

# The usage summary counts workflows completed in a range: an index-only count.
Index(
    "ix_workflows__completed_at__completed",
    workflows.c.completed_at,
    postgresql_where=text("status = 'completed'"),
)

DERIVED_TABLES = (
    usage_workflow_days,
    usage_day_totals,
    usage_day_workflows,
    usage_day_model_workflows,
    usage_workflow_totals,
    workflow_status_counts,
)
