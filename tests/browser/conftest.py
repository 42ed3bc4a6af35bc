"""Browser tests: a real `amelia serve` on its own PostgreSQL database, driven by chromium.

One server, one agent server and one browser per test module (they take seconds to start);
one page per test. Every page records console errors and uncaught exceptions, so a test can
assert that the dashboard logged none.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.browser.chromium import CHROMIUM_ARGS, chromium_path, unavailable
from tests.e2e.serve_process import ServeProcess
from tests.orchestrator.agent_server import AgentServer
from tests.pg import create_database, drop_database, with_database

T = TypeVar("T")

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 820}
AGENTS = ("architect", "developer", "reviewer", "evaluator", "brainstormer")


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private loop in a worker thread.

    The sync tests drive Playwright's own loop in this thread; seeding the database through
    the async repositories happens elsewhere so the two never meet.
    """

    async def main() -> T:
        return await factory()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


@pytest.fixture(scope="module")
def browser_database_url(pg_admin_url: str, template_database: str) -> Iterator[str]:
    """A fresh migrated database shared by one test module."""
    name = create_database(pg_admin_url, template=template_database)
    try:
        yield with_database(pg_admin_url, name)
    finally:
        drop_database(pg_admin_url, name)


@pytest.fixture(scope="module")
def agents() -> Iterator[AgentServer]:
    server = AgentServer().start()
    try:
        yield server
    finally:
        server.stop()


def dev_profile(agents_url: str, working_dir: str) -> dict[str, Any]:
    options = {"base_url": agents_url, "read_timeout": 60, "max_retries": 0}
    return {
        "id": "dev",
        "working_dir": working_dir,
        "agents": {
            name: {"driver": "api", "model": "test/model", "options": options} for name in AGENTS
        },
    }


@pytest.fixture(scope="module")
def chromium() -> str:
    """The browser's path, checked before anything slow starts (skip, or fail in CI)."""
    executable = chromium_path()
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("the playwright package is not installed (`pip install -e '.[dev]'`)")
    return executable


@pytest.fixture(scope="module")
def server(
    chromium: str,
    browser_database_url: str,
    agents: AgentServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServeProcess]:
    """`amelia serve` on the module's database, with an active profile played by `agents`."""
    home = tmp_path_factory.mktemp("serve")
    env = {
        "AMELIA_DATABASE_URL": browser_database_url,
        "AMELIA_HOME": str(home / "home"),
        "AMELIA_DB_POOL_MIN_SIZE": "1",
        "AMELIA_DB_POOL_MAX_SIZE": "4",
        "AMELIA_CHECKPOINT_POOL_MIN_SIZE": "1",
        "AMELIA_CHECKPOINT_POOL_MAX_SIZE": "3",
    }
    process = ServeProcess(env, log=home / "serve.log").start()
    try:
        created = httpx.post(
            f"{process.url}/api/profiles", json=dev_profile(agents.url, str(home)), timeout=10
        )
        assert created.status_code == 201, created.text
        activated = httpx.post(f"{process.url}/api/profiles/dev/activate", timeout=10)
        assert activated.status_code == 200, activated.text
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def browser_context(chromium: str, server: ServeProcess) -> Iterator[Any]:
    """One headless chromium for the module (closed before the server stops)."""
    from playwright.sync_api import sync_playwright

    with (
        tempfile.TemporaryDirectory(prefix="amelia-chromium-") as profile_dir,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile_dir,
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport=VIEWPORT,
            base_url=server.url,
            locale="en-US",
            timezone_id="UTC",
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


class PageProblems:
    """Console errors and uncaught exceptions a page reported."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} ({message.location})")

    def exception(self, error: Any) -> None:
        self.errors.append(f"uncaught: {error}")


@pytest.fixture
def page(browser_context: Any) -> Iterator[Any]:
    """A fresh tab; `page.problems.errors` lists what it logged as errors."""
    tab = browser_context.new_page()
    problems = PageProblems()
    tab.on("console", problems.console)
    tab.on("pageerror", problems.exception)
    tab.problems = problems
    try:
        yield tab
    finally:
        tab.close()


def screenshot(page: Any, name: str, *, full_page: bool = False) -> Path:
    """Save the viewport (or the whole page) as docs/screenshots/<name>.png (for the README)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), animations="disabled", caret="hide", full_page=full_page)
    return path
