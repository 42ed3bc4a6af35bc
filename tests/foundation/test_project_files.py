"""Static checks of the files no test here can run (no Docker engine): compose, CI, docs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from amelia.server.config import ServerConfig, env_name

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> Any:
    return yaml.safe_load((ROOT / name).read_text())


def test_compose_runs_postgres_16_with_health_check_and_test_database() -> None:
    service = load("docker-compose.yml")["services"]["postgres"]
    assert service["image"] == "postgres:16"
    env = service["environment"]
    assert env == {
        "POSTGRES_USER": "amelia",
        "POSTGRES_PASSWORD": "amelia",
        "POSTGRES_DB": "amelia",
    }
    assert any(str(p).endswith(":5432") for p in service["ports"])
    assert "pg_isready" in " ".join(service["healthcheck"]["test"])
    init = [v for v in service["volumes"] if "docker-entrypoint-initdb.d" in v]
    assert init
    script = ROOT / init[0].split(":")[0]
    assert "CREATE DATABASE amelia_test" in script.read_text()


def test_github_workflow_has_postgres_service_lint_typecheck_and_tests() -> None:
    workflow = load(".github/workflows/ci.yml")
    job = workflow["jobs"]["check"]
    service = job["services"]["postgres"]
    assert service["image"] == "postgres:16"
    assert "pg_isready" in service["options"]
    url = job["env"]["AMELIA_TEST_DATABASE_URL"]
    assert url.startswith("postgresql://amelia:amelia@localhost:5432/")
    steps = " ".join(str(step.get("run", "")) for step in job["steps"])
    assert "make lint" in steps
    assert "make test" in steps
    makefile = (ROOT / "Makefile").read_text()
    assert "ruff check" in makefile
    assert "ruff format --check" in makefile
    assert "mypy" in makefile


def test_ci_script_calls_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^make (\w+)\s+# installs", readme, flags=re.MULTILINE)
    assert commands == ["test", "serve"]
    script = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    assert re.search(r"^make test$", script, flags=re.MULTILINE)


def test_readme_documents_every_setting_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, field in ServerConfig.model_fields.items():
        variable = env_name(name)
        row = next((line for line in readme.splitlines() if f"`{variable}`" in line), None)
        assert row is not None, f"{variable} missing from the README"
        default = field.default
        if default is None or name == "home":
            continue
        if isinstance(default, float) and default.is_integer():
            default = int(default)
        assert f"`{default}`".lower() in row.lower(), (variable, row)
