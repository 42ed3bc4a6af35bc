"""Server lifecycle services: retention (and, later, start-up/shutdown helpers)."""

from amelia.server.lifecycle.retention import (
    RETENTION_LOCK_KEY,
    CleanupResult,
    LogRetentionService,
)

__all__ = ["RETENTION_LOCK_KEY", "CleanupResult", "LogRetentionService"]
