"""`amelia serve` with a fresh home and no database URL: zero setup, data kept across restarts."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.serve_process import ServeProcess

PROFILE = {
    "id": "e2e",
    "working_dir": "/tmp",
    "agents": {"developer": {"driver": "api", "model": "m/one", "options": {}}},
}


@pytest.mark.slow
def test_embedded_server_keeps_settings_and_profiles_across_restarts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"AMELIA_HOME": str(home)}
    log = tmp_path / "serve.log"
    with ServeProcess(env, log=log) as server:
        health = httpx.get(f"{server.url}/api/health", timeout=10).json()
        assert health["status"] == "healthy"
        assert "embedded PostgreSQL" in health["database"]["target"]
        saved = httpx.put(f"{server.url}/api/settings", json={"max_concurrent": 7}, timeout=10)
        assert saved.status_code == 200, saved.text
        created = httpx.post(f"{server.url}/api/profiles", json=PROFILE, timeout=10)
        assert created.status_code == 201, created.text
    assert "embedded PostgreSQL" in log.read_text()
    assert not (home / "postgres" / "postmaster.pid").exists(), "embedded server left running"

    with ServeProcess(env, log=log) as server:
        assert httpx.get(f"{server.url}/api/health", timeout=10).json()["status"] == "healthy"
        settings = httpx.get(f"{server.url}/api/settings", timeout=10).json()
        assert settings["max_concurrent"] == 7
        profile = httpx.get(f"{server.url}/api/profiles/e2e", timeout=10)
        assert profile.status_code == 200
        assert profile.json()["agents"]["developer"]["model"] == "m/one"


def test_serve_refuses_a_database_behind_head(empty_database_url: str, tmp_path: Path) -> None:
    import subprocess

    from tests.e2e.serve_process import AMELIA

    done = subprocess.run(
        [AMELIA, "serve"],
        env={"AMELIA_DATABASE_URL": empty_database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 1
    assert "alembic upgrade head" in done.stderr
    assert "amelia serve --migrate" in done.stderr


def test_serve_migrate_upgrades_a_configured_database(
    empty_database_url: str, tmp_path: Path
) -> None:
    env = {"AMELIA_DATABASE_URL": empty_database_url, "AMELIA_HOME": str(tmp_path / "h")}
    with ServeProcess(env, "--migrate", log=tmp_path / "serve.log") as server:
        health = httpx.get(f"{server.url}/api/health", timeout=10).json()
        assert health["status"] == "healthy"
        assert "AMELIA_DATABASE_URL" in health["database"]["target"]
    assert "Uvicorn running" in (tmp_path / "serve.log").read_text()
