"""The server processes sharing the database (`server_processes`): who is alive, since when.

Each `amelia serve` registers a row at start, refreshes `heartbeat_at` while it runs and marks
`stopped_at` on a clean exit. A process is alive while its heartbeat is younger than one lease;
rows of processes gone for a day are deleted when another process registers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, update

from amelia.server.database.base import RepositoryBase
from amelia.server.database.schema import server_processes

_p = server_processes
_NOW = func.clock_timestamp()
_FORGET_AFTER_SECONDS = 24 * 3600


@dataclass(frozen=True)
class ServerProcess:
    """One registered server process as `/api/health` shows it."""

    id: uuid.UUID
    hostname: str
    pid: int
    address: str | None
    version: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    alive: bool

    def as_json(self, owned: list[uuid.UUID]) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "hostname": self.hostname,
            "pid": self.pid,
            "address": self.address,
            "version": self.version,
            "started_at": self.started_at.isoformat(),
            "heartbeat_at": self.heartbeat_at.isoformat(),
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "alive": self.alive,
            "owned_workflows": [str(workflow_id) for workflow_id in owned],
        }


def _age_limit(seconds_param: str) -> Any:
    return _NOW - func.make_interval(0, 0, 0, 0, 0, 0, bindparam(seconds_param))


class ProcessRegistry(RepositoryBase):
    """Registration and heartbeats of server processes."""

    async def register(
        self, process_id: uuid.UUID, hostname: str, pid: int, address: str | None, version: str
    ) -> None:
        """Add this process (and forget processes silent for a day)."""
        async with self._transaction() as conn:
            await conn.execute(
                delete(_p).where(_p.c.heartbeat_at < _age_limit("forget_seconds")),
                {"forget_seconds": float(_FORGET_AFTER_SECONDS)},
            )
            await conn.execute(
                insert(_p).values(
                    id=process_id,
                    hostname=hostname,
                    pid=pid,
                    address=address,
                    version=version,
                    started_at=_NOW,
                    heartbeat_at=_NOW,
                )
            )

    async def heartbeat(self, process_id: uuid.UUID) -> None:
        async with self._connect() as conn:
            await conn.execute(
                update(_p).where(_p.c.id == process_id).values(heartbeat_at=_NOW, stopped_at=None)
            )

    async def mark_stopped(self, process_id: uuid.UUID) -> None:
        async with self._connect() as conn:
            await conn.execute(update(_p).where(_p.c.id == process_id).values(stopped_at=_NOW))

    async def list_processes(self, lease_seconds: float) -> list[ServerProcess]:
        """Every registered process, alive ones first, newest first."""
        alive = (_p.c.stopped_at.is_(None) & (_p.c.heartbeat_at > _age_limit("lease"))).label(
            "alive"
        )
        statement = select(*_p.c, alive).order_by(alive.desc(), _p.c.started_at.desc())
        async with self._connect() as conn:
            rows = (await conn.execute(statement, {"lease": lease_seconds})).mappings().all()
        return [ServerProcess(**dict(row)) for row in rows]
