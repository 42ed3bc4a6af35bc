"""Workflow routes, `/api/workflows` (spec server.md 2.1).

Reads go straight to the repository; every state change goes through the orchestrator,
which checks and changes a workflow's status in one step. Routes that make several
repository calls bind the repository to one connection (`repo.bind(conn)`), so a list page
costs one pooled checkout however many statements it runs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status

from amelia.server.database.repository import WorkflowRepository
from amelia.server.database.workflow_list import WorkflowListRow
from amelia.server.dependencies import Orchestrator, Repository, Services
from amelia.server.exceptions import WorkflowConflictError, WorkflowNotFoundError
from amelia.server.models.state import PlanCache, ServerExecutionState, WorkflowStatus
from amelia.server.models.tokens import TokenSummary
from amelia.server.models.workflow_api import (
    ActionResponse,
    BatchStartRequest,
    BatchStartResponse,
    CreateReviewWorkflowRequest,
    CreateWorkflowRequest,
    CreateWorkflowResponse,
    RejectRequest,
    SetPlanRequest,
    SetPlanResponse,
    WorkflowDetailResponse,
    WorkflowListResponse,
    WorkflowSummary,
)
from amelia.server.orchestrator.service import OrchestratorService

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/workflows", tags=["workflows"])

RECENT_EVENTS = 50
INVALID_CURSOR = "Invalid cursor format"


# ------------------------------------------------------------------------------ helpers


def encode_cursor(row: ServerExecutionState | WorkflowListRow) -> str:
    """The cursor after `row`: base64 of `"<started_at ISO>|<id>"` (row must have started)."""
    if row.started_at is None:
        raise ValueError("a cursor needs a started_at")
    return base64.b64encode(f"{row.started_at.isoformat()}|{row.id}".encode()).decode("ascii")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The (started_at, id) a cursor points after.

    Both base64 alphabets are accepted (a client may have made it URL-safe).

    Raises:
        HTTPException: 400 `{"detail": "Invalid cursor format"}` for anything malformed.
    """
    try:
        standard = cursor.strip().replace("-", "+").replace("_", "/")
        text = base64.b64decode(standard, validate=True).decode("utf-8")
        started, raw_id = text.split("|")
        started_at = datetime.fromisoformat(started)
        workflow_id = uuid.UUID(raw_id)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, INVALID_CURSOR) from exc
    if started_at.tzinfo is None:
        # Our cursors always carry an offset; a naive time cannot be ordered against UTC.
        raise HTTPException(status.HTTP_400_BAD_REQUEST, INVALID_CURSOR)
    return started_at, workflow_id


def _summary(row: ServerExecutionState, usage: TokenSummary | None) -> WorkflowSummary:
    return WorkflowSummary(
        id=row.id,
        issue_id=row.issue_id,
        worktree_path=row.worktree_path,
        profile=row.profile_id,
        status=row.workflow_status,
        created_at=row.created_at,
        started_at=row.started_at,
        total_cost_usd=usage.total_cost_usd if usage else None,
        total_tokens=usage.total_input_tokens + usage.total_output_tokens if usage else None,
        total_duration_ms=usage.total_duration_ms if usage else None,
    )


def _list_summary(row: WorkflowListRow) -> WorkflowSummary:
    cost = row.total_cost_usd
    return WorkflowSummary(
        id=row.id,
        issue_id=row.issue_id,
        worktree_path=row.worktree_path,
        profile=row.profile_id,
        status=row.status,
        created_at=row.created_at,
        started_at=row.started_at,
        total_cost_usd=float(cost) if cost is not None else None,
        total_tokens=row.total_tokens,
        total_duration_ms=row.total_duration_ms,
    )


async def _summaries(
    repo: WorkflowRepository, rows: Sequence[ServerExecutionState]
) -> list[WorkflowSummary]:
    """Rows as summaries, with every row's usage from one batch query."""
    usage = await repo.get_token_summaries_batch([row.id for row in rows])
    return [_summary(row, usage.get(row.id)) for row in rows]


def _resolved(path: str | None) -> str | None:
    # Rows store resolved worktree paths; resolve the filter the same way.
    return None if path is None else str(Path(path).resolve())


async def _plan_markdown(row: ServerExecutionState, plan: PlanCache) -> str | None:
    """The cached plan text, else the plan file's content; None when neither is readable."""
    if plan.plan_markdown:
        return plan.plan_markdown
    if not plan.plan_path:
        return None
    path = Path(plan.plan_path)
    if not path.is_absolute():
        # Plan paths are recorded relative to the workflow's worktree.
        path = Path(row.worktree_path) / path
    try:
        return await asyncio.to_thread(path.read_text, encoding="utf-8", errors="replace")
    except OSError:
        logger.info("plan file %s of workflow %s is not readable", path, row.id)
        return None


async def _queue_then_start(
    orchestrator: OrchestratorService, request: CreateWorkflowRequest
) -> uuid.UUID:
    """Start a workflow that brings a plan or a design: queue it (which keeps them), then
    start it. If it cannot start, the queued row is cancelled rather than left behind."""
    workflow_id = await orchestrator.queue_workflow(
        request.issue_id,
        request.worktree_path,
        request.profile,
        request.task_title,
        request.task_description,
        artifact_path=request.artifact_path,
        plan_file=request.plan_file,
        plan_content=request.plan_content,
    )
    try:
        await orchestrator.start_pending_workflow(workflow_id)
    except Exception as exc:
        try:
            await orchestrator.cancel_workflow(workflow_id, f"Could not start: {exc}")
        except Exception:
            logger.exception("could not cancel workflow %s after a failed start", workflow_id)
        raise
    return workflow_id


# ------------------------------------------------------------------------ collection


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_workflow(
    request: CreateWorkflowRequest, orchestrator: Orchestrator
) -> CreateWorkflowResponse:
    """Create a workflow: start it now, queue it and plan it now, or just queue it."""
    if request.start and (request.has_plan or request.artifact_path is not None):
        workflow_id = await _queue_then_start(orchestrator, request)
        message = "Workflow started"
    elif request.start:
        workflow_id = await orchestrator.start_workflow(
            request.issue_id,
            request.worktree_path,
            request.profile,
            request.driver,
            request.task_title,
            request.task_description,
        )
        message = "Workflow started"
    elif request.plan_now:
        workflow_id = await orchestrator.queue_and_plan_workflow(
            request.issue_id,
            request.worktree_path,
            request.profile,
            request.task_title,
            request.task_description,
        )
        message = "Workflow queued; planning started"
    else:
        workflow_id = await orchestrator.queue_workflow(
            request.issue_id,
            request.worktree_path,
            request.profile,
            request.task_title,
            request.task_description,
            artifact_path=request.artifact_path,
            plan_file=request.plan_file,
            plan_content=request.plan_content,
        )
        message = "Workflow queued"
    return CreateWorkflowResponse(id=workflow_id, message=message)


@router.post("/review", status_code=status.HTTP_201_CREATED)
async def create_review_workflow(
    request: CreateReviewWorkflowRequest, orchestrator: Orchestrator
) -> CreateWorkflowResponse:
    """Start a review of a diff."""
    workflow_id = await orchestrator.start_review_workflow(
        request.diff_content, request.worktree_path, request.profile
    )
    return CreateWorkflowResponse(id=workflow_id, message="Review workflow started")


@router.get("", response_model=WorkflowListResponse)
async def list_workflows(
    repository: Repository,
    workflow_status: Annotated[WorkflowStatus | None, Query(alias="status")] = None,
    worktree: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> Response:
    """A page of workflows, latest started first; `cursor` continues after the last page."""
    after = decode_cursor(cursor) if cursor is not None else None
    # One statement on one pooled connection: the rows (one extra says whether another page
    # exists), their usage totals and the filtered total.
    page = await repository.list_workflow_page(
        status=workflow_status,
        worktree_path=_resolved(worktree),
        limit=limit + 1,
        after_started_at=after[0] if after else None,
        after_id=after[1] if after else None,
    )
    has_more = len(page.rows) > limit
    rows = page.rows[:limit]
    next_cursor = None
    if has_more and rows and rows[-1].started_at is not None:
        next_cursor = encode_cursor(rows[-1])
    # Serialised here, once: FastAPI's response handling would dump the model to Python
    # objects and validate them again, a large share of this request's CPU.
    body = WorkflowListResponse(
        workflows=[_list_summary(row) for row in rows],
        total=page.total,
        cursor=next_cursor,
        has_more=has_more,
    )
    return Response(body.model_dump_json(), media_type="application/json")


@router.get("/active")
async def list_active_workflows(
    services: Services, repository: Repository, worktree: str | None = None
) -> WorkflowListResponse:
    """Every pending, running or blocked workflow (on `worktree` when given)."""
    async with services.db.connection() as conn:
        repo = repository.bind(conn)
        rows = await repo.list_active(_resolved(worktree))
        summaries = await _summaries(repo, rows)
    return WorkflowListResponse(workflows=summaries, total=len(summaries), has_more=False)


@router.post("/start-batch")
async def start_batch(request: BatchStartRequest, orchestrator: Orchestrator) -> BatchStartResponse:
    """Start the given queued workflows, or every queued one (on a worktree); partial
    success is reported per id."""
    started, errors = await orchestrator.start_batch_workflows(
        request.workflow_ids, request.worktree_path
    )
    return BatchStartResponse(started=started, errors=errors)


# ------------------------------------------------------------------------ one workflow


@router.get("/{workflow_id}")
async def get_workflow(
    workflow_id: uuid.UUID, services: Services, repository: Repository
) -> WorkflowDetailResponse:
    """One workflow with its plan, usage totals and its latest events, oldest first."""
    async with services.db.connection() as conn:
        repo = repository.bind(conn)
        row = await repo.get(workflow_id)
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        usage = await repo.get_token_summary(workflow_id)
        events = await repo.get_recent_events(workflow_id, limit=RECENT_EVENTS)
    plan = row.plan_cache or PlanCache()
    return WorkflowDetailResponse(
        id=row.id,
        issue_id=row.issue_id,
        worktree_path=row.worktree_path,
        status=row.workflow_status,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        failure_reason=row.failure_reason,
        goal=plan.goal,
        plan_markdown=await _plan_markdown(row, plan),
        plan_path=plan.plan_path,
        token_usage=usage,
        recent_events=[event.model_dump(mode="json") for event in events],
    )


@router.post("/{workflow_id}/cancel")
async def cancel_workflow(workflow_id: uuid.UUID, orchestrator: Orchestrator) -> ActionResponse:
    """Cancel a pending, running or blocked workflow."""
    await orchestrator.cancel_workflow(workflow_id)
    return ActionResponse(status="cancelled", workflow_id=workflow_id)


@router.post("/{workflow_id}/resume")
async def resume_workflow(workflow_id: uuid.UUID, orchestrator: Orchestrator) -> ActionResponse:
    """Resume a failed workflow from its last checkpoint."""
    await orchestrator.resume_workflow(workflow_id)
    return ActionResponse(status="resumed", workflow_id=workflow_id)


@router.post("/{workflow_id}/approve")
async def approve_workflow(workflow_id: uuid.UUID, orchestrator: Orchestrator) -> ActionResponse:
    """Approve a blocked plan; answers at once while the run continues in the background."""
    await orchestrator.approve_workflow(workflow_id)
    return ActionResponse(status="approved", workflow_id=workflow_id)


@router.post("/{workflow_id}/reject")
async def reject_workflow(
    workflow_id: uuid.UUID, request: RejectRequest, orchestrator: Orchestrator
) -> ActionResponse:
    """Reject a blocked plan; the workflow fails with the feedback as its reason."""
    await orchestrator.reject_workflow(workflow_id, request.feedback)
    return ActionResponse(status="rejected", workflow_id=workflow_id)


@router.post("/{workflow_id}/start", status_code=status.HTTP_202_ACCEPTED)
async def start_workflow(workflow_id: uuid.UUID, orchestrator: Orchestrator) -> ActionResponse:
    """Start a queued workflow.

    Unknown ids and conflicts answer FastAPI's `{"detail": ...}` (as the dashboard
    expects for this route), not the error envelope; 422 and 429 keep the envelope.
    """
    try:
        await orchestrator.start_pending_workflow(workflow_id)
    except WorkflowNotFoundError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from exc
    except WorkflowConflictError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    return ActionResponse(status="started", workflow_id=workflow_id)


@router.post("/{workflow_id}/plan")
async def set_workflow_plan(
    workflow_id: uuid.UUID, request: SetPlanRequest, orchestrator: Orchestrator
) -> SetPlanResponse:
    """Give a queued workflow an external plan (`force` replaces an existing one)."""
    result = await orchestrator.set_workflow_plan(
        workflow_id, request.plan_file, request.plan_content, request.force
    )
    return SetPlanResponse.model_validate(result)


@router.post("/{workflow_id}/replan")
async def replan_workflow(workflow_id: uuid.UUID, orchestrator: Orchestrator) -> ActionResponse:
    """Discard a blocked workflow's plan and let the architect plan again."""
    await orchestrator.replan_workflow(workflow_id)
    return ActionResponse(status="replanning", workflow_id=workflow_id)
