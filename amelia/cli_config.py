"""`amelia config profile ...` and `amelia config server ...`, and the first-run profile helper.

Every command uses the database `amelia db` uses (AMELIA_DATABASE_URL, or the embedded
server). A configured database behind the code's migration head is refused with the fix; the
embedded one is Amelia's own and is upgraded, as `amelia serve` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from amelia.core.types import AgentConfig, DriverType, Profile, TrackerType
from amelia.drivers.api import BASE_URL_ENV, DEFAULT_API_KEY_ENV, check_base_url
from amelia.drivers.base import DriverConfigError
from amelia.server.config import ConfigurationError, load_config
from amelia.server.database.connection import Database, DatabaseConnectionError
from amelia.server.database.errors import DuplicateKeyError
from amelia.server.database.migrations import status, upgrade
from amelia.server.database.profile_repository import ProfileRepository
from amelia.server.database.settings_repository import (
    UPDATABLE_SETTINGS,
    ServerSettings,
    SettingsRepository,
)
from amelia.server.database_target import DatabaseTarget, database_target
from amelia.server.embedded import EmbeddedPostgresError
from amelia.server.models.settings_api import PROFILE_ID_MAX_LENGTH, PROFILE_ID_PATTERN, main_agent

T = TypeVar("T")

AGENT_NAMES = ("architect", "developer", "reviewer", "evaluator", "brainstormer")
DEFAULT_MODEL_ENV = "AMELIA_DEFAULT_MODEL"
FALLBACK_MODEL = "anthropic/claude-sonnet-4.5"
DEFAULT_PROFILE_NAME = "default"
# Claude Code in print mode: the `cli` driver's documented example.
DEFAULT_CLI_COMMAND = "claude -p --model {model}"
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}

config_app = typer.Typer(
    help="Profiles and server settings stored in the database.", no_args_is_help=True
)
profile_app = typer.Typer(help="List, show, create, delete and activate profiles.")
server_app = typer.Typer(help="Show and change the server settings.")
config_app.add_typer(profile_app, name="profile", no_args_is_help=True)
config_app.add_typer(server_app, name="server", no_args_is_help=True)


class CommandError(Exception):
    """A user-facing failure: the message is printed and the command exits 1."""


def default_model() -> str:
    """The model new profiles use: AMELIA_DEFAULT_MODEL, else a sensible default."""
    return os.environ.get(DEFAULT_MODEL_ENV, "").strip() or FALLBACK_MODEL


def build_profile(
    name: str,
    working_dir: Path,
    driver: DriverType,
    model: str,
    *,
    base_url: str | None = None,
    command: str | None = None,
    tracker: TrackerType = TrackerType.NOOP,
) -> Profile:
    """A profile whose usual agents all use one driver and model.

    Raises:
        CommandError: an invalid name, working directory, model, base URL or command.
    """
    if not re.fullmatch(PROFILE_ID_PATTERN, name) or len(name) > PROFILE_ID_MAX_LENGTH:
        raise CommandError(
            f"Invalid profile name {name!r}: use lowercase letters, digits, '-' and '_' "
            f"(at most {PROFILE_ID_MAX_LENGTH} characters)."
        )
    if not model.strip():
        raise CommandError("The model must not be empty.")
    directory = working_dir.expanduser().resolve()
    if not directory.is_dir():
        raise CommandError(f"Working directory {directory} does not exist or is not a directory.")
    options: dict[str, Any] = {}
    if driver is DriverType.API:
        if command is not None:
            raise CommandError("--command applies to the cli driver only.")
        if base_url:
            try:
                check_base_url(base_url)
            except DriverConfigError as exc:
                raise CommandError(f"Invalid --base-url: {exc}") from None
            options["base_url"] = base_url
    else:
        if base_url:
            raise CommandError("--base-url applies to the api driver only.")
        try:
            argv = shlex.split(command or DEFAULT_CLI_COMMAND)
        except ValueError as exc:  # unbalanced quotes
            raise CommandError(f"Invalid --command: {exc}.") from None
        if not argv:
            raise CommandError("--command must not be empty.")
        options["command"] = argv
    agent = AgentConfig(driver=driver, model=model.strip(), options=options)
    return Profile(
        name=name,
        tracker=tracker,
        working_dir=str(directory),
        agents=dict.fromkeys(AGENT_NAMES, agent),
    )


async def create_profile(db: Database, profile: Profile, *, activate: bool) -> Profile:
    """Store a profile (and make it active) in one transaction.

    Raises:
        CommandError: a profile with that name exists.
    """
    try:
        async with db.transaction() as conn:
            repo = ProfileRepository(db, conn)
            created = await repo.create_profile(profile)
            if activate:
                await repo.set_active(created.name)
    except DuplicateKeyError:
        raise CommandError(f"Profile {profile.name!r} already exists.") from None
    return created


async def ensure_default_profile(db: Database, interactive: bool) -> Profile | None:
    """Create and activate a first profile when the database has none.

    Uses the api driver, the model of AMELIA_DEFAULT_MODEL (or a default) and the current
    directory; asks for each value (defaults shown) only when `interactive`.

    Args:
        db: a connected database at the current schema.
        interactive: whether a person is at a terminal to answer questions.

    Returns:
        The created (active) profile, or None when a profile exists already (or another
        process created the default one at the same moment).

    Raises:
        typer.Abort: the person cancelled a question (Ctrl-C / end of input).
    """
    repo = ProfileRepository(db)
    if await repo.list_profiles():
        return None
    profile = (
        _ask_profile()
        if interactive
        else build_profile(DEFAULT_PROFILE_NAME, Path.cwd(), DriverType.API, default_model())
    )
    try:
        created = await create_profile(db, profile, activate=True)
    except CommandError:
        return None  # created concurrently by another process
    agent = created.agents["developer"]
    note = f"Created and activated profile {created.name!r} ({_describe(created)})."
    if agent.driver is DriverType.API and not os.environ.get(DEFAULT_API_KEY_ENV):
        note += f" Set {DEFAULT_API_KEY_ENV} for the api driver (or use a local base URL)."
    typer.echo(note + " Change it with `amelia config profile ...`.", err=True)
    return created


def _describe(profile: Profile) -> str:
    agent = profile.agents["developer"]
    return f"{agent.driver.value}, {agent.model}, working dir {profile.working_dir}"


def _ask_profile() -> Profile:
    typer.echo("No profile exists yet; let's create one (press Enter to accept a default).")
    while True:
        name = typer.prompt("Profile name", default=DEFAULT_PROFILE_NAME)
        driver = DriverType(typer.prompt("Driver", default=DriverType.API, type=DriverType))
        model = typer.prompt("Model", default=default_model())
        base_url: str | None = None
        command: str | None = None
        if driver is DriverType.API:
            base_url = typer.prompt(
                f"API base URL (empty: {BASE_URL_ENV} or OpenRouter)",
                default="",
                show_default=False,
            ).strip()
        else:
            command = typer.prompt("Command (argv, {model} is replaced)", DEFAULT_CLI_COMMAND)
        working_dir = typer.prompt("Working directory", default=str(Path.cwd()))
        try:
            return build_profile(
                name, Path(working_dir), driver, model, base_url=base_url, command=command
            )
        except CommandError as exc:
            typer.secho(f"{exc} Let's try again.", fg=typer.colors.RED, err=True)


# --- plumbing ----------------------------------------------------------------------------------


async def _prepare(target: DatabaseTarget, db: Database) -> None:
    """Check the schema is at head: upgrade the embedded database, refuse a configured one."""
    async with db.connection() as conn:
        current = await status(conn)
    if current.at_head:
        return
    if target.embedded is None:
        raise CommandError(
            f"The database ({target.description}) is at {current.current or 'no revision'}, "
            f"but this version of Amelia needs {current.head}. Run `alembic upgrade head` "
            "(with AMELIA_DATABASE_URL set) or `amelia db upgrade` first."
        )
    await upgrade(target.url)


async def _with_database(target: DatabaseTarget, action: Callable[[Database], Awaitable[T]]) -> T:
    db = Database(target.url, min_size=1, max_size=2)
    await db.connect()
    try:
        await _prepare(target, db)
        return await action(db)
    finally:
        await db.close()


def _run(
    action: Callable[[Database], Awaitable[T]], user_errors: tuple[type[Exception], ...] = ()
) -> T:
    """Run `action` on the configured database.

    `CommandError`, connection failures and `user_errors` print their message and exit 1;
    an invalid configuration exits 2 (as `amelia db` does).
    """
    try:
        config = load_config()
    except ConfigurationError as exc:
        raise _fail(str(exc), 2) from None
    failures: tuple[type[Exception], ...] = (
        CommandError,
        DatabaseConnectionError,
        EmbeddedPostgresError,
        *user_errors,
    )
    try:
        with database_target(config) as target:
            return asyncio.run(_with_database(target, action))
    except failures as exc:
        raise _fail(str(exc)) from None


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(message, fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


async def _profiles(db: Database, name: str | None = None) -> tuple[list[Profile], str | None]:
    """The named profile (or every one) and the active profile's name, on one connection."""
    async with db.connection() as conn:
        repo = ProfileRepository(db, conn)
        if name is None:
            found = await repo.list_profiles()
        else:
            one = await repo.get_profile(name)
            found = [] if one is None else [one]
        active = await repo.get_active_profile()
    return found, None if active is None else active.name


# --- profile commands -------------------------------------------------------------------------

NameArgument = Annotated[str, typer.Argument(help="Profile name.")]


@profile_app.command("list")
def profile_list() -> None:
    """List the profiles; the active one is marked with `*`."""
    profiles, active_name = _run(_profiles)
    if not profiles:
        typer.echo(
            "No profiles. Create one: `amelia config profile create NAME -w DIR --activate`."
        )
        return
    rows = [["", "NAME", "DRIVER", "MODEL", "WORKING DIR"]]
    for profile in profiles:
        agent = main_agent(profile)
        driver, model = ("-", "-") if agent is None else (agent.driver.value, agent.model)
        marker = "*" if profile.name == active_name else ""
        rows.append([marker, profile.name, driver, model, profile.working_dir])
    typer.echo(_table(rows))
    if active_name is None:
        typer.echo("No profile is active: `amelia config profile activate NAME`.")


@profile_app.command("show")
def profile_show(name: NameArgument) -> None:
    """Show one profile and its agents."""
    found, active_name = _run(lambda db: _profiles(db, name))
    if not found:
        raise _fail(f"Profile {name!r} not found.")
    profile = found[0]
    typer.echo(f"Profile: {profile.name}{' (active)' if active_name == name else ''}")
    fields = ("tracker", "working_dir", "plan_output_dir", "plan_path_pattern")
    typer.echo(_table([[f"{field}:", _text(getattr(profile, field))] for field in fields]))
    typer.echo("agents:" if profile.agents else "agents: (none)")
    if profile.agents:
        rows = [
            ["  " + agent_name, agent.driver.value, agent.model, json.dumps(agent.options)]
            for agent_name, agent in profile.agents.items()
        ]
        typer.echo(_table(rows))


_MODEL_HELP = f"Model id (default: {DEFAULT_MODEL_ENV} or {FALLBACK_MODEL})."


@profile_app.command("create")
def profile_create(
    name: Annotated[str, typer.Argument(help="Profile name (lowercase, digits, - and _).")],
    working_dir: Annotated[
        Path, typer.Option("--working-dir", "-w", help="Repository the agents work in.")
    ] = Path("."),
    driver: Annotated[
        DriverType, typer.Option("--driver", "-d", help="How every agent calls its model.")
    ] = DriverType.API,
    model: Annotated[str | None, typer.Option("--model", "-m", help=_MODEL_HELP)] = None,
    base_url: Annotated[str | None, typer.Option(help=f"api: API root ({BASE_URL_ENV}).")] = None,
    command: Annotated[str | None, typer.Option(help=f"cli: {DEFAULT_CLI_COMMAND!r}.")] = None,
    tracker: Annotated[TrackerType, typer.Option(help="Issue tracker.")] = TrackerType.NOOP,
    activate: Annotated[bool, typer.Option("--activate", help="Make it active.")] = False,
) -> None:
    """Create a profile whose agents (architect, developer, reviewer, evaluator, brainstormer)
    all use one driver and model."""
    try:
        profile = build_profile(
            name, working_dir, driver, model or default_model(),
            base_url=base_url, command=command, tracker=tracker,
        )  # fmt: skip
    except CommandError as exc:
        raise _fail(str(exc)) from None
    created = _run(lambda db: create_profile(db, profile, activate=activate))
    suffix = ", now active." if activate else "."
    typer.echo(f"Created profile {created.name} ({_describe(created)}){suffix}")


@profile_app.command("delete")
def profile_delete(
    name: NameArgument,
    force: Annotated[bool, typer.Option("--force", "-f", help="Do not ask to confirm.")] = False,
) -> None:
    """Delete a profile (workflows that used it keep its name)."""
    # Only a person at a terminal is asked; scripts get the deletion they requested.
    if not force and sys.stdin.isatty():
        typer.confirm(f"Delete profile {name!r}?", abort=True)

    async def action(db: Database) -> bool:
        repo = ProfileRepository(db)
        active = await repo.get_active_profile()
        if not await repo.delete_profile(name):
            raise CommandError(f"Profile {name!r} not found.")
        return active is not None and active.name == name

    was_active = _run(action)
    typer.echo(f"Deleted profile {name}.")
    if was_active:
        typer.echo("It was the active one; activate another: `amelia config profile activate`.")


@profile_app.command("activate")
def profile_activate(name: NameArgument) -> None:
    """Make a profile the active one (new workflows use it)."""
    _run(lambda db: ProfileRepository(db).set_active(name), user_errors=(ValueError,))
    typer.echo(f"Active profile: {name}")


# --- server commands --------------------------------------------------------------------------


def parse_setting(key: str, raw: str) -> tuple[str, int | float | bool]:
    """The setting name and typed value for `server set KEY VALUE` (`-` in KEY reads `_`).

    Raises:
        CommandError: an unknown key, or a value of the wrong type for it.
    """
    name = key.strip().replace("-", "_")
    if name not in UPDATABLE_SETTINGS:
        known = ", ".join(sorted(UPDATABLE_SETTINGS))
        raise CommandError(f"Unknown setting {key!r}. Settings: {known}.")
    kind = ServerSettings.model_fields[name].annotation
    text = raw.strip().lower()
    if kind is bool:
        if text in _TRUE or text in _FALSE:
            return name, text in _TRUE
        raise CommandError(f"{name} must be true or false (got {raw!r}).")
    try:
        return name, int(text) if kind is int else float(text)
    except ValueError:
        expected = "a whole number" if kind is int else "a number"
        raise CommandError(f"{name} must be {expected} (got {raw!r}).") from None


@server_app.command("show")
def server_show() -> None:
    """Show the server settings."""
    settings = _run(
        lambda db: SettingsRepository(db).get_server_settings(), user_errors=(ValueError,)
    )
    values = settings.model_dump()
    typer.echo(_table([[name, _text(values[name])] for name in sorted(UPDATABLE_SETTINGS)]))


# Unknown "options" become arguments, so a negative value (`... -1`) needs no `--`.
@server_app.command("set", context_settings={"ignore_unknown_options": True})
def server_set(
    key: Annotated[str, typer.Argument(help="Setting name (see `amelia config server show`).")],
    value: Annotated[str, typer.Argument(help="New value.")],
) -> None:
    """Change one server setting (a running server uses it without a restart)."""
    try:
        name, parsed = parse_setting(key, value)
    except CommandError as exc:
        raise _fail(str(exc)) from None
    updated = _run(
        lambda db: SettingsRepository(db).update_server_settings({name: parsed}),
        user_errors=(ValueError,),
    )
    typer.echo(f"{name} = {_text(getattr(updated, name))}")
