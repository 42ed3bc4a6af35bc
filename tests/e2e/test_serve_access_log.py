"""`amelia serve` logs one line per request only when asked (`--access-log` or
AMELIA_ACCESS_LOG); the flag wins over the variable."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.serve_process import ServeProcess


@pytest.mark.parametrize(
    ("args", "env", "logged"),
    [
        ((), {}, False),
        (("--access-log",), {}, True),
        ((), {"AMELIA_ACCESS_LOG": "true"}, True),
        (("--no-access-log",), {"AMELIA_ACCESS_LOG": "true"}, False),
    ],
)
def test_access_log_only_when_asked(
    database_url: str,
    tmp_path: Path,
    args: tuple[str, ...],
    env: dict[str, str],
    logged: bool,
) -> None:
    log = tmp_path / "serve.log"
    settings = {"AMELIA_DATABASE_URL": database_url, "AMELIA_HOME": str(tmp_path / "h"), **env}
    with ServeProcess(settings, *args, log=log) as server:
        for _ in range(3):
            assert httpx.get(f"{server.url}/api/workflows?limit=1", timeout=10).status_code == 200
    lines = [line for line in log.read_text().splitlines() if "GET /api/workflows?limit=1" in line]
    assert len(lines) == (3 if logged else 0), log.read_text()[-2000:]
