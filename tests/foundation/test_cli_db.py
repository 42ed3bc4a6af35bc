"""`amelia db upgrade|current|check` and the interim `amelia serve`, run as real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, inspect

from amelia.server.database.migrations import head_revision
from tests.foundation.test_migrations import sync_url

AMELIA = str(Path(sys.executable).parent / "amelia")


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AMELIA, *args], env=env, capture_output=True, text=True, timeout=180, cwd="/"
    )


def env_with(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMELIA_")}
    env.update(values)
    return env


def test_upgrade_check_and_current_against_a_configured_url(empty_database_url: str) -> None:
    env = env_with(AMELIA_DATABASE_URL=empty_database_url)
    behind = run("db", "check", env=env)
    assert behind.returncode == 1
    assert "alembic upgrade head" in behind.stderr
    assert "amelia db upgrade" in behind.stderr

    refused = run("serve", env=env)
    assert refused.returncode == 1
    assert "--migrate" in refused.stderr

    upgraded = run("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert head_revision() in upgraded.stdout

    engine = create_engine(sync_url(empty_database_url))
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert {"workflows", "checkpoints", "checkpoint_blobs", "checkpoint_writes"} <= tables

    assert run("db", "check", env=env).returncode == 0
    current = run("db", "current", env=env)
    assert current.returncode == 0
    assert f"current:  {head_revision()}" in current.stdout


def test_connection_failure_is_one_clear_line() -> None:
    done = run("db", "check", env=env_with(AMELIA_DATABASE_URL="postgresql://u@127.0.0.1:1/x"))
    assert done.returncode == 1
    assert "Cannot connect to PostgreSQL at host 127.0.0.1, port 1" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_configuration_exits_2_naming_the_variable() -> None:
    done = run("db", "check", env=env_with(AMELIA_DB_POOL_MAX_SIZE="0"))
    assert done.returncode == 2
    assert "AMELIA_DB_POOL_MAX_SIZE" in done.stderr
