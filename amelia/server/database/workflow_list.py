"""The workflow list: counts and list pages with usage totals (part of `WorkflowRepository`).

`total` stays exact without counting rows: per-status counts are kept by triggers on
`workflows` (`workflow_status_counts`), and a worktree filter counts through the worktree
index. A list page is one statement on the fast path: the page's rows, each workflow's
usage totals (`usage_workflow_totals`, also kept by triggers) and the total.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ScalarSelect, bindparam, func, select, true

from amelia.server.database.base import RepositoryBase
from amelia.server.database.fast_query import FastQuery
from amelia.server.database.schema import usage_workflow_totals, workflow_status_counts, workflows
from amelia.server.database.workflow_rows import (
    WorkflowId,
    _statement_errors,
    list_filters,
    parse_workflow_id,
)
from amelia.server.models.state import WorkflowStatus

_W = workflows
_USAGE = usage_workflow_totals
_COUNTS = workflow_status_counts

# Matches ix_workflows__started_at_id (and the status / worktree_path variants) exactly.
_LIST_ORDER = (_W.c.started_at.desc().nulls_last(), _W.c.id.desc())


@dataclass(frozen=True, slots=True)
class WorkflowListRow:
    """One row of a list page: the workflow's list columns and its usage totals.

    The usage fields are None when the workflow has no token usage.
    """

    id: uuid.UUID
    issue_id: str
    worktree_path: str
    profile_id: str | None
    status: WorkflowStatus
    created_at: datetime
    started_at: datetime | None
    total_cost_usd: Decimal | None
    total_tokens: int | None
    total_duration_ms: int | None


@dataclass(frozen=True, slots=True)
class WorkflowListPage:
    """Up to `limit` rows in list order, and how many rows match the filters in all."""

    rows: list[WorkflowListRow]
    total: int


def _count(by_status: bool, by_worktree: bool) -> ScalarSelect[Any]:
    """How many workflows match the filters, as a scalar subquery."""
    if by_worktree:
        # Rows of one worktree, through ix_workflows__worktree_path_started_at_id.
        counted = select(func.count()).where(_W.c.worktree_path == bindparam("worktree_path"))
        if by_status:
            counted = counted.where(_W.c.status == bindparam("status"))
        return counted.scalar_subquery()
    total = select(func.coalesce(func.sum(_COUNTS.c.workflows), 0))
    if by_status:
        total = total.where(_COUNTS.c.status == bindparam("status"))
    return total.scalar_subquery()


@functools.cache
def _count_query(by_status: bool, by_worktree: bool) -> FastQuery:
    return FastQuery(select(_count(by_status, by_worktree).label("total")))


@functools.cache
def _page_query(by_status: bool, by_worktree: bool, with_cursor: bool) -> FastQuery:
    """One list page with usage totals and the total, built once per filter combination.

    The total is a one-row subquery left-joined to the page, so an empty page still
    brings it back (as one row whose page columns are NULL).
    """
    page = select(
        _W.c.id,
        _W.c.issue_id,
        _W.c.worktree_path,
        _W.c.profile_id,
        _W.c.status,
        _W.c.created_at,
        _W.c.started_at,
        _USAGE.c.cost_usd,
        (_USAGE.c.input_tokens + _USAGE.c.output_tokens).label("tokens"),
        _USAGE.c.duration_ms,
    ).select_from(_W.outerjoin(_USAGE, _USAGE.c.workflow_id == _W.c.id))
    # The cursor is a row comparison: one index range condition, so deep pages cost what
    # page 1 does.
    page = list_filters(page, by_status, by_worktree, with_cursor)
    rows = page.order_by(*_LIST_ORDER).limit(bindparam("limit")).subquery("page")
    total = select(_count(by_status, by_worktree).label("total")).subquery("total")
    statement = (
        select(total.c.total, rows)
        .select_from(total.outerjoin(rows, true()))
        .order_by(rows.c.started_at.desc().nulls_last(), rows.c.id.desc())
    )
    return FastQuery(statement)


def _filter_params(status: WorkflowStatus | None, worktree_path: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if status is not None:
        params["status"] = WorkflowStatus(status).value
    if worktree_path is not None:
        params["worktree_path"] = worktree_path
    return params


def _row(record: dict[str, Any]) -> WorkflowListRow:
    tokens = record["tokens"]
    duration = record["duration_ms"]
    return WorkflowListRow(
        id=record["id"],
        issue_id=record["issue_id"],
        worktree_path=record["worktree_path"],
        profile_id=record["profile_id"],
        status=WorkflowStatus(record["status"]),
        created_at=record["created_at"],
        started_at=record["started_at"],
        total_cost_usd=record["cost_usd"],
        total_tokens=int(tokens) if tokens is not None else None,
        total_duration_ms=int(duration) if duration is not None else None,
    )


class WorkflowListMixin(RepositoryBase):
    """Counting and listing workflows for the list route (spec data-layer.md 4.1, 12)."""

    async def count_workflows(
        self, status: WorkflowStatus | None = None, worktree_path: str | None = None
    ) -> int:
        """How many workflows `list_workflows` would page through with these filters."""
        query = _count_query(status is not None, worktree_path is not None)
        row = await self._fast_one(query, _filter_params(status, worktree_path))
        return int(row["total"]) if row is not None else 0

    async def list_workflow_page(
        self,
        status: WorkflowStatus | None = None,
        worktree_path: str | None = None,
        limit: int = 20,
        after_started_at: datetime | None = None,
        after_id: WorkflowId | None = None,
    ) -> WorkflowListPage:
        """A page of `list_workflows` with each row's usage totals, and the filtered total.

        Same filters, order and cursor as `list_workflows` (the cursor applies only when
        both values are given); `total` is what `count_workflows` returns for the filters.
        One statement.

        Raises:
            NaiveDatetimeError: `after_started_at` has no time zone.
            ValueError: `after_id` is malformed, or `limit` is below 1.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        params = _filter_params(status, worktree_path)
        params["limit"] = limit
        with_cursor = after_started_at is not None and after_id is not None
        if after_started_at is not None and after_id is not None:
            params["after_started_at"] = after_started_at
            params["after_id"] = parse_workflow_id(after_id)
        query = _page_query(status is not None, worktree_path is not None, with_cursor)
        with _statement_errors():
            records = await self._fast_all(query, params)
        total = int(records[0]["total"]) if records else 0
        return WorkflowListPage(
            rows=[_row(record) for record in records if record["id"] is not None], total=total
        )
