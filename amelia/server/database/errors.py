"""Database integrity errors -> domain errors, by SQLSTATE and constraint name only.

Repositories wrap statements that can violate a constraint in `translate_integrity_errors`;
no code anywhere matches on driver message text.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
from sqlalchemy.exc import DBAPIError

from amelia.server.database.schema import ACTIVE_WORKTREE_INDEX, SINGLE_ACTIVE_PROFILE_INDEX

UNIQUE_VIOLATION = "23505"
FOREIGN_KEY_VIOLATION = "23503"
CHECK_VIOLATION = "23514"
NOT_NULL_VIOLATION = "23502"
INVALID_TEXT_REPRESENTATION = "22P02"
NUMERIC_VALUE_OUT_OF_RANGE = "22003"
UNTRANSLATABLE_CHARACTER = "22P05"
CHARACTER_NOT_IN_REPERTOIRE = "22021"


class DataIntegrityError(ValueError):
    """A write broke a constraint. `constraint` names it when the server said which."""

    def __init__(self, message: str, constraint: str | None = None) -> None:
        self.constraint = constraint
        super().__init__(message)


class DuplicateKeyError(DataIntegrityError):
    """A unique key or primary key already exists (usually 409)."""


class ReferenceNotFoundError(DataIntegrityError):
    """A foreign key points at a row that does not exist (usually 404)."""


class ConstraintViolationError(DataIntegrityError):
    """A CHECK or NOT NULL constraint refused the value (usually 422)."""


class ActiveWorktreeConflict(DuplicateKeyError):
    """The worktree already has a running or blocked workflow (the partial unique index)."""


class ActiveProfileConflict(DuplicateKeyError):
    """Another profile became active at the same moment (the single-active index)."""


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error wrapped by SQLAlchemy, if any."""
    orig = getattr(exc, "orig", None)
    for candidate in (orig, getattr(orig, "__cause__", None), exc):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str):
            return code
    return None


def constraint_of(exc: BaseException) -> str | None:
    """The violated constraint's name as reported by the server, if any."""
    orig = getattr(exc, "orig", None)
    for candidate in (getattr(orig, "__cause__", None), orig, exc):
        name = getattr(candidate, "constraint_name", None)
        if name is None:
            diag = getattr(candidate, "diag", None)
            name = getattr(diag, "constraint_name", None)
        if isinstance(name, str):
            return name
    return None


def domain_error(exc: DBAPIError | asyncpg.PostgresError) -> Exception | None:
    """The domain error for an integrity failure, or None if `exc` is not one."""
    code = sqlstate_of(exc)
    name = constraint_of(exc)
    if code == UNIQUE_VIOLATION:
        if name == ACTIVE_WORKTREE_INDEX:
            return ActiveWorktreeConflict(
                "the worktree already has a running or blocked workflow", name
            )
        if name == SINGLE_ACTIVE_PROFILE_INDEX:
            return ActiveProfileConflict("another profile is already active", name)
        return DuplicateKeyError(f"duplicate key violates {name or 'a unique constraint'}", name)
    if code == FOREIGN_KEY_VIOLATION:
        return ReferenceNotFoundError(f"referenced row does not exist ({name})", name)
    if code in (CHECK_VIOLATION, NOT_NULL_VIOLATION):
        return ConstraintViolationError(f"value refused by {name or 'a constraint'}", name)
    return None


@contextmanager
def translate_integrity_errors() -> Iterator[None]:
    """Re-raise integrity failures inside the block as `DataIntegrityError` subclasses."""
    try:
        yield
    except (DBAPIError, asyncpg.PostgresError) as exc:
        # asyncpg's own errors reach here from the fast path (amelia/.../fast_query.py).
        mapped = domain_error(exc)
        if mapped is None:
            raise
        raise mapped from exc
