"""Placeholder: filled in by the repositories work."""

from amelia.server.database.base import RepositoryBase


class TokenUsageMixin(RepositoryBase):
    """Part of WorkflowRepository."""
