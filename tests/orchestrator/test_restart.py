"""A server process killed with SIGKILL mid-run: its workflows survive in PostgreSQL.

The run's lease outlives the process by at most one lease: until then no other process
touches it; afterwards recovery (or any process's claimer) takes it over and resumes it
from its last checkpoint.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest

from amelia.server.models.events import EventType
from amelia.server.models.state import WorkflowStatus
from amelia.server.orchestrator.service import OrchestratorService
from tests.orchestrator.agent_server import AgentServer
from tests.orchestrator.helpers import wait_for_status
from tests.orchestrator.worker import LEASE_SECONDS

S = WorkflowStatus
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
async def test_sigkill_mid_run_then_resume_from_the_last_checkpoint(
    orchestrator: OrchestratorService, agents: AgentServer, database_url: str, tmp_path: Path
) -> None:
    trees = []
    for name in ("a", "b"):
        tree = tmp_path / name
        (tree / ".git").mkdir(parents=True)
        trees.append(str(tree))
    agents.hold_developer.clear()  # A's developer call will hang until we release it
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.orchestrator.worker",
        database_url,
        *trees,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert worker.stdout is not None
        line = await asyncio.wait_for(worker.stdout.readline(), timeout=60)
        assert line, (await worker.stderr.read()).decode()[-3000:]  # type: ignore[union-attr]
        ids = {k: uuid.UUID(v) for k, v in json.loads(line).items()}
        assert await asyncio.to_thread(agents.developer_started.wait, 30)
        os.kill(worker.pid, signal.SIGKILL)
        assert await worker.wait() == -signal.SIGKILL
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()

    repo = orchestrator.repository
    assert (await repo.get(ids["a"])).workflow_status == S.IN_PROGRESS  # type: ignore[union-attr]
    assert dict(agents.calls) == {"architect": 2, "developer": 1}

    killed_at = time.monotonic()
    # The "restarted server" comes up at once: the dead owner's lease has not expired, so
    # recovery leaves the run alone (it cannot tell a dead owner from a slow one yet).
    assert await orchestrator.recover_interrupted_workflows() == []
    a = await repo.get(ids["a"])
    assert a is not None and a.workflow_status == S.IN_PROGRESS

    # Once the lease has expired, recovery takes the run over and resumes it from the last
    # checkpoint, without anyone calling resume.
    agents.hold_developer.set()
    recovered: list[uuid.UUID] = []
    while not recovered:
        assert time.monotonic() - killed_at < LEASE_SECONDS + 10, "the run was never taken over"
        await asyncio.sleep(0.2)
        recovered = await orchestrator.recover_interrupted_workflows()
    assert recovered == [ids["a"]]
    assert time.monotonic() - killed_at >= LEASE_SECONDS - 1.0  # not before the lease ran out
    done = await wait_for_status(repo, ids["a"], S.COMPLETED, S.FAILED)
    assert done.workflow_status == S.COMPLETED, done.failure_reason
    # The architect and plan validation are not repeated; only the step in flight runs again.
    assert dict(agents.calls) == {"architect": 2, "developer": 2, "reviewer": 1}
    events = await repo.get_recent_events(ids["a"], 100)
    assert [e.event_type for e in events].count(EventType.WORKFLOW_COMPLETED) == 1

    # B was blocked for approval before the kill: it can be approved after the restart.
    assert (await repo.get(ids["b"])).workflow_status == S.BLOCKED  # type: ignore[union-attr]
    await orchestrator.approve_workflow(ids["b"])
    done_b = await wait_for_status(repo, ids["b"], S.COMPLETED, S.FAILED)
    assert done_b.workflow_status == S.COMPLETED, done_b.failure_reason
    assert dict(agents.calls) == {"architect": 2, "developer": 3, "reviewer": 2}
