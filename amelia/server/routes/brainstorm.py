"""Brainstorming sessions: `/api/brainstorm/...` (spec server.md 2.6).

Unknown sessions and artifacts answer FastAPI's `{"detail": ...}` 404, as does any
`ValueError` of a handoff (spec). The `BrainstormService` is built at start-up by
`brainstorm_startup_hook` (register it with `install(app)`) and stopped with the lifespan's
exit stack, so shutdown waits for the turns in flight (then cancels them).
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Response, status

from amelia.server.brainstorm import (
    BrainstormArtifactNotFoundError,
    BrainstormServiceStoppedError,
    BrainstormSessionNotFoundError,
)
from amelia.server.brainstorm.service import BrainstormService
from amelia.server.dependencies import Services
from amelia.server.models.brainstorm import BrainstormingSession, SessionStatus
from amelia.server.models.brainstorm_api import (
    CreateSessionRequest,
    HandoffRequest,
    HandoffResponse,
    SendMessageRequest,
    SendMessageResponse,
    SessionCreatedResponse,
    SessionDetailResponse,
)
from amelia.server.services import AppServices

router = APIRouter(prefix="/api/brainstorm", tags=["brainstorm"])

EXTRAS_KEY = "brainstorm"


async def brainstorm_startup_hook(services: AppServices, stack: AsyncExitStack) -> None:
    """Build and start the `BrainstormService`; its stop goes on the lifespan's exit stack.

    Args:
        services: the server's parts; the service is stored in `services.extras["brainstorm"]`.
        stack: the lifespan's exit stack (unwound after the workflows were cancelled).
    """
    service = BrainstormService(services.db, services.bus, services.orchestrator)
    service.start()
    services.extras[EXTRAS_KEY] = service
    stack.push_async_callback(service.stop)


def install(app: FastAPI) -> None:
    """Register `brainstorm_startup_hook` on an app made by `create_app` (idempotent)."""
    if brainstorm_startup_hook not in app.state.startup_hooks:
        app.state.startup_hooks.append(brainstorm_startup_hook)


def get_brainstorm_service(services: Services) -> BrainstormService:
    """The running service (a server whose app lacks the start-up hook is misconfigured)."""
    service = services.extras.get(EXTRAS_KEY)
    if not isinstance(service, BrainstormService):
        raise RuntimeError(
            "the brainstorm service is not started: add brainstorm_startup_hook to "
            "app.state.startup_hooks"
        )
    return service


Brainstorm = Annotated[BrainstormService, Depends(get_brainstorm_service)]


def _not_found(error: LookupError | ValueError) -> HTTPException:
    return HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=str(error))


@router.post("/sessions", status_code=status.HTTP_201_CREATED)
async def create_session(body: CreateSessionRequest, service: Brainstorm) -> SessionCreatedResponse:
    """Start a session with a profile's brainstormer (the profile need not exist yet)."""
    return await service.create_session(body.profile_id, body.topic)


@router.get("/sessions")
async def list_sessions(
    service: Brainstorm,
    profile_id: Annotated[str | None, Query(max_length=100, pattern=r"^[^\x00]*$")] = None,
    session_status: Annotated[SessionStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
) -> list[BrainstormingSession]:
    """Sessions, most recently updated first."""
    return await service.list_sessions(profile_id, session_status, limit)


@router.get("/sessions/{session_id}")
async def get_session(session_id: uuid.UUID, service: Brainstorm) -> SessionDetailResponse:
    """A session with its usage, first 100 messages, artifacts and profile; 404 if unknown."""
    try:
        return await service.get_session_detail(session_id)
    except BrainstormSessionNotFoundError as error:
        raise _not_found(error) from None


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_session(session_id: uuid.UUID, service: Brainstorm) -> Response:
    """Delete a session with its messages and artifacts (204 also when it does not exist)."""
    await service.delete_session(session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/sessions/{session_id}/message", status_code=status.HTTP_202_ACCEPTED)
async def send_message(
    session_id: uuid.UUID, body: SendMessageRequest, service: Brainstorm
) -> SendMessageResponse:
    """Accept a user message; the agent answers in the background (watch the events).

    `message_id` is the id the assistant's reply will be stored (and streamed) under.
    """
    try:
        message_id = await service.send_message(session_id, body.content)
    except BrainstormSessionNotFoundError as error:
        raise _not_found(error) from None
    except BrainstormServiceStoppedError as error:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=str(error)) from None
    return SendMessageResponse(message_id=message_id)


@router.post("/sessions/{session_id}/handoff")
async def handoff(
    session_id: uuid.UUID, body: HandoffRequest, service: Brainstorm
) -> HandoffResponse:
    """Queue a workflow for one of the session's documents and complete the session."""
    try:
        workflow_id = await service.handoff(
            session_id, body.artifact_path, body.issue_title, body.issue_description
        )
    except (BrainstormSessionNotFoundError, BrainstormArtifactNotFoundError, ValueError) as error:
        raise _not_found(error) from None
    return HandoffResponse(workflow_id=workflow_id)
