"""A separate OS process writing events, for `test_event_log_processes.py`.

Usage: python -m tests.database.event_log_writer URL WORKFLOW_ID COUNT READY_FILE GO_FILE

Opens its own engine, touches READY_FILE once connected, waits until GO_FILE exists (so
every writer starts at the same moment), then saves COUNT events with sequence 0 through
`WorkflowRepository.save_event`, one pooled call each as the server does, and prints the
sequences it was given as a JSON list. Any error ends the process with a non-zero status.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from amelia.server.database import Database
from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.events import EventType, WorkflowEvent

START_TIMEOUT_S = 60.0


async def write(url: str, workflow_id: uuid.UUID, count: int, ready: Path, go: Path) -> list[int]:
    async with Database(url, min_size=1, max_size=1, application_name="event-writer") as db:
        repo = WorkflowRepository(db)
        await asyncio.to_thread(ready.touch)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not await asyncio.to_thread(go.exists):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{go} did not appear within {START_TIMEOUT_S}s")
            await asyncio.sleep(0.001)
        sequences = []
        for i in range(count):
            event = WorkflowEvent(
                id=uuid.uuid4(),
                workflow_id=workflow_id,
                sequence=0,
                timestamp=datetime.now(UTC),
                agent="developer",
                event_type=EventType.TASK_COMPLETED,
                message=f"event {i}",
                data={"i": i},
            )
            sequences.append((await repo.save_event(event)).sequence)
        return sequences


def main(argv: list[str]) -> None:
    url, workflow_id, count, ready, go = argv
    sequences = asyncio.run(write(url, uuid.UUID(workflow_id), int(count), Path(ready), Path(go)))
    print(json.dumps(sequences))


if __name__ == "__main__":
    main(sys.argv[1:])
