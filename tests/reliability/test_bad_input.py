"""Bad input is refused cleanly: a clear 4xx, nothing stored changes, no workflow fails.

One sweep sends every kind of bad input the issue names (NUL in JSON and text fields, keys,
paths and queries; datetimes without a zone; ids that are not UUIDs; cursors that do not
decode; a 20 MB body, declared or chunked) to a live app holding a blocked and a queued
workflow, and checks a fingerprint of every domain table before and after. The field-level
checks live next to each route and repository (tests/api, tests/database); this is the
"nothing changed, nothing failed" property over all of them at once.

Then the two kinds of bad input that come from agents rather than clients: a cost beyond
NUMERIC(10,6) and an event payload of 300 MB, during a real run that must still complete.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from amelia.server.database.event_log import MAX_EVENT_DATA_BYTES
from amelia.server.models.events import EventType
from amelia.server.services import AppServices
from bench.reliability_report import ScenarioResult, record
from tests.orchestrator.agent_server import _Handler, _role
from tests.reliability.conftest import PacedAgents
from tests.reliability.integrity import wait_status
from tests.reliability.load import http
from tests.reliability.owned_pg import OwnedPostgres, observer
from tests.reliability.server import Server, git_dir, in_process_app, queue_workflow, use_agents

# Every table a client or a run writes to (leases and heartbeats aside).
DOMAIN_TABLES = (
    "workflows",
    "workflow_log",
    "token_usage",
    "prompts",
    "prompt_versions",
    "workflow_prompt_versions",
    "server_settings",
    "profiles",
    "brainstorm_sessions",
    "brainstorm_messages",
    "brainstorm_artifacts",
    "checkpoints",
    "checkpoint_blobs",
    "checkpoint_writes",
)
TWENTY_MB = 20 * 1024 * 1024


@pytest.fixture
async def app_client(
    owned_pg: OwnedPostgres, scenario_db: str, tmp_path: Path
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    async with in_process_app(owned_pg.url(scenario_db), tmp_path / "home") as pair:
        yield pair


async def fingerprint(url: str) -> dict[str, str]:
    """An md5 of every row of every domain table (workflows without their lease columns)."""
    prints = {}
    async with await observer(url) as watcher:
        for table in DOMAIN_TABLES:
            cur = await watcher.execute("SELECT to_regclass(%s) IS NOT NULL AS present", (table,))
            row = await cur.fetchone()
            if row is None or not row["present"]:
                continue
            source = (
                "(SELECT id, status, failure_reason, plan_cache, event_sequence, completed_at "
                "FROM workflows)"
                if table == "workflows"
                else table
            )
            cur = await watcher.execute(
                f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS h "
                f"FROM {source} t"
            )
            row = await cur.fetchone()
            prints[table] = "" if row is None else str(row["h"])
    return prints


def cursor(text: bytes) -> str:
    return base64.b64encode(text).decode()


async def chunks(size: int) -> AsyncIterator[bytes]:
    block = b"x" * 65536
    for _ in range(size // len(block)):
        yield block


def bad_requests(blocked: str, pending: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(what, method, path, httpx keyword arguments) of each bad input."""
    unknown = uuid.uuid4()
    agent = {"driver": "api", "model": "m", "options": {}}
    nul = "a\u0000b"
    return [
        # NUL in JSON text fields, in keys, nested, in paths and in queries.
        (
            "NUL in feedback",
            "POST",
            f"/api/workflows/{blocked}/reject",
            {"json": {"feedback": nul}},
        ),
        (
            "NUL in a plan",
            "POST",
            f"/api/workflows/{pending}/plan",
            {"json": {"plan_content": nul}},
        ),
        ("NUL in a profile", "PUT", "/api/profiles/rel", {"json": {"working_dir": f"/{nul}"}}),
        (
            "NUL in a key",
            "POST",
            "/api/profiles",
            {"json": {"id": "k", "working_dir": "/w", "agents": {nul: agent}}},
        ),
        (
            "NUL nested",
            "PUT",
            "/api/profiles/rel",
            {"json": {"agents": {"developer": {**agent, "options": {"x": [nul]}}}}},
        ),
        (
            "NUL in a prompt",
            "POST",
            "/api/prompts/architect.plan/versions",
            {"json": {"content": nul}},
        ),
        (
            "NUL in a topic",
            "POST",
            "/api/brainstorm/sessions",
            {"json": {"profile_id": "rel", "topic": nul}},
        ),
        (
            "NUL in a task",
            "POST",
            "/api/workflows",
            {"json": {"issue_id": "N-1", "worktree_path": "/tmp", "task_title": nul}},
        ),
        (
            "raw NUL byte",
            "POST",
            f"/api/workflows/{blocked}/reject",
            {"content": b'{"feedback": "a\x00b"}', "headers": {"content-type": "application/json"}},
        ),
        ("NUL in a query", "GET", "/api/workflows", {"params": {"worktree": nul}}),
        ("NUL in a path", "GET", "/api/profiles/a%00b", {}),
        # Datetimes without a time zone.
        (
            "naive cursor",
            "GET",
            "/api/workflows",
            {"params": {"cursor": cursor(f"2026-03-29T02:30:00|{unknown}".encode())}},
        ),
        (
            "datetime for a date",
            "GET",
            "/api/usage",
            {"params": {"start": "2026-03-29T02:30:00", "end": "2026-03-30"}},
        ),
        # Ids that are not UUIDs.
        ("id not a UUID", "GET", "/api/workflows/not-a-uuid", {}),
        ("approve not a UUID", "POST", "/api/workflows/123/approve", {}),
        ("cancel not a UUID", "POST", f"/api/workflows/{blocked}x/cancel", {}),
        ("session not a UUID", "GET", "/api/brainstorm/sessions/zzz", {}),
        ("version not a UUID", "GET", "/api/prompts/architect.plan/versions/1", {}),
        (
            "batch ids not UUIDs",
            "POST",
            "/api/workflows/start-batch",
            {"json": {"workflow_ids": ["x"]}},
        ),
        # Cursors that do not decode.
        ("cursor not base64", "GET", "/api/workflows", {"params": {"cursor": "%%%"}}),
        (
            "cursor not UTF-8",
            "GET",
            "/api/workflows",
            {"params": {"cursor": cursor(b"\xff\xfe|\x00")}},
        ),
        (
            "cursor without id",
            "GET",
            "/api/workflows",
            {"params": {"cursor": cursor(b"2026-01-01T00:00:00+00:00")}},
        ),
        # 20 MB bodies: declared, and streamed without a length.
        (
            "20 MB body",
            "POST",
            f"/api/workflows/{pending}/plan",
            {"json": {"plan_content": "x" * TWENTY_MB}},
        ),
        (
            "20 MB chunked",
            "POST",
            f"/api/workflows/{pending}/plan",
            {"content": chunks(TWENTY_MB), "headers": {"content-type": "application/json"}},
        ),
    ]


async def test_bad_input_is_refused_and_changes_nothing(
    app_client: tuple[FastAPI, httpx.AsyncClient],
    owned_pg: OwnedPostgres,
    scenario_db: str,
    agents: PacedAgents,
    tmp_path: Path,
) -> None:
    url = owned_pg.url(scenario_db)
    _, client = app_client
    await use_agents(client, agents, tmp_path)
    pending = await queue_workflow(client, tmp_path / "pending", "PENDING-1")
    created = await client.post(
        "/api/workflows", json={"issue_id": "BLOCKED-1", "worktree_path": git_dir(tmp_path / "b")}
    )
    blocked = created.json()["id"]
    await wait_status(client, blocked, "blocked")
    before = await fingerprint(url)

    answers = {}
    for what, method, path, kwargs in bad_requests(blocked, pending):
        response = await client.request(method, path, **kwargs)
        body = response.json()
        answers[what] = response.status_code
        assert 400 <= response.status_code < 500, (what, response.status_code, response.text[:300])
        # A clear answer: FastAPI's validation detail or the error envelope, never bare.
        assert body.get("detail") or (body.get("error") and body.get("code")), (what, body)
        if what.startswith("20 MB"):
            assert response.status_code == 413, what
            assert body["code"] == "PAYLOAD_TOO_LARGE"
            assert body["details"]["limit_bytes"] < TWENTY_MB

    after = await fingerprint(url)
    assert after == before, {t for t in before if before[t] != after.get(t)}
    # Neither workflow was failed by any of it, and both still work.
    assert (await client.get(f"/api/workflows/{blocked}")).json()["failure_reason"] is None
    assert (await client.get(f"/api/workflows/{pending}")).json()["status"] == "pending"
    assert (await client.post(f"/api/workflows/{blocked}/approve")).status_code == 200
    done = await wait_status(client, blocked, "completed")
    assert done["failure_reason"] is None
    record(
        ScenarioResult(
            scenario="bad_input",
            fault=f"{len(answers)} kinds of bad input sent to a live server",
            requests_sent=len(answers),
            failed_during_fault=0,
            failed_after_healing=0,
            recovery_s=None,
            rows_checked=len(before),
            rows_lost=sum(before[t] != after.get(t) for t in before),
            details={
                "answers": ", ".join(
                    f"{code} x{list(answers.values()).count(code)}"
                    for code in sorted(set(answers.values()))
                ),
                "tables fingerprinted": len(before),
            },
        )
    )


class _PricedHandler(_Handler):
    """The scripted agents, reporting the cost `agents.reported_cost` for developer turns."""

    def do_POST(self) -> None:
        agents: PricedAgents = self.server.agents  # type: ignore[attr-defined]
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        role = _role(body)
        _, text = agents.answer(role, body)
        usage: dict[str, Any] = {"prompt_tokens": 120, "completion_tokens": 30}
        if role == "developer":
            usage["cost"] = agents.reported_cost
        payload = json.dumps(
            {
                "id": "cmpl",
                "object": "chat.completion",
                "model": "test/model",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                "usage": usage,
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class PricedAgents(PacedAgents):
    def __init__(self, reported_cost: str) -> None:
        super().__init__(tasks=1)
        self.reported_cost = reported_cost
        self._server.RequestHandlerClass = _PricedHandler


async def test_a_cost_beyond_the_column_and_a_300_mb_event_do_not_fail_the_run(
    app_client: tuple[FastAPI, httpx.AsyncClient],
    owned_pg: OwnedPostgres,
    scenario_db: str,
    tmp_path: Path,
) -> None:
    app, client = app_client
    services: AppServices = app.state.services
    agents = PricedAgents(reported_cost="12345.678901").start()  # NUMERIC(10,6) tops at 9999.999999
    try:
        await use_agents(client, agents, tmp_path)
        created = await client.post(
            "/api/workflows", json={"issue_id": "COST-1", "worktree_path": git_dir(tmp_path / "w")}
        )
        workflow_id = created.json()["id"]
        await wait_status(client, workflow_id, "blocked")
        # 300 MB of event payload from a run (a tool's whole output, say).
        huge = {"tool_output": "é" * (150 * 1024 * 1024)}
        stored = await services.orchestrator.emitter.emit(
            uuid.UUID(workflow_id), EventType.STAGE_COMPLETED, "huge output", data=huge
        )
        del huge
        assert (await client.post(f"/api/workflows/{workflow_id}/approve")).status_code == 200
        done = await wait_status(client, workflow_id, "completed")
    finally:
        agents.stop()
    assert done["failure_reason"] is None
    assert stored.sequence > 0
    assert stored.data is not None and stored.data["_truncated"] is True
    assert stored.data["original_bytes"] > 300_000_000
    async with await observer(owned_pg.url(scenario_db)) as watcher:
        cur = await watcher.execute(
            "SELECT data, pg_column_size(data) AS size FROM workflow_log WHERE id = %s",
            (stored.id,),
        )
        row = await cur.fetchone()
        cur = await watcher.execute(
            "SELECT agent, cost_usd FROM token_usage WHERE workflow_id = %s ORDER BY timestamp",
            (workflow_id,),
        )
        usage = await cur.fetchall()
    assert row is not None and row["data"]["_truncated"] is True
    assert row["size"] < MAX_EVENT_DATA_BYTES
    # The architect's and reviewer's turns are recorded; the developer's impossible cost
    # is refused (logged), not stored clipped or rounded, and the run went on.
    assert [r["agent"] for r in usage] == ["architect", "reviewer"]
    record(
        ScenarioResult(
            scenario="bad_agent_output",
            fault="a reported cost of $12,345.678901 and a 300 MB event payload mid-run",
            requests_sent=3,
            failed_during_fault=0,
            failed_after_healing=0,
            recovery_s=None,
            rows_checked=len(usage) + 1,
            rows_lost=0,
            details={
                "event stored as": f"a {row['size']}-byte truncation marker",
                "workflow": done["status"],
            },
        )
    )


async def test_a_20_mb_body_sent_to_a_real_server_is_a_413(
    owned_pg: OwnedPostgres, scenario_db: str, tmp_path: Path
) -> None:
    # Over a socket the answer comes before the body is read (uvicorn, not the ASGI shim).
    server = await Server(owned_pg.url(scenario_db), tmp_path / "server").start()
    try:
        async with http(server.url, timeout=60) as client:
            declared = await client.post(
                "/api/profiles",
                content=b"x" * TWENTY_MB,
                headers={"content-type": "application/json"},
            )
            streamed = await client.post(
                "/api/profiles",
                content=chunks(TWENTY_MB),
                headers={"content-type": "application/json"},
            )
            after = await client.get("/api/profiles")
    finally:
        await server.stop()
    for response in (declared, streamed):
        assert response.status_code == 413, response.text[:300]
        assert response.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert after.status_code == 200
