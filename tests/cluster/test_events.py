"""Events across processes: a client on one server sees what another process writes."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from websockets.asyncio.client import connect

from amelia.server.database import Database
from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.state import ServerExecutionState, WorkflowStatus
from tests.e2e.serve_process import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 1000


def ws_url(server: ServeProcess, query: str = "") -> str:
    return f"ws://127.0.0.1:{server.port}/ws/events{query}"


async def next_event(conn: Any, timeout: float = 30) -> dict[str, Any]:
    while True:
        message = json.loads(await asyncio.wait_for(conn.recv(), timeout))
        if message.get("type") == "event":
            payload: dict[str, Any] = message["payload"]
            return payload


async def kill_listen_connections(db: Database) -> int:
    """Terminate every server's LISTEN connection (the relays must recover by themselves)."""
    async with db.connection() as conn:
        killed = await conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'amelia-listen' AND datname = current_database()"
            )
        )
    return int(killed or 0)


async def wait_for_reconnects(client: httpx.AsyncClient, count: int) -> None:
    for _ in range(300):
        process = (await client.get("/api/health")).json()["process"]
        if process["listen_reconnects"] >= count and process["listen_connected"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the LISTEN connection did not come back {count} times")


@pytest.mark.slow
async def test_a_client_on_another_process_gets_every_event_once_in_order(
    cluster_factory: Any, prepared_db: Database, tmp_path: Path, database_url: str
) -> None:
    db = prepared_db
    cluster = await cluster_factory(1)
    server = cluster.servers[0]
    workflow_id = uuid.uuid4()
    await WorkflowRepository(db).create(
        ServerExecutionState(
            id=workflow_id,
            issue_id="EVENTS-1",
            worktree_path=str(tmp_path),
            # Blocked: no server claims it; only the writer process adds its events.
            workflow_status=WorkflowStatus.BLOCKED,
        )
    )
    ready, go = tmp_path / "ready", tmp_path / "go"
    async with connect(ws_url(server), proxy=None) as conn:
        await conn.send(json.dumps({"type": "subscribe", "workflow_id": str(workflow_id)}))
        # Another OS process writes the events through the repository, as a server does.
        writer = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.database.event_log_writer",
            database_url,
            str(workflow_id),
            str(EVENTS),
            str(ready),
            str(go),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(6000):  # the writer connects
            if ready.exists():
                break
            await asyncio.sleep(0.01)
        go.touch()
        received: list[dict[str, Any]] = []
        killed = 0
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
            while len(received) < EVENTS:
                received.append(await next_event(conn))
                if len(received) in (200, 600):
                    # Mid-stream, the server's LISTEN connection dies; nothing may be lost.
                    killed += await kill_listen_connections(db)
                    # Each kill hits a connection in use (not one still being opened).
                    await wait_for_reconnects(client, killed)
        out, err = await writer.communicate()
        assert writer.returncode == 0, err.decode()[-2000:]
        # Nothing more arrives: each event came exactly once.
        try:
            extra = await next_event(conn, timeout=1.5)
        except TimeoutError:
            extra = None
        assert extra is None, extra
    assert killed >= 2
    assert [p["sequence"] for p in received] == list(range(1, EVENTS + 1))
    assert len({p["id"] for p in received}) == EVENTS
    assert json.loads(out) == list(range(1, EVENTS + 1))
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        health = (await client.get("/api/health")).json()
    assert health["process"]["listen_reconnects"] >= 2
    assert health["process"]["listen_connected"] is True


@pytest.mark.slow
async def test_a_workflow_running_on_one_process_is_seen_live_on_another(
    cluster_factory: Any, prepared_db: Database, tmp_path: Path
) -> None:
    db = prepared_db
    cluster = await cluster_factory(2)
    runner, watcher = cluster.servers
    tree = tmp_path / "tree"
    tree.mkdir()
    async with connect(ws_url(watcher), proxy=None) as conn:
        await conn.send(json.dumps({"type": "subscribe_all"}))
        async with httpx.AsyncClient(base_url=runner.url, timeout=60) as client:
            answer = await client.post(
                "/api/workflows/review",
                json={"diff_content": "diff --git a/x b/x\n+x\n", "worktree_path": str(tree)},
            )
        assert answer.status_code == 201, answer.text
        workflow_id = answer.json()["id"]
        seen: list[dict[str, Any]] = []
        while not seen or seen[-1]["event_type"] != "workflow_completed":
            payload = await next_event(conn)
            if payload["workflow_id"] == workflow_id and payload["sequence"] > 0:
                seen.append(payload)
    stored = await WorkflowRepository(db).get_recent_events(uuid.UUID(workflow_id), 1000)
    assert [p["id"] for p in seen] == [str(e.id) for e in stored]
    assert [p["sequence"] for p in seen] == list(range(1, len(stored) + 1))
    # The runner announced its events itself (batched hints), and has none left unsent.
    async with httpx.AsyncClient(base_url=runner.url, timeout=10) as client:
        process = (await client.get("/api/health")).json()["process"]
    assert process["event_notifications_sent"] > 0
    assert process["event_hints_pending"] == 0
    assert process["events_swept"] == 0  # every hint arrived: nothing left to sweep
