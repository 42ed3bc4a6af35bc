"""Two OS processes, each with its own engine, write one workflow's events at the same moment.

The database allocates the sequences, so the two writers together produce exactly 1..N with
no gap, no duplicate and no error in either process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from amelia.server.database import Database, schema

REPO_ROOT = Path(__file__).resolve().parents[2]
EVENTS_PER_PROCESS = 500
PROCESSES = 2


async def wait_for(paths: list[Path], processes: list[asyncio.subprocess.Process]) -> None:
    """Until every path exists; fail early if a writer died while starting."""
    for _ in range(6000):
        if all([await asyncio.to_thread(path.exists) for path in paths]):
            return
        for process in processes:
            if process.returncode is not None:
                _, err = await process.communicate()
                pytest.fail(f"writer exited early ({process.returncode}): {err.decode()}")
        await asyncio.sleep(0.01)
    pytest.fail("writers did not get ready within 60 s")


@pytest.mark.slow
async def test_two_processes_allocate_one_gapless_sequence(
    db: Database, database_url: str, tmp_path: Path
) -> None:
    workflow_id = uuid.uuid4()
    async with db.connection() as conn:
        await conn.execute(
            insert(schema.workflows).values(id=workflow_id, issue_id="I-1", worktree_path="/wt")
        )
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{n}" for n in range(PROCESSES)]
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.database.event_log_writer",
            database_url,
            str(workflow_id),
            str(EVENTS_PER_PROCESS),
            str(path),
            str(go),
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for path in ready
    ]
    try:
        await wait_for(ready, writers)
        await asyncio.to_thread(go.touch)  # release both writers at once
        outputs = await asyncio.wait_for(
            asyncio.gather(*(writer.communicate() for writer in writers)), timeout=300
        )
    finally:
        for writer in writers:
            if writer.returncode is None:
                writer.kill()
                await writer.wait()

    per_process: list[list[int]] = []
    for writer, (out, err) in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, err.decode()
        assert b"Error" not in err and b"Traceback" not in err, err.decode()
        per_process.append(json.loads(out))

    total = EVENTS_PER_PROCESS * PROCESSES
    async with db.connection() as conn:
        stored = list(
            await conn.scalars(
                select(schema.workflow_log.c.sequence)
                .where(schema.workflow_log.c.workflow_id == workflow_id)
                .order_by(schema.workflow_log.c.sequence)
            )
        )
        counter = await conn.scalar(
            select(schema.workflows.c.event_sequence).where(schema.workflows.c.id == workflow_id)
        )
    assert stored == list(range(1, total + 1))
    assert counter == total
    assert sorted(s for got in per_process for s in got) == stored
    for got in per_process:
        assert len(got) == EVENTS_PER_PROCESS and got == sorted(got)
    # The writers really raced: their ranges overlap instead of running one after the other.
    first, second = per_process
    assert first[0] < second[-1] and second[0] < first[-1], "writers did not interleave"
