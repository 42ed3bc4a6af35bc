"""Debian's chromium driven by Playwright: where it is, how it starts, what to do without it.

A Playwright browser download does not work on these machines, so the tests launch the
system's `/usr/bin/chromium` (installed by `make install`) through `executable_path`. When it
is missing the browser tests skip on a developer's machine but fail in CI (CI=true), where a
skipped dashboard test would hide a broken install step.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
INSTALL_HINT = "run `make install` (it runs `apt-get install -y chromium`)"


def unavailable(reason: str) -> None:
    """Fail in CI, skip elsewhere: the dashboard cannot be tested here."""
    message = f"browser tests cannot run: {reason}; {INSTALL_HINT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def chromium_path() -> str:
    """The system chromium's path (skips or fails the test when there is none).

    `AMELIA_TEST_CHROMIUM` names another binary; when set, it is the only one tried.
    """
    override = os.environ.get("AMELIA_TEST_CHROMIUM", "").strip()
    candidates = [override] if override else [*CHROMIUM_PATHS, shutil.which("chromium") or ""]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    unavailable(f"no chromium at {' or '.join(c for c in candidates if c)}")
    raise AssertionError("unreachable")
