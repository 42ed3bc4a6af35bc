"""`GET /api/config`: the active profile and the live concurrency limit (spec server.md 2.4)."""

from __future__ import annotations

from fastapi import APIRouter

from amelia.server.dependencies import Profiles, Settings
from amelia.server.models.settings_api import ConfigResponse

router = APIRouter(prefix="/api/config", tags=["config"])


@router.get("")
async def get_config(profiles: Profiles, settings: Settings) -> ConfigResponse:
    """Working dir and name of the active profile, its main agent, and `max_concurrent`.

    Without an active profile the strings are empty and `active_profile_info` is null.
    """
    # Two reads, one pool checkout.
    async with profiles.db.connection() as conn:
        active = await profiles.bind(conn).get_active_profile()
        current = await settings.bind(conn).get_server_settings()
    return ConfigResponse.build(active, current.max_concurrent)
