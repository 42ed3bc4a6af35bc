"""FastAPI dependencies: services and per-request repositories from `app.state`.

All are `async def`: FastAPI runs a plain `def` dependency in a worker thread, and the
thread hand-off cost more than the rest of a cheap request's dependencies together.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from amelia.server.database.brainstorm_repository import BrainstormRepository
from amelia.server.database.profile_repository import ProfileRepository
from amelia.server.database.prompt_repository import PromptRepository
from amelia.server.database.repository import WorkflowRepository
from amelia.server.database.settings_repository import SettingsRepository
from amelia.server.orchestrator.service import OrchestratorService
from amelia.server.services import AppServices


async def get_services(request: Request) -> AppServices:
    services = getattr(request.app.state, "services", None)
    if services is None:
        raise RuntimeError("the server is not started (lifespan has not run)")
    return services  # type: ignore[no-any-return]


Services = Annotated[AppServices, Depends(get_services)]


async def get_repository(services: Services) -> WorkflowRepository:
    return WorkflowRepository(services.db)


async def get_settings_repository(services: Services) -> SettingsRepository:
    return SettingsRepository(services.db)


async def get_profile_repository(services: Services) -> ProfileRepository:
    return ProfileRepository(services.db)


async def get_prompt_repository(services: Services) -> PromptRepository:
    return PromptRepository(services.db)


async def get_brainstorm_repository(services: Services) -> BrainstormRepository:
    return BrainstormRepository(services.db)


async def get_orchestrator(services: Services) -> OrchestratorService:
    return services.orchestrator


Repository = Annotated[WorkflowRepository, Depends(get_repository)]
Settings = Annotated[SettingsRepository, Depends(get_settings_repository)]
Profiles = Annotated[ProfileRepository, Depends(get_profile_repository)]
Prompts = Annotated[PromptRepository, Depends(get_prompt_repository)]
Brainstorms = Annotated[BrainstormRepository, Depends(get_brainstorm_repository)]
Orchestrator = Annotated[OrchestratorService, Depends(get_orchestrator)]
