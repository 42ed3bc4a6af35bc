"""Token usage of agent calls, the per-workflow summary, and model pricing.

Money is exact inside the server: `TokenUsage.cost_usd` is a `Decimal` with the six decimal
places of the `token_usage.cost_usd` NUMERIC(10,6) column, and summaries add decimals, not
floats. JSON payloads carry plain floats, as the dashboard expects.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal
from types import MappingProxyType
from typing import Annotated, NamedTuple

from pydantic import AwareDatetime, BaseModel, Field, PlainSerializer, field_validator

# The precision of the `cost_usd` column, NUMERIC(10, 6).
COST_QUANTUM = Decimal("0.000001")
MAX_COST_USD = Decimal("9999.999999")

DEFAULT_MODEL = "claude-sonnet-4-5-20251101"

_TOKENS_PER_PRICE_UNIT = Decimal(1_000_000)


def quantize_cost(value: Decimal) -> Decimal:
    """Round a cost to the column's six decimal places, half away from zero like PostgreSQL."""
    return value.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


# A Decimal in Python, a float in JSON mode (`model_dump(mode="json")`, API responses).
UsdDecimal = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]


class TokenUsage(BaseModel):
    """Tokens, cost and time of one agent call (one `token_usage` row).

    `input_tokens` includes the tokens read from the prompt cache (`cache_read_tokens`);
    `cache_creation_tokens` are counted separately.
    """

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    workflow_id: uuid.UUID
    agent: str
    model: str = DEFAULT_MODEL
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cache_read_tokens: int = Field(default=0, ge=0)
    cache_creation_tokens: int = Field(default=0, ge=0)
    cost_usd: UsdDecimal = Field(ge=0)
    duration_ms: int = Field(default=0, ge=0)
    num_turns: int = Field(default=1, ge=1)
    timestamp: AwareDatetime

    @field_validator("cost_usd", mode="after")
    @classmethod
    def _six_decimals(cls, value: Decimal) -> Decimal:
        # Keep what the column will hold, so a saved usage reads back equal to itself.
        return quantize_cost(value)


class TokenSummary(BaseModel):
    """Totals of a workflow's token usage, with the rows they were summed from.

    Cache-creation tokens are not totalled (as upstream).
    """

    total_input_tokens: int = 0
    total_output_tokens: int = 0
    total_cache_read_tokens: int = 0
    total_cost_usd: float = 0.0
    total_duration_ms: int = 0
    total_turns: int = 0
    breakdown: list[TokenUsage] = Field(default_factory=list)

    @classmethod
    def from_usages(cls, usages: Iterable[TokenUsage]) -> TokenSummary:
        """Sum usages (cost exactly, as decimals) and keep them, in order, as the breakdown.

        Args:
            usages: the rows to total, usually one workflow's in timestamp order.

        Returns:
            The summary; all totals are 0 when `usages` is empty.
        """
        rows = list(usages)
        return cls(
            total_input_tokens=sum(u.input_tokens for u in rows),
            total_output_tokens=sum(u.output_tokens for u in rows),
            total_cache_read_tokens=sum(u.cache_read_tokens for u in rows),
            total_cost_usd=float(sum((u.cost_usd for u in rows), Decimal(0))),
            total_duration_ms=sum(u.duration_ms for u in rows),
            total_turns=sum(u.num_turns for u in rows),
            breakdown=rows,
        )


class ModelPricing(NamedTuple):
    """List prices in USD per million tokens."""

    input: Decimal
    output: Decimal
    cache_read: Decimal
    cache_write: Decimal


def _price(input_: str, output: str, cache_read: str, cache_write: str) -> ModelPricing:
    return ModelPricing(Decimal(input_), Decimal(output), Decimal(cache_read), Decimal(cache_write))


_SONNET = _price("3", "15", "0.30", "3.75")
_OPUS_4_5 = _price("5", "25", "0.50", "6.25")
_OPUS_4 = _price("15", "75", "1.50", "18.75")
_HAIKU_4_5 = _price("1", "5", "0.10", "1.25")

# Public list prices (late 2025). Anthropic's cache write is the 5-minute rate; providers
# without a cache-write surcharge (OpenAI, Google) charge writes at the input rate. Dated ids
# and provider prefixes resolve to these entries (see `pricing_for`).
MODEL_PRICING: Mapping[str, ModelPricing] = MappingProxyType(
    {
        "claude-opus-4-5": _OPUS_4_5,
        "claude-opus-4-1": _OPUS_4,
        "claude-opus-4-0": _OPUS_4,
        "claude-opus-4": _OPUS_4,
        "claude-sonnet-4-5": _SONNET,
        "claude-sonnet-4-0": _SONNET,
        "claude-sonnet-4": _SONNET,
        "claude-3-7-sonnet": _SONNET,
        "claude-haiku-4-5": _HAIKU_4_5,
        "claude-3-5-haiku": _price("0.80", "4", "0.08", "1"),
        # Aliases the Claude CLI accepts.
        "opus": _OPUS_4_5,
        "sonnet": _SONNET,
        "haiku": _HAIKU_4_5,
        "gpt-5": _price("1.25", "10", "0.125", "1.25"),
        "gpt-5-mini": _price("0.25", "2", "0.025", "0.25"),
        "gpt-5-nano": _price("0.05", "0.40", "0.005", "0.05"),
        "gpt-4.1": _price("2", "8", "0.50", "2"),
        "gemini-2.5-pro": _price("1.25", "10", "0.125", "1.25"),
        "gemini-2.5-flash": _price("0.30", "2.50", "0.03", "0.30"),
    }
)

# Unknown models are priced like Claude Sonnet 4.5, the default model: an estimate in the
# right range beats reporting zero.
DEFAULT_PRICING = _SONNET

_DATE_SUFFIX = re.compile(r"-\d{8}$")


def pricing_for(model: str) -> ModelPricing:
    """The prices of a model id, tolerating provider prefixes and dated snapshots.

    `anthropic/claude-sonnet-4.5` and `claude-sonnet-4-5-20250929` both resolve to
    `claude-sonnet-4-5`.

    Args:
        model: a model id as a driver reports it.

    Returns:
        Its prices, or `DEFAULT_PRICING` for a model not in `MODEL_PRICING`.
    """
    name = model.strip().lower().rsplit("/", 1)[-1]
    for candidate in (name, _DATE_SUFFIX.sub("", name)):
        for spelling in (candidate, candidate.replace(".", "-")):
            found = MODEL_PRICING.get(spelling)
            if found is not None:
                return found
    return DEFAULT_PRICING


def calculate_token_cost(usage: TokenUsage) -> Decimal:
    """The list-price cost of a usage, in USD, rounded to six decimals.

    Input tokens read from the cache are charged at the cache-read rate, the rest of the
    input at the input rate; cache-creation tokens at the cache-write rate.

    Args:
        usage: the usage to price (its `model` chooses the rates).

    Returns:
        The cost as a `Decimal` with six decimal places.
    """
    prices = pricing_for(usage.model)
    uncached_input = max(usage.input_tokens - usage.cache_read_tokens, 0)
    total = (
        uncached_input * prices.input
        + usage.cache_read_tokens * prices.cache_read
        + usage.cache_creation_tokens * prices.cache_write
        + usage.output_tokens * prices.output
    )
    return quantize_cost(total / _TOKENS_PER_PRICE_UNIT)
