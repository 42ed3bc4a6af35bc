"""The `amelia` command line: `serve` and `db upgrade|current|check`."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer

from amelia.server.config import ConfigurationError, ServerConfig, load_config
from amelia.server.database.connection import Database, DatabaseConnectionError
from amelia.server.database.migrations import MigrationStatus, head_revision, status, upgrade
from amelia.server.database_target import DatabaseTarget, database_target
from amelia.server.embedded import EmbeddedPostgresError

app = typer.Typer(
    name="amelia",
    help="Amelia: an agentic coding orchestrator server on PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Database schema: upgrade, show and check the revision.")
app.add_typer(db_app, name="db")


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _config() -> ServerConfig:
    try:
        return load_config()
    except ConfigurationError as exc:
        raise _fail(str(exc), 2) from None


async def _status(url: str) -> MigrationStatus:
    database = Database(url, min_size=0, max_size=1)
    await database.connect()
    try:
        async with database.connection() as conn:
            return await status(conn)
    finally:
        await database.close()


async def _upgrade_all(url: str) -> None:
    from amelia.server.checkpoint import setup_checkpoint_tables

    await upgrade(url)
    await setup_checkpoint_tables(url)


def _run_upgrade(target: DatabaseTarget) -> MigrationStatus:
    typer.echo(f"Upgrading {target.description} to {head_revision()} ...")
    asyncio.run(_upgrade_all(target.url))
    result = asyncio.run(_status(target.url))
    typer.echo(f"Database is at {result.current} (head). Checkpoint tables are ready.")
    return result


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Upgrade the database to the newest schema (and set up the checkpoint tables)."""
    config = _config()
    try:
        with database_target(config) as target:
            _run_upgrade(target)
    except (DatabaseConnectionError, EmbeddedPostgresError) as exc:
        raise _fail(str(exc)) from None


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision."""
    config = _config()
    try:
        with database_target(config) as target:
            result = asyncio.run(_status(target.url))
    except (DatabaseConnectionError, EmbeddedPostgresError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"database: {target.description}")
    typer.echo(f"current:  {result.current or '(empty: no revision applied)'}")
    typer.echo(f"head:     {result.head}")


@db_app.command("check")
def db_check() -> None:
    """Exit 0 when the database is at the newest revision, 1 (with the fix) when it is not."""
    config = _config()
    try:
        with database_target(config) as target:
            result = asyncio.run(_status(target.url))
    except (DatabaseConnectionError, EmbeddedPostgresError) as exc:
        raise _fail(str(exc)) from None
    if result.at_head:
        typer.echo(f"OK: {target.description} is at head ({result.head}).")
        return
    raise _fail(
        f"{target.description} is at {result.current or 'no revision'}, but the code needs "
        f"{result.head}. Run `alembic upgrade head` (with AMELIA_DATABASE_URL set) or "
        "`amelia db upgrade`."
    )


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (AMELIA_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (AMELIA_PORT).")] = None,
    migrate: Annotated[
        bool, typer.Option("--migrate", help="Upgrade a configured database before serving.")
    ] = False,
) -> None:
    """Run the server (the HTTP API lands with its own issue; today: prepare the database)."""
    config = _config()
    bind = f"{host or config.host}:{port or config.port}"
    try:
        with database_target(config) as target:
            typer.echo(f"Using {target.description}.")
            if target.embedded is not None or migrate:
                _run_upgrade(target)
            else:
                result = asyncio.run(_status(target.url))
                if not result.at_head:
                    raise _fail(
                        f"The database is at {result.current or 'no revision'}; the code needs "
                        f"{result.head}. Run `alembic upgrade head` or `amelia db upgrade` "
                        "first, or start with `amelia serve --migrate`."
                    )
            typer.echo(
                f"The database is ready. The HTTP server ({bind}) is not part of this build "
                "yet: it lands with the server issue."
            )
    except (DatabaseConnectionError, EmbeddedPostgresError) as exc:
        raise _fail(str(exc)) from None


# `amelia server` is kept as an alias of `amelia serve`.
app.command("server", hidden=True)(serve)


def main() -> None:  # pragma: no cover - console entry point convenience
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    app()
