"""Placeholder: filled in by the repositories work."""

from amelia.server.database.base import RepositoryBase


class EventLogMixin(RepositoryBase):
    """Part of WorkflowRepository."""
