"""Count the statements a repository call sends (SQLAlchemy's and the fast read path's)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event as sa_event

from amelia.server.database import Database


@contextmanager
def count_statements(db: Database) -> Iterator[list[str]]:
    """Collect the SQL of every statement sent through `db` while the block runs."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    def record_direct(sql: str, arguments: tuple[Any, ...]) -> None:
        statements.append(sql)

    engine = db.engine.sync_engine
    sa_event.listen(engine, "before_cursor_execute", record)
    db.direct_statement_listeners.append(record_direct)
    try:
        yield statements
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)
        db.direct_statement_listeners.remove(record_direct)
