"""Schemathesis against our own OpenAPI document, time-bounded: no request may get a 500."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.serve_process import ServeProcess

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
FUZZ_SECONDS = 60


@pytest.mark.slow
def test_no_server_errors_under_fuzzing(database_url: str, tmp_path: Path) -> None:
    env = {"AMELIA_DATABASE_URL": database_url, "AMELIA_HOME": str(tmp_path / "home")}
    with ServeProcess(env, log=tmp_path / "serve.log") as server:
        done = subprocess.run(
            [
                SCHEMATHESIS,
                "run",
                f"{server.url}/api/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-time",
                str(FUZZ_SECONDS),
                # One worker: hypothesis's lambda-source parsing is not thread-safe on 3.11.
                "--workers",
                "1",
                "--request-timeout",
                "20",
                "--suppress-health-check",
                "all",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=FUZZ_SECONDS + 240,
        )
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    cases = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert cases is not None, report
    assert int(cases[1]) > 500
    assert cases[1] == cases[2], report
    assert re.search(r"Tested: (\d+)", done.stdout), report
