"""The `amelia` command line: `serve` and `db upgrade|current|check`."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from typing import Annotated, Any

import typer

from amelia import __version__
from amelia.cli_config import config_app
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
app.add_typer(config_app, name="config")


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


def _warn_if_exposed(host: str) -> None:
    if host not in {"127.0.0.1", "localhost", "::1"}:
        typer.secho(
            f"Warning: binding to {host} exposes the API to your network, and Amelia has no "
            "authentication yet. Use 127.0.0.1 unless you know the network is trusted.",
            fg=typer.colors.YELLOW,
            err=True,
        )


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (AMELIA_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (AMELIA_PORT).")] = None,
    migrate: Annotated[
        bool, typer.Option("--migrate", help="Upgrade a configured database before serving.")
    ] = False,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="Log one line per HTTP request (AMELIA_ACCESS_LOG; off by default).",
        ),
    ] = None,
) -> None:
    """Run the server: the API, live events and workflows, on the configured database.

    Without AMELIA_DATABASE_URL an embedded PostgreSQL under AMELIA_HOME is started,
    upgraded and used; it stops when the server stops and keeps its data.
    """
    import uvicorn

    from amelia.server.main import create_app

    config = _config()
    overrides = {
        k: v
        for k, v in {"host": host, "port": port, "access_log": access_log}.items()
        if v is not None
    }
    if overrides:
        config = config.model_copy(update=overrides)
    _warn_if_exposed(config.host)
    if config.database_url is not None and not migrate:
        try:
            result = asyncio.run(_status(config.database_url))
        except DatabaseConnectionError as exc:
            raise _fail(str(exc)) from None
        if not result.at_head:
            raise _fail(
                f"The database is at {result.current or 'no revision'}; this version of Amelia "
                f"needs {result.head}. Run `alembic upgrade head` or `amelia db upgrade` first, "
                "or start with `amelia serve --migrate`."
            )
    logging.getLogger("amelia").setLevel(logging.INFO)
    typer.echo(f"Amelia {__version__} starting on http://{config.host}:{config.port}")
    from amelia.server.main import drain

    application = create_app(
        config, migrate=migrate, first_run="interactive" if sys.stdin.isatty() else "quiet"
    )

    class AmeliaServer(uvicorn.Server):
        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets)
            # What start-up built (some 200,000 objects: the app, LangGraph, the pools) lives
            # as long as the process: keep it out of the garbage collector's full passes,
            # which otherwise stall every request in flight for about 140 ms.
            gc.collect()
            gc.freeze()

        async def shutdown(self, sockets: list[Any] | None = None) -> None:
            await drain(application)  # producers first, then the sockets
            await super().shutdown(sockets)

    server = AmeliaServer(
        uvicorn.Config(
            application,
            host=config.host,
            port=config.port,
            log_level="info",
            # Off unless asked for (AMELIA_ACCESS_LOG / --access-log).
            access_log=config.access_log,
            lifespan="on",
            timeout_graceful_shutdown=15,
        )
    )
    server.run()
    if not server.started:
        raise _fail("The server did not start; see the messages above.")


# `amelia server` is kept as an alias of `amelia serve`.
app.command("server", hidden=True)(serve)


def main() -> None:
    """Console entry point."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    app()
