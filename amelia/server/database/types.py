"""Column types shared by the schema: aware UTC timestamps, JSONB, exact money.

The JSON encoder also accepts the values our models carry (UUID, datetime, Decimal, Path,
enums), so callers may store `model_dump()` output without a JSON round trip first.
"""

from __future__ import annotations

import enum
import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import PurePath
from typing import Any

from sqlalchemy import DateTime, Numeric
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator


class NaiveDatetimeError(ValueError):
    """A datetime without a time zone was given where an instant is required."""


class UTCDateTime(TypeDecorator[datetime]):
    """TIMESTAMPTZ that refuses naive datetimes and always returns aware UTC values."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise NaiveDatetimeError(
                f"datetime {value.isoformat()} has no time zone; pass an aware datetime"
            )
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # cannot happen for TIMESTAMPTZ, kept as a guard
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _json_default(value: Any) -> Any:
    if isinstance(value, uuid.UUID | PurePath):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def json_dumps(value: Any) -> str:
    """Serialise a value for a JSON/JSONB column (engine-wide `json_serializer`)."""
    return json.dumps(value, default=_json_default, ensure_ascii=False, separators=(",", ":"))


# JSONB whose Python None is SQL NULL (not the JSON literal `null`).
JSONBData = JSONB(none_as_null=True)

# Exact money: NUMERIC(10,6) returned as Decimal; callers convert to float at the API edge.
Money = Numeric(10, 6, asdecimal=True)

# Unconstrained NUMERIC settings (seconds) that the models want as float.
Seconds = Numeric(asdecimal=False)
