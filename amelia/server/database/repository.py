"""`WorkflowRepository`: workflow rows, the event log, token usage and usage analytics.

Each part lives in its own module (one job each) and is mixed in here, so callers keep the
single `WorkflowRepository(db)` of the spec.
"""

from __future__ import annotations

from amelia.server.database.event_log import EventLogMixin
from amelia.server.database.token_usage import TokenUsageMixin
from amelia.server.database.usage_analytics import UsageAnalyticsMixin
from amelia.server.database.workflow_list import WorkflowListMixin
from amelia.server.database.workflow_rows import WorkflowRowsMixin, parse_workflow_id

__all__ = ["WorkflowRepository", "parse_workflow_id"]


class WorkflowRepository(
    WorkflowRowsMixin, WorkflowListMixin, EventLogMixin, TokenUsageMixin, UsageAnalyticsMixin
):
    """Workflow persistence (spec data-layer.md section 4.1)."""
