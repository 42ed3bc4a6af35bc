"""A separate writer process for `bench/cluster.py`.

Usage: python -m bench.event_writer URL WORKFLOW_ID MODE AMOUNT
- MODE `rate:<events per second>`, AMOUNT events: saves them at that rate and prints
  [[sequence, commit time (epoch seconds)], ...].
- MODE `burst`, AMOUNT seconds: saves as fast as it can for that long and prints
  [count, notifications sent to announce them].
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime

from amelia.server.database import Database
from amelia.server.database.repository import WorkflowRepository
from amelia.server.models.events import EventType, WorkflowEvent


def _event(workflow_id: uuid.UUID, n: int) -> WorkflowEvent:
    return WorkflowEvent(
        id=uuid.uuid4(),
        workflow_id=workflow_id,
        sequence=0,
        timestamp=datetime.now(UTC),
        agent="developer",
        event_type=EventType.TASK_COMPLETED,
        message=f"event {n}",
        data={"n": n},
    )


async def write(url: str, workflow_id: uuid.UUID, mode: str, amount: float) -> list[object]:
    async with Database(url, min_size=1, max_size=1, application_name="bench-writer") as db:
        repository = WorkflowRepository(db)
        if mode == "burst":
            count = 0
            deadline = time.monotonic() + amount
            while time.monotonic() < deadline:
                await repository.save_event(_event(workflow_id, count))
                count += 1
            await db.event_hints.flush()
            return [count, db.event_hints.sent_notifications]
        rate = float(mode.removeprefix("rate:"))
        committed: list[object] = []
        started = time.monotonic()
        for n in range(int(amount)):
            wait = started + n / rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            stored = await repository.save_event(_event(workflow_id, n))
            committed.append([stored.sequence, time.time()])
        return committed


def main(argv: list[str]) -> None:
    url, workflow_id, mode, amount = argv
    print(json.dumps(asyncio.run(write(url, uuid.UUID(workflow_id), mode, float(amount)))))


if __name__ == "__main__":
    main(sys.argv[1:])
