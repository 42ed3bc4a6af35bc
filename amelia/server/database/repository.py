"""`WorkflowRepository`: workflow rows, plus the event log, token usage and usage analytics.

The event-log, token-usage and analytics methods live in their own modules (one job each)
and are mixed in here so callers keep the single `WorkflowRepository(db)` of the spec.
"""

from __future__ import annotations

from amelia.server.database.event_log import EventLogMixin
from amelia.server.database.token_usage import TokenUsageMixin
from amelia.server.database.usage_analytics import UsageAnalyticsMixin


class WorkflowRepository(EventLogMixin, TokenUsageMixin, UsageAnalyticsMixin):
    """Workflow persistence (spec data-layer.md section 4.1)."""
