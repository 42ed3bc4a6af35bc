"""`AppServices`: what the running server holds, built by the lifespan, used by the routes.

Routes reach it through `request.app.state.services` (see `dependencies.py`); nothing lives
in module-level singletons, so a test can run several apps in one process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from amelia.server.config import ServerConfig
from amelia.server.database.connection import Database
from amelia.server.events.bus import EventBus

if TYPE_CHECKING:
    from amelia.server.checkpoint import CheckpointStore
    from amelia.server.orchestrator.service import OrchestratorService


@dataclass
class AppServices:
    """The server's long-lived parts."""

    config: ServerConfig
    db: Database
    bus: EventBus
    checkpoints: CheckpointStore
    orchestrator: OrchestratorService
    database_description: str
    extras: dict[str, Any] = field(default_factory=dict)
    shutting_down: bool = False
