"""After a fault: is everything that was acknowledged still there, and nothing half-written?"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import psycopg
from psycopg.rows import DictRow

from amelia.server.checkpoint import CheckpointStore, thread_config

TERMINAL = ("completed", "failed", "cancelled")


async def missing_profiles(observer: psycopg.AsyncConnection[DictRow], ids: list[str]) -> int:
    """How many acknowledged (201) profiles are not stored."""
    cur = await observer.execute("SELECT count(*) AS n FROM profiles WHERE id = ANY(%s)", (ids,))
    row = await cur.fetchone()
    assert row is not None
    return len(set(ids)) - int(row["n"])


async def event_sequence_gaps(
    observer: psycopg.AsyncConnection[DictRow], workflow_ids: list[str]
) -> dict[str, Any]:
    """Workflows whose stored events are not numbered 1..N with N = the workflow's counter."""
    cur = await observer.execute(
        "SELECT w.id::text AS id, w.event_sequence AS counter, "
        "coalesce(array_agg(l.sequence ORDER BY l.sequence) "
        "FILTER (WHERE l.sequence IS NOT NULL), '{}') AS seqs "
        "FROM workflows w LEFT JOIN workflow_log l ON l.workflow_id = w.id "
        "WHERE w.id = ANY(%s::uuid[]) GROUP BY w.id, w.event_sequence",
        (workflow_ids,),
    )
    bad = {}
    for row in await cur.fetchall():
        seqs = list(row["seqs"])
        if seqs != list(range(1, len(seqs) + 1)) or len(seqs) != row["counter"]:
            bad[row["id"]] = {"counter": row["counter"], "sequences": seqs}
    return bad


async def event_types(observer: psycopg.AsyncConnection[DictRow], workflow_id: str) -> list[str]:
    cur = await observer.execute(
        "SELECT event_type FROM workflow_log WHERE workflow_id = %s ORDER BY sequence",
        (workflow_id,),
    )
    return [str(row["event_type"]) for row in await cur.fetchall()]


async def usage_rows(observer: psycopg.AsyncConnection[DictRow], workflow_ids: list[str]) -> int:
    cur = await observer.execute(
        "SELECT count(*) AS n FROM token_usage WHERE workflow_id = ANY(%s::uuid[])",
        (workflow_ids,),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["n"])


async def unloadable_checkpoints(database_url: str, workflow_ids: list[str]) -> list[str]:
    """Workflows whose latest checkpoint is missing or does not load whole."""
    bad = []
    async with CheckpointStore(database_url, min_size=1, max_size=2) as store:
        for workflow_id in workflow_ids:
            loaded = await store.saver.aget_tuple(thread_config(workflow_id))
            values = {} if loaded is None else loaded.checkpoint["channel_values"]
            if values.get("workflow_id") != workflow_id:
                bad.append(workflow_id)
    return bad


async def wait_terminal(
    client: httpx.AsyncClient, workflow_ids: list[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """Poll until every workflow is completed, failed or cancelled; their bodies."""
    deadline = time.monotonic() + timeout
    final: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        for workflow_id in workflow_ids:
            if workflow_id in final:
                continue
            response = await client.get(f"/api/workflows/{workflow_id}")
            if response.status_code == 200 and response.json()["status"] in TERMINAL:
                final[workflow_id] = response.json()
        if len(final) == len(workflow_ids):
            return final
        await asyncio.sleep(0.2)
    pending = sorted(set(workflow_ids) - set(final))
    raise AssertionError(f"workflows not finished within {timeout} s: {pending}")


async def wait_status(
    client: httpx.AsyncClient, workflow_id: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await client.get(f"/api/workflows/{workflow_id}")
        if response.status_code == 200:
            body = response.json()
            if body["status"] == status:
                return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"workflow {workflow_id} is {body.get('status')}, expected {status}")
