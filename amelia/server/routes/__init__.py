"""HTTP and WebSocket routes, registered on the app in one place."""

from __future__ import annotations

from fastapi import FastAPI


def register_routes(app: FastAPI) -> None:
    """Include every router (the order does not matter: prefixes do not overlap)."""
    from amelia.server.routes import (
        brainstorm,
        config,
        health,
        prompts,
        settings,
        usage,
        websocket,
        workflows,
    )

    for module in (health, workflows, usage, settings, config, prompts, brainstorm, websocket):
        app.include_router(module.router)
    # Parts with a life of their own. Order matters: hooks stop in reverse, so brainstorm
    # (a producer) stops before the WebSocket manager closes the sockets.
    websocket.install(app)
    brainstorm.install(app)
    # The browser dashboard at `/` (static files; after the API so nothing shadows it).
    from amelia.server import dashboard

    dashboard.install(app)
