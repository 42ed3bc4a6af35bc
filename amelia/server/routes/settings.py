"""Settings and profiles: `/api/settings` and `/api/profiles...` (spec server.md 2.3).

Routes that make several repository calls run them on one held connection (one pool checkout
per request). Unknown profiles answer FastAPI's `{"detail": ...}` 404, as the spec shows.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status

from amelia.server.database.errors import DuplicateKeyError
from amelia.server.dependencies import Profiles, Settings
from amelia.server.models.settings_api import (
    PROFILE_ID_MAX_LENGTH,
    PROFILE_ID_PATTERN,
    ProfileCreate,
    ProfileResponse,
    ProfileUpdate,
    ServerSettingsResponse,
    ServerSettingsUpdate,
)

router = APIRouter(prefix="/api", tags=["settings"])

ProfileIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=PROFILE_ID_MAX_LENGTH,
        pattern=PROFILE_ID_PATTERN,
        description="Profile name: lowercase letters, digits, '-' and '_'.",
    ),
]


def _not_found(profile_id: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"Profile not found: {profile_id}")


@router.get("/settings")
async def get_settings(settings: Settings) -> ServerSettingsResponse:
    """The server settings (400 INVALID_VALUE when the settings row is missing)."""
    return ServerSettingsResponse.from_settings(await settings.get_server_settings())


@router.put("/settings")
async def update_settings(body: ServerSettingsUpdate, settings: Settings) -> ServerSettingsResponse:
    """Change some settings; they take effect without a restart (read per use)."""
    updated = await settings.update_server_settings(body.changes())
    return ServerSettingsResponse.from_settings(updated)


@router.get("/profiles")
async def list_profiles(profiles: Profiles) -> list[ProfileResponse]:
    """Every profile, ordered by name, the active one flagged."""
    async with profiles.db.connection() as conn:
        repo = profiles.bind(conn)
        every = await repo.list_profiles()
        active = await repo.get_active_profile()
    active_id = None if active is None else active.name
    return [ProfileResponse.from_profile(p, is_active=p.name == active_id) for p in every]


@router.post("/profiles", status_code=status.HTTP_201_CREATED)
async def create_profile(body: ProfileCreate, profiles: Profiles) -> ProfileResponse:
    """Create an inactive profile; 409 when the name is taken."""
    try:
        created = await profiles.create_profile(body.to_profile())
    except DuplicateKeyError:
        raise HTTPException(status_code=409, detail="Profile already exists") from None
    return ProfileResponse.from_profile(created, is_active=False)


@router.get("/profiles/{profile_id}")
async def get_profile(profile_id: ProfileIdPath, profiles: Profiles) -> ProfileResponse:
    """One profile; 404 when unknown."""
    async with profiles.db.connection() as conn:
        repo = profiles.bind(conn)
        profile = await repo.get_profile(profile_id)
        if profile is None:
            raise _not_found(profile_id)
        active = await repo.get_active_profile()
    is_active = active is not None and active.name == profile.name
    return ProfileResponse.from_profile(profile, is_active=is_active)


@router.put("/profiles/{profile_id}")
async def update_profile(
    profile_id: ProfileIdPath, body: ProfileUpdate, profiles: Profiles
) -> ProfileResponse:
    """Change some fields of a profile (`agents` replaces the whole map); 404 when unknown."""
    async with profiles.db.connection() as conn:
        repo = profiles.bind(conn)
        try:
            updated = await repo.update_profile(profile_id, body.changes())
        except ValueError:
            # The body is validated already: the only ValueError left is "not found".
            raise _not_found(profile_id) from None
        active = await repo.get_active_profile()
    is_active = active is not None and active.name == updated.name
    return ProfileResponse.from_profile(updated, is_active=is_active)


@router.delete("/profiles/{profile_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_profile(profile_id: ProfileIdPath, profiles: Profiles) -> Response:
    """Delete a profile (workflows keep its name); 404 when unknown."""
    if not await profiles.delete_profile(profile_id):
        raise _not_found(profile_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/profiles/{profile_id}/activate")
async def activate_profile(profile_id: ProfileIdPath, profiles: Profiles) -> ProfileResponse:
    """Make this the only active profile; 404 when unknown."""
    async with profiles.db.connection() as conn:
        repo = profiles.bind(conn)
        try:
            await repo.set_active(profile_id)
        except ValueError:
            raise _not_found(profile_id) from None
        profile = await repo.get_profile(profile_id)
    if profile is None:  # deleted between the two statements
        raise _not_found(profile_id)
    return ProfileResponse.from_profile(profile, is_active=True)
