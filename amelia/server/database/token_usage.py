"""Token usage rows of `WorkflowRepository`: record one, read a workflow's, summarise many.

Every method is one statement (one round trip). Costs stay `Decimal` from the NUMERIC(10,6)
column to the summaries, which add them exactly.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import bindparam, insert, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.sql.expression import any_

from amelia.server.database.base import RepositoryBase
from amelia.server.database.errors import (
    DuplicateKeyError,
    ReferenceNotFoundError,
    translate_integrity_errors,
)
from amelia.server.database.fast_query import FastQuery
from amelia.server.database.lost_connections import retry_if_connection_lost
from amelia.server.database.schema import token_usage
from amelia.server.exceptions import WorkflowNotFoundError
from amelia.server.models.tokens import MAX_COST_USD, TokenSummary, TokenUsage, quantize_cost

# Statements are built once; only their parameters change (SQLAlchemy's compiled cache and
# asyncpg's prepared statements then serve every call).
_INSERT = insert(token_usage)

_BY_WORKFLOW = (
    select(token_usage)
    .where(token_usage.c.workflow_id == bindparam("workflow_id"))
    .order_by(token_usage.c.timestamp, token_usage.c.id)
)

# `= ANY(array)`: one statement text whatever the number of ids (an expanding IN list would
# give every list length its own prepared statement).
_BY_WORKFLOWS = (
    select(token_usage)
    .where(
        token_usage.c.workflow_id
        == any_(bindparam("workflow_ids", type_=ARRAY(UUID(as_uuid=True))))
    )
    .order_by(token_usage.c.workflow_id, token_usage.c.timestamp, token_usage.c.id)
)
_FAST_BY_WORKFLOWS = FastQuery(_BY_WORKFLOWS)

_Model = TypeVar("_Model", bound=BaseModel)


def _trusted(model: type[_Model], values: dict[str, Any]) -> _Model:
    """A model instance from values that already have the model's types, unvalidated.

    What `model_construct` does, without its per-field default handling (every field is
    given here): building the rows of a 20-workflow batch that way took most of the call.
    """
    instance = model.__new__(model)
    object.__setattr__(instance, "__dict__", values)
    object.__setattr__(instance, "__pydantic_fields_set__", set(values))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance


def _row_to_token_usage(row: Mapping[Any, Any]) -> TokenUsage:
    """The one mapper from a `token_usage` row to `TokenUsage`.

    Unvalidated: the row's types are the model's already (the columns and their constraints
    guarantee them). Values in field order, as the model keeps them.
    """
    return _trusted(
        TokenUsage,
        {
            "id": row["id"],
            "workflow_id": row["workflow_id"],
            "agent": row["agent"],
            "model": row["model"],
            "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            # Nullable columns (upstream schema); NULL means none.
            "cache_read_tokens": row["cache_read_tokens"] or 0,
            "cache_creation_tokens": row["cache_creation_tokens"] or 0,
            "cost_usd": row["cost_usd"],
            "duration_ms": row["duration_ms"],
            "num_turns": row["num_turns"],
            "timestamp": row["timestamp"],
        },
    )


def _summary(usages: list[TokenUsage]) -> TokenSummary:
    """`TokenSummary.from_usages` in one pass over trusted rows (cost summed exactly)."""
    input_tokens = output_tokens = cache_read = duration = turns = 0
    cost = Decimal(0)
    for usage in usages:
        input_tokens += usage.input_tokens
        output_tokens += usage.output_tokens
        cache_read += usage.cache_read_tokens
        cost += usage.cost_usd
        duration += usage.duration_ms
        turns += usage.num_turns
    return _trusted(
        TokenSummary,
        {
            "total_input_tokens": input_tokens,
            "total_output_tokens": output_tokens,
            "total_cache_read_tokens": cache_read,
            "total_cost_usd": float(cost),
            "total_duration_ms": duration,
            "total_turns": turns,
            "breakdown": usages,
        },
    )


def _storable_cost(cost: Decimal | float | int) -> Decimal:
    """The cost as the column will hold it; ValueError when NUMERIC(10,6) cannot hold it.

    Re-checked here because `model_copy(update=...)` and attribute assignment skip the
    model's validation.
    """
    value = cost if isinstance(cost, Decimal) else Decimal(str(cost))
    if not value.is_finite():
        raise ValueError(f"cost_usd must be a finite amount, got {cost}")
    stored = quantize_cost(value)
    if stored < 0 or stored > MAX_COST_USD:
        raise ValueError(
            f"cost_usd {cost} is outside what can be stored (0 to {MAX_COST_USD} USD, "
            "six decimal places)"
        )
    return stored


class TokenUsageMixin(RepositoryBase):
    """The token-usage methods of `WorkflowRepository` (spec data-layer.md 4.1, 18-21)."""

    # A duplicate id on the second attempt: the first one was stored before its connection died.
    @retry_if_connection_lost(DuplicateKeyError)
    async def save_token_usage(self, usage: TokenUsage) -> None:
        """Record one agent call's usage (one INSERT).

        Args:
            usage: the usage; all twelve fields are stored.

        Raises:
            WorkflowNotFoundError: `usage.workflow_id` names no workflow.
            ValueError: the cost does not fit NUMERIC(10,6) (over 9999.999999 or negative).
            DuplicateKeyError: a usage with this id already exists.
        """
        values = {
            "id": usage.id,
            "workflow_id": usage.workflow_id,
            "agent": usage.agent,
            "model": usage.model,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_creation_tokens": usage.cache_creation_tokens,
            "cost_usd": _storable_cost(usage.cost_usd),
            "duration_ms": usage.duration_ms,
            "num_turns": usage.num_turns,
            "timestamp": usage.timestamp,
        }
        try:
            async with self._connect() as conn:
                with translate_integrity_errors():
                    await conn.execute(_INSERT, values)
        except ReferenceNotFoundError as exc:
            # The only foreign key of token_usage is the workflow.
            raise WorkflowNotFoundError(usage.workflow_id) from exc

    async def get_token_usage(self, workflow_id: uuid.UUID) -> list[TokenUsage]:
        """A workflow's usage rows, oldest first.

        Args:
            workflow_id: the workflow.

        Returns:
            The rows in timestamp order; `[]` for an unknown workflow or one without usage.
        """
        async with self._connect() as conn:
            result = await conn.execute(_BY_WORKFLOW, {"workflow_id": workflow_id})
            return [_row_to_token_usage(row) for row in result.mappings()]

    async def get_token_summary(self, workflow_id: uuid.UUID) -> TokenSummary | None:
        """A workflow's usage totals with the rows as `breakdown`.

        Args:
            workflow_id: the workflow.

        Returns:
            The summary, or None when the workflow has no usage rows (or does not exist).
        """
        usages = await self.get_token_usage(workflow_id)
        return _summary(usages) if usages else None

    async def get_token_summaries_batch(
        self, workflow_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, TokenSummary | None]:
        """Summaries of several workflows in one query (list pages use it to avoid N+1).

        Args:
            workflow_ids: the workflows; duplicates are harmless.

        Returns:
            Every requested id as a key (in request order), mapped to its summary or to
            None when it has no usage. `{}` for no ids, without touching the database.
        """
        if not workflow_ids:
            return {}
        grouped: dict[uuid.UUID, list[TokenUsage]] = {wid: [] for wid in workflow_ids}
        for row in await self._fast_all(_FAST_BY_WORKFLOWS, {"workflow_ids": list(grouped)}):
            grouped[row["workflow_id"]].append(_row_to_token_usage(row))
        return {wid: _summary(rows) if rows else None for wid, rows in grouped.items()}
