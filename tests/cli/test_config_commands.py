"""`amelia config ...` as real subprocesses on the test database, and the first-run helper."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from amelia.cli_config import AGENT_NAMES, ensure_default_profile
from amelia.core.types import AgentConfig, DriverType, Profile
from amelia.server.database import Database
from amelia.server.database.profile_repository import ProfileRepository
from amelia.server.database.settings_repository import SettingsRepository

AMELIA = Path(sys.executable).parent / "amelia"


def cli_env(database_url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMELIA_")}
    env.update(AMELIA_DATABASE_URL=database_url, AMELIA_HOME=str(home), NO_COLOR="1")
    env["COLUMNS"] = "200"
    return env


class Cli:
    """Runs `amelia` in a subprocess against one database, from a scratch directory."""

    def __init__(self, database_url: str, tmp_path: Path) -> None:
        self.env = cli_env(database_url, tmp_path / "home")
        self.cwd = tmp_path

    async def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [str(AMELIA), "config", *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )


@pytest.fixture
def cli(database_url: str, tmp_path: Path) -> Cli:
    return Cli(database_url, tmp_path)


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path.resolve()


async def add_profile(db: Database, name: str, *, active: bool = False) -> None:
    repo = ProfileRepository(db)
    agents = {"developer": AgentConfig(driver="api", model=f"model/{name}")}
    await repo.create_profile(Profile(name=name, working_dir=f"/w/{name}", agents=agents))
    if active:
        await repo.set_active(name)


# --- profile ----------------------------------------------------------------------------------


async def test_profile_create_api_and_activate(cli: Cli, db: Database, repo_dir: Path) -> None:
    result = await cli(
        "profile", "create", "alpha", "--working-dir", str(repo_dir), "--driver", "api",
        "--model", "vendor/model-x", "--base-url", "http://127.0.0.1:9/v1", "--activate",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Created profile alpha" in result.stdout
    assert "now active" in result.stdout
    repo = ProfileRepository(db)
    stored = await repo.get_profile("alpha")
    assert stored is not None
    assert stored.working_dir == str(repo_dir)
    assert set(stored.agents) == set(AGENT_NAMES)
    for agent in stored.agents.values():
        assert agent.driver is DriverType.API
        assert agent.model == "vendor/model-x"
        assert agent.options == {"base_url": "http://127.0.0.1:9/v1"}
    active = await repo.get_active_profile()
    assert active is not None and active.name == "alpha"


async def test_profile_create_cli_driver_stays_inactive(
    cli: Cli, db: Database, repo_dir: Path
) -> None:
    await add_profile(db, "current", active=True)
    result = await cli(
        "profile", "create", "local", "-w", str(repo_dir), "--driver", "cli", "--model", "opus",
        "--command", "my-agent --model '{model}' --quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    repo = ProfileRepository(db)
    stored = await repo.get_profile("local")
    assert stored is not None
    developer = stored.agents["developer"]
    assert developer.driver is DriverType.CLI
    assert developer.options == {"command": ["my-agent", "--model", "{model}", "--quiet"]}
    active = await repo.get_active_profile()
    assert active is not None and active.name == "current"


async def test_profile_create_uses_cwd_and_the_default_model_variable(
    cli: Cli, db: Database
) -> None:
    cli.env["AMELIA_DEFAULT_MODEL"] = "env/model"
    result = await cli("profile", "create", "plain")
    assert result.returncode == 0, result.stderr
    stored = await ProfileRepository(db).get_profile("plain")
    assert stored is not None
    assert stored.working_dir == str(cli.cwd.resolve())
    assert stored.agents["architect"].model == "env/model"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad-Name"], "Invalid profile name"),
        (["ok", "--working-dir", "/no/such/dir"], "does not exist"),
        (["ok", "--driver", "cli", "--base-url", "http://x"], "--base-url applies"),
        (["ok", "--base-url", "ftp://x"], "Invalid --base-url"),
        (["ok", "--command", "x"], "--command applies"),
    ],
)
async def test_profile_create_refuses_bad_input(
    cli: Cli, db: Database, args: list[str], message: str
) -> None:
    result = await cli("profile", "create", *args)
    assert result.returncode == 1
    assert message in result.stderr
    assert await ProfileRepository(db).list_profiles() == []


async def test_profile_create_unknown_driver_is_a_usage_error(cli: Cli, db: Database) -> None:
    result = await cli("profile", "create", "ok", "--driver", "sdk")
    assert result.returncode == 2
    assert await ProfileRepository(db).list_profiles() == []


async def test_profile_create_duplicate_fails(cli: Cli, db: Database, repo_dir: Path) -> None:
    await add_profile(db, "taken")
    result = await cli("profile", "create", "taken", "-w", str(repo_dir), "--activate")
    assert result.returncode == 1
    assert "already exists" in result.stderr
    stored = await ProfileRepository(db).get_profile("taken")
    assert stored is not None and stored.working_dir == "/w/taken"
    assert await ProfileRepository(db).get_active_profile() is None


async def test_profile_list_marks_the_active_one(cli: Cli, db: Database) -> None:
    empty = await cli("profile", "list")
    assert empty.returncode == 0
    assert "No profiles" in empty.stdout
    await add_profile(db, "beta")
    await add_profile(db, "alpha", active=True)
    result = await cli("profile", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "DRIVER", "MODEL", "WORKING", "DIR"]
    assert lines[1].split() == ["*", "alpha", "api", "model/alpha", "/w/alpha"]
    assert lines[2].split() == ["beta", "api", "model/beta", "/w/beta"]


async def test_profile_show(cli: Cli, db: Database) -> None:
    await add_profile(db, "shown", active=True)
    result = await cli("profile", "show", "shown")
    assert result.returncode == 0, result.stderr
    assert "Profile: shown (active)" in result.stdout
    assert "/w/shown" in result.stdout
    assert "developer" in result.stdout and "model/shown" in result.stdout
    missing = await cli("profile", "show", "ghost")
    assert missing.returncode == 1
    assert "not found" in missing.stderr


async def test_profile_delete(cli: Cli, db: Database) -> None:
    await add_profile(db, "doomed", active=True)
    result = await cli("profile", "delete", "doomed")
    assert result.returncode == 0, result.stderr
    assert "Deleted profile doomed" in result.stdout
    assert "It was the active one" in result.stdout
    assert await ProfileRepository(db).get_profile("doomed") is None
    missing = await cli("profile", "delete", "doomed", "--force")
    assert missing.returncode == 1
    assert "not found" in missing.stderr


async def test_profile_activate(cli: Cli, db: Database) -> None:
    await add_profile(db, "old", active=True)
    await add_profile(db, "new")
    result = await cli("profile", "activate", "new")
    assert result.returncode == 0, result.stderr
    assert "Active profile: new" in result.stdout
    repo = ProfileRepository(db)
    active = await repo.get_active_profile()
    assert active is not None and active.name == "new"
    missing = await cli("profile", "activate", "ghost")
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    active = await repo.get_active_profile()
    assert active is not None and active.name == "new"


# --- server -----------------------------------------------------------------------------------


async def test_server_show(cli: Cli) -> None:
    result = await cli("server", "show")
    assert result.returncode == 0, result.stderr
    rows = dict(line.split() for line in result.stdout.splitlines())
    assert rows["max_concurrent"] == "5"
    assert rows["log_retention_days"] == "30"
    assert rows["stream_tool_results"] == "false"
    assert rows["websocket_idle_timeout_seconds"] == "300.0"


async def test_server_set_stores_typed_values(cli: Cli, db: Database) -> None:
    for args, shown in (
        (("max_concurrent", "9"), "max_concurrent = 9"),
        (("stream-tool-results", "yes"), "stream_tool_results = true"),
        (("workflow_start_timeout_seconds", "12.5"), "workflow_start_timeout_seconds = 12.5"),
        (("checkpoint_retention_days", "-1"), "checkpoint_retention_days = -1"),
    ):
        result = await cli("server", "set", *args)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == shown
    stored = await SettingsRepository(db).get_server_settings()
    assert stored.max_concurrent == 9
    assert stored.stream_tool_results is True
    assert stored.workflow_start_timeout_seconds == 12.5
    assert stored.checkpoint_retention_days == -1


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("max_parallel", "3", "Unknown setting 'max_parallel'"),
        ("max_concurrent", "lots", "must be a whole number"),
        ("max_concurrent", "0", "between 1 and 100"),
        ("max_concurrent", "101", "between 1 and 100"),
        ("log_retention_days", "0", "at least 1"),
        ("websocket_idle_timeout_seconds", "0", "greater than 0"),
        ("stream_tool_results", "perhaps", "true or false"),
    ],
)
async def test_server_set_refuses_bad_keys_and_values(
    cli: Cli, db: Database, key: str, value: str, message: str
) -> None:
    result = await cli("server", "set", key, value)
    assert result.returncode == 1
    assert message in result.stderr
    stored = await SettingsRepository(db).get_server_settings()
    assert (stored.max_concurrent, stored.log_retention_days) == (5, 30)


# --- database resolution ----------------------------------------------------------------------


async def test_a_database_behind_head_is_refused_with_the_fix(
    empty_database_url: str, tmp_path: Path
) -> None:
    result = await Cli(empty_database_url, tmp_path)("profile", "list")
    assert result.returncode == 1
    assert "amelia db upgrade" in result.stderr
    assert "no revision" in result.stderr


async def test_an_invalid_database_url_is_a_configuration_error(tmp_path: Path) -> None:
    result = await Cli("mysql://localhost/x", tmp_path)("server", "show")
    assert result.returncode == 2
    assert "AMELIA_DATABASE_URL" in result.stderr


# --- first run --------------------------------------------------------------------------------


async def test_ensure_default_profile_creates_and_activates_one(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AMELIA_DEFAULT_MODEL", "first/run")
    created = await ensure_default_profile(db, interactive=False)
    assert created is not None
    repo = ProfileRepository(db)
    active = await repo.get_active_profile()
    assert active == created
    assert created.name == "default"
    assert created.working_dir == str(await asyncio.to_thread(tmp_path.resolve))
    assert set(created.agents) == set(AGENT_NAMES)
    assert all(
        a.driver is DriverType.API and a.model == "first/run" for a in created.agents.values()
    )
    # Once a profile exists nothing more happens.
    assert await ensure_default_profile(db, interactive=False) is None
    assert [p.name for p in await repo.list_profiles()] == ["default"]


async def test_ensure_default_profile_leaves_existing_profiles_alone(db: Database) -> None:
    await add_profile(db, "mine")
    assert await ensure_default_profile(db, interactive=False) is None
    repo = ProfileRepository(db)
    assert [p.name for p in await repo.list_profiles()] == ["mine"]
    assert await repo.get_active_profile() is None


async def test_concurrent_first_runs_create_one_profile(db: Database) -> None:
    results = await asyncio.gather(*(ensure_default_profile(db, interactive=False) for _ in "ab"))
    assert sum(r is not None for r in results) == 1
    repo = ProfileRepository(db)
    assert [p.name for p in await repo.list_profiles()] == ["default"]
    assert await repo.get_active_profile() is not None


FIRST_RUN_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from amelia.cli_config import ensure_default_profile
    from amelia.server.database import Database

    async def main() -> None:
        db = Database(sys.argv[1], min_size=1, max_size=1)
        await db.connect()
        try:
            created = await ensure_default_profile(db, interactive=sys.stdin.isatty())
            print("RESULT", None if created is None else created.name)
        finally:
            await db.close()

    asyncio.run(main())
    """
)


def run_on_a_terminal(args: list[str], answers: str, env: dict[str, str]) -> tuple[int, str]:
    """Run a process whose stdin/stdout are a pseudo-terminal, typing `answers` ahead."""
    master, slave = pty.openpty()
    process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    os.write(master, answers.encode())
    output = bytearray()
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output.extend(chunk)
    os.close(master)
    return process.wait(timeout=60), output.decode(errors="replace")


async def test_ensure_default_profile_asks_on_a_terminal(
    database_url: str, db: Database, tmp_path: Path, repo_dir: Path
) -> None:
    answers = (
        # First round: an invalid name makes the helper ask again.
        "Bad Name\ncli\nopus\n\n\n"
        # Second round.
        f"mine\ncli\nopus\nmy-agent --model {{model}}\n{repo_dir}\n"
    )
    env = cli_env(database_url, tmp_path / "home")
    code, output = await asyncio.to_thread(
        run_on_a_terminal, [sys.executable, "-c", FIRST_RUN_SCRIPT, database_url], answers, env
    )
    assert code == 0, output
    assert "Invalid profile name" in output
    assert "RESULT mine" in output
    active = await ProfileRepository(db).get_active_profile()
    assert active is not None and active.name == "mine"
    assert active.working_dir == str(repo_dir)
    assert active.agents["reviewer"] == AgentConfig(
        driver="cli", model="opus", options={"command": ["my-agent", "--model", "{model}"]}
    )
