"""The server under test (`amelia serve`, a real process) and what the suite asks PostgreSQL.

Each scenario runs its own server process on its own database, with an `application_name`
of its own, so its backends can be found (and killed) in `pg_stat_activity`: the
SQLAlchemy pool's are named `<name>`, the checkpointer's `<name>-checkpoints`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
from fastapi import FastAPI
from psycopg.rows import DictRow

from amelia.server.config import ServerConfig
from amelia.server.main import create_app
from tests.e2e.serve_process import ServeProcess
from tests.orchestrator.agent_server import AgentServer

AGENT_ROLES = ("architect", "developer", "reviewer", "evaluator", "brainstormer")
STOP_TIMEOUT_S = 60


class Server:
    """`amelia serve` on `database_url` with small pools; `start()`/`stop()` are async."""

    def __init__(self, database_url: str, directory: Path, **settings: Any) -> None:
        self.application_name = f"amelia-rel-{uuid.uuid4().hex[:8]}"
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory / "serve.log"
        env = {
            "AMELIA_DATABASE_URL": database_url,
            "AMELIA_HOME": str(directory / "home"),
            "AMELIA_DB_APPLICATION_NAME": self.application_name,
            "AMELIA_DB_POOL_MIN_SIZE": "2",
            "AMELIA_DB_POOL_MAX_SIZE": "6",
            "AMELIA_CHECKPOINT_POOL_MIN_SIZE": "2",
            "AMELIA_CHECKPOINT_POOL_MAX_SIZE": "4",
        }
        env.update({f"AMELIA_{k.upper()}": str(v) for k, v in settings.items()})
        self.settings = env
        self.process = ServeProcess(env, log=self.log)

    @property
    def url(self) -> str:
        return self.process.url

    async def start(self) -> Server:
        await asyncio.to_thread(self.process.start, 90)
        return self

    async def stop(self) -> None:
        if self.process.process is not None:
            await asyncio.to_thread(self.process.stop)

    def log_tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@asynccontextmanager
async def in_process_app(
    database_url: str, home: Path, **settings: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app in this process (real lifespan) and a client on httpx's ASGI transport:
    cancelling the client's task cancels the request's handler wherever it is."""
    config = ServerConfig(
        database_url=database_url,
        home=home,
        **{
            "db_pool_min_size": 2,
            "db_pool_max_size": 6,
            "checkpoint_pool_min_size": 1,
            "checkpoint_pool_max_size": 4,
            **settings,
        },
    )
    app = create_app(config)
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://amelia.test") as client:
            yield app, client
    finally:
        # A shutdown that hangs is a finding, not a reason to hang the suite.
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await lifespan.__aexit__(None, None, None)
        except TimeoutError:
            stuck = sorted(
                task.get_name()
                for task in asyncio.all_tasks()
                if task.cancelling() and not task.done()
            )
            raise AssertionError(
                f"the app did not stop within {STOP_TIMEOUT_S} s; tasks that ignored their "
                f"cancellation: {stuck}"
            ) from None


async def pools_checked_out(client: httpx.AsyncClient) -> tuple[int, int]:
    """(SQLAlchemy, checkpointer) connections checked out, as `/api/health` reports them."""
    body = (await client.get("/api/health")).json()
    return int(body["database"]["pool"]["checked_out"]), int(body["checkpoint_pool"]["checked_out"])


async def wait_pools_idle(client: httpx.AsyncClient, timeout: float = 10.0) -> tuple[int, int]:
    """Poll until both pools report nothing checked out; the last figures seen."""
    deadline = asyncio.get_running_loop().time() + timeout
    figures = (-1, -1)
    while asyncio.get_running_loop().time() < deadline:
        figures = await pools_checked_out(client)
        if figures == (0, 0):
            return figures
        await asyncio.sleep(0.1)
    return figures


async def use_agents(client: httpx.AsyncClient, agents: AgentServer, worktree: Path) -> None:
    """Profile `rel` on the scripted agent server, active; room for 20 running workflows."""
    options = {"base_url": agents.url, "read_timeout": 60, "max_retries": 0}
    body = {
        "id": "rel",
        "working_dir": str(worktree),
        "agents": {
            role: {"driver": "api", "model": "test/model", "options": options}
            for role in AGENT_ROLES
        },
    }
    created = await client.post("/api/profiles", json=body)
    assert created.status_code == 201, created.text
    activated = await client.post("/api/profiles/rel/activate")
    assert activated.status_code == 200, activated.text
    settings = await client.put("/api/settings", json={"max_concurrent": 20})
    assert settings.status_code == 200, settings.text


def git_dir(path: Path) -> str:
    (path / ".git").mkdir(parents=True, exist_ok=True)
    return str(path)


async def queue_workflow(client: httpx.AsyncClient, worktree: Path, issue: str) -> str:
    """A queued (pending) workflow; its id."""
    response = await client.post(
        "/api/workflows",
        json={"issue_id": issue, "worktree_path": git_dir(worktree), "start": False},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# --- what PostgreSQL says about our backends -------------------------------------------------

_OURS = "application_name LIKE %s AND pid <> pg_backend_pid()"


async def our_backends(observer: psycopg.AsyncConnection[DictRow], app: str) -> list[DictRow]:
    cur = await observer.execute(
        f"SELECT pid, application_name, state, xact_start FROM pg_stat_activity WHERE {_OURS}",
        (f"{app}%",),
    )
    return await cur.fetchall()


async def terminate_ours(observer: psycopg.AsyncConnection[DictRow], app: str) -> int:
    """`pg_terminate_backend` on every backend of the server under test; how many."""
    cur = await observer.execute(
        f"SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity WHERE {_OURS}",
        (f"{app}%",),
    )
    row = await cur.fetchone()
    return 0 if row is None else int(row["n"])


async def idle_in_transaction(
    observer: psycopg.AsyncConnection[DictRow], app: str
) -> list[DictRow]:
    return [
        row
        for row in await our_backends(observer, app)
        if str(row["state"]).startswith("idle in transaction")
    ]


async def locks_held(observer: psycopg.AsyncConnection[DictRow], app: str) -> list[DictRow]:
    """Row, relation and transaction locks our backends hold (their own virtualxid aside)."""
    cur = await observer.execute(
        "SELECT l.pid, l.locktype, l.mode, l.relation::regclass::text AS relation "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE a.application_name LIKE %s AND l.granted AND l.locktype <> 'virtualxid'",
        (f"{app}%",),
    )
    return await cur.fetchall()
