"""`FastQuery`: a Core SELECT compiled once and run straight on the asyncpg connection.

SQLAlchemy's execution layer costs about 150-200 us of Python per statement, more than the
round trip itself on a local server. Hot read paths therefore build their statement once
with Core (typed, bound parameters, the same SQL SQLAlchemy would send), compile it once per
dialect, and hand the SQL and the processed parameters to asyncpg, which keeps it prepared.
Bind and result processing still go through the column types (aware UTC timestamps, JSONB),
so rows come back exactly as through `conn.execute()`.

Also for single-statement writes whose parameters are all bindparams (INSERT/UPDATE ...
RETURNING): asyncpg's integrity errors are translated like SQLAlchemy's. Not for "expanding"
IN parameters (use `= ANY(array)`). Inside a caller's transaction the repository runs the
same statement through SQLAlchemy instead (see `RepositoryBase._fast_all`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Float, Numeric
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import TypeEngine

Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]
    defaults: dict[str, Any]
    bind_processors: dict[str, Callable[[Any], Any]]
    keys: tuple[str, ...]
    result_processors: tuple[Processor, ...]

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        values: list[Any] = []
        for name in self.names:
            value = params[name] if name in params else self.defaults[name]
            processor = self.bind_processors.get(name)
            values.append(processor(value) if processor is not None else value)
        return values

    def rows(self, records: Sequence[Any]) -> list[dict[str, Any]]:
        keys, processors = self.keys, self.result_processors
        if not any(processors):
            return [dict(zip(keys, record, strict=True)) for record in records]
        out = []
        for record in records:
            out.append(
                {
                    key: (proc(value) if proc is not None else value)
                    for key, proc, value in zip(keys, processors, record, strict=True)
                }
            )
        return out


# PostgreSQL type OIDs some result processors need to know what the driver returns.
_NUMERIC_OID = 1700
_FLOAT8_OID = 701


def _result_processor(type_: TypeEngine[Any], dialect: Dialect) -> Processor:
    impl = getattr(type_, "impl", type_)
    coltype: int | None = None
    if isinstance(impl, Float):
        coltype = _FLOAT8_OID
    elif isinstance(impl, Numeric):
        coltype = _NUMERIC_OID
    return type_._cached_result_processor(dialect, coltype)


class FastQuery:
    """A SELECT to run on the raw asyncpg connection; build it once, at import time."""

    def __init__(self, statement: Executable) -> None:
        self.statement = statement
        self._cache: dict[int, _Compiled] = {}

    def compiled(self, dialect: Dialect) -> _Compiled:
        found = self._cache.get(id(dialect))
        if found is not None:
            return found
        compiled = self.statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        assert isinstance(compiled, SQLCompiler)
        if any(bind.expanding for bind in compiled.binds.values()):
            raise ValueError("FastQuery cannot run expanding IN parameters; use = ANY(array)")
        names = tuple(compiled.positiontup or ())
        defaults = {
            name: bind.value
            for name, bind in ((n, compiled.binds[n]) for n in names)
            if not bind.required and bind.callable is None
        }
        processors = {
            name: proc
            for name, proc in compiled._bind_processors.items()
            if name in names and callable(proc)
        }
        columns = compiled._result_columns
        result = _Compiled(
            sql=compiled.string,
            names=names,
            defaults=defaults,
            bind_processors=processors,  # type: ignore[arg-type]
            keys=tuple(column.keyname for column in columns),
            result_processors=tuple(_result_processor(column.type, dialect) for column in columns),
        )
        self._cache[id(dialect)] = result
        return result
