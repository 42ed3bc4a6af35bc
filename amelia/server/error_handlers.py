"""The error envelope `{"error", "code", "details"}` and the status of each domain error."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg
import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from amelia.server.database.connection import DatabaseConnectionError, DatabaseUnavailableError
from amelia.server.database.errors import (
    ConstraintViolationError,
    DuplicateKeyError,
    ReferenceNotFoundError,
    sqlstate_of,
)
from amelia.server.exceptions import (
    ConcurrencyLimitError,
    FileOperationError,
    InvalidStateError,
    InvalidWorktreeError,
    WorkflowConflictError,
    WorkflowNotFoundError,
)

logger = logging.getLogger(__name__)

# SQLSTATE class 22, "data exception": the value itself cannot be stored.
DATA_EXCEPTION_CLASS = "22"
# Class 08 (connection exception), and the server shutting down, crashing, starting up or
# cancelling a statement past its timeout: the database is unavailable, not the request wrong.
CONNECTION_EXCEPTION_CLASS = "08"
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57014"})


def _jsonable(value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value
    return value


def envelope(
    status: int,
    error: str,
    code: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """One error response in the envelope shape."""
    return JSONResponse(
        status_code=status,
        content={"error": error, "code": code, "details": _jsonable(details)},
        headers=headers,
    )


def configure_exception_handlers(app: FastAPI) -> None:
    """Install the handlers of spec server.md section 1 (plus database availability)."""

    @app.exception_handler(WorkflowConflictError)
    async def conflict(_: Request, exc: WorkflowConflictError) -> JSONResponse:
        details = {"workflow_id": exc.workflow_id, "worktree_path": exc.worktree_path}
        return envelope(409, str(exc), "WORKFLOW_CONFLICT", details)

    @app.exception_handler(ConcurrencyLimitError)
    async def limit(_: Request, exc: ConcurrencyLimitError) -> JSONResponse:
        details = {"current": exc.current_count, "limit": exc.max_concurrent}
        return envelope(429, str(exc), "CONCURRENCY_LIMIT", details, {"Retry-After": "30"})

    @app.exception_handler(InvalidStateError)
    async def invalid_state(_: Request, exc: InvalidStateError) -> JSONResponse:
        details = {"workflow_id": exc.workflow_id, "current_status": exc.current_status}
        return envelope(422, str(exc), "INVALID_STATE", details)

    @app.exception_handler(WorkflowNotFoundError)
    async def not_found(_: Request, exc: WorkflowNotFoundError) -> JSONResponse:
        return envelope(404, str(exc), "NOT_FOUND", {"workflow_id": exc.workflow_id})

    @app.exception_handler(FileOperationError)
    async def file_operation(_: Request, exc: FileOperationError) -> JSONResponse:
        return envelope(exc.status_code, str(exc), exc.code)

    @app.exception_handler(FileNotFoundError)
    async def file_not_found(_: Request, exc: FileNotFoundError) -> JSONResponse:
        return envelope(404, str(exc), "FILE_NOT_FOUND")

    @app.exception_handler(InvalidWorktreeError)
    async def invalid_worktree(_: Request, exc: InvalidWorktreeError) -> JSONResponse:
        details = {"worktree_path": exc.worktree_path, "reason": exc.reason}
        return envelope(400, str(exc), "INVALID_WORKTREE", details)

    @app.exception_handler(DuplicateKeyError)
    async def duplicate(_: Request, exc: DuplicateKeyError) -> JSONResponse:
        return envelope(409, str(exc), "CONFLICT", {"constraint": exc.constraint})

    @app.exception_handler(ReferenceNotFoundError)
    async def missing_reference(_: Request, exc: ReferenceNotFoundError) -> JSONResponse:
        return envelope(404, str(exc), "NOT_FOUND", {"constraint": exc.constraint})

    @app.exception_handler(ConstraintViolationError)
    async def constraint(_: Request, exc: ConstraintViolationError) -> JSONResponse:
        return envelope(422, str(exc), "CONSTRAINT_VIOLATION", {"constraint": exc.constraint})

    @app.exception_handler(ValidationError)
    async def validation(_: Request, exc: ValidationError) -> JSONResponse:
        errors = [
            {k: _jsonable(v) for k, v in e.items() if k in ("type", "loc", "msg", "ctx")}
            for e in exc.errors(include_url=False)
        ]
        for error in errors:
            if "ctx" in error:
                error["ctx"] = {k: str(v) for k, v in error["ctx"].items()}
        return envelope(400, "Validation failed", "VALIDATION_ERROR", {"errors": errors})

    @app.exception_handler(ValueError)
    async def value_error(_: Request, exc: ValueError) -> JSONResponse:
        return envelope(400, str(exc), "INVALID_VALUE")

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        # The database is down, unreachable or too slow: say so quickly instead of a 500.
        if isinstance(exc, DatabaseUnavailableError):
            # Known outage: logged once when it began and once when it ends, not per request.
            logger.debug("database unavailable: %s", exc)
            reason = exc.reason
        elif isinstance(exc, TimeoutError | PoolTimeoutError):
            logger.warning("database unavailable: %s: %s", type(exc).__name__, exc)
            reason = "PostgreSQL did not answer in time"
        else:
            logger.warning("database unavailable: %s: %s", type(exc).__name__, exc)
            reason = "the connection to PostgreSQL failed"
        return envelope(
            503,
            f"The database is unavailable ({reason}); retry shortly",
            "DATABASE_UNAVAILABLE",
            {"reason": reason},
            headers={"Retry-After": "5"},
        )

    # Timeouts reaching a route come from the database (a statement past its deadline);
    # the checkpointer's psycopg pool reports lost connections and pool timeouts this way.
    for kind in (
        DatabaseConnectionError,
        OperationalError,
        InterfaceError,
        PoolTimeoutError,
        TimeoutError,
        psycopg.OperationalError,
    ):
        app.add_exception_handler(kind, unavailable)

    for kind in (
        asyncpg.exceptions.PostgresConnectionError,
        asyncpg.exceptions.InterfaceError,
        asyncpg.exceptions.CannotConnectNowError,
        # A pooled connection caught while its backend was going away (nothing was sent).
        asyncpg.exceptions.InternalClientError,
    ):
        app.add_exception_handler(kind, unavailable)

    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        code = sqlstate_of(exc)
        if code is not None and code.startswith(DATA_EXCEPTION_CLASS):
            # A value PostgreSQL cannot store (NUL in text, out-of-range number, ...): the
            # request is at fault, and nothing was written.
            return envelope(
                422,
                "A value in the request cannot be stored (for example text containing a NUL "
                "character, or a number out of range)",
                "INVALID_DATA",
                {"sqlstate": code},
            )
        if (
            (isinstance(exc, DBAPIError) and exc.connection_invalidated)
            or code in UNAVAILABLE_SQLSTATES
            or (code is not None and code.startswith(CONNECTION_EXCEPTION_CLASS))
        ):
            return await unavailable(request, exc)
        logger.exception("database error on %s %s", request.method, request.url.path)
        return envelope(500, "Internal server error", "INTERNAL_ERROR")

    app.add_exception_handler(DBAPIError, database_error)
    app.add_exception_handler(asyncpg.PostgresError, database_error)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return envelope(500, "Internal server error", "INTERNAL_ERROR")
