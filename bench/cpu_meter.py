"""Where the CPU of a benchmark run went, on a host whose cores other processes share.

Three parts, read from `/proc` (Linux): this process (the code under test and the load
driving it), the server backends of the benchmark database (when the server runs on this
host), and every other process on the machine. A ratio measured on a small shared host is
bounded by CPU rather than by round trips; these figures say whose CPU.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Awaitable
from typing import Any, TypeVar

from psycopg import AsyncConnection

_T = TypeVar("_T")


def _backend_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) of a PostgreSQL backend on this host, else None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if not cmdline.read().startswith(b"postgres:"):
                return None  # a server on another host: its pid means nothing here
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK"), sum(ticks) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Measures runs against the database an autocommit `observer` connection is on.

    The observer is only used to list the database's backends before a run; it stays idle.
    """

    def __init__(self, observer: AsyncConnection[Any]) -> None:
        self._observer = observer

    async def measure(self, run: Awaitable[_T], operations: int) -> tuple[_T, dict[str, Any]]:
        """Await `run`; return its result and the CPU it took.

        Returns:
            (result, figures): `client_cpu_us_per_op` (this process), `server_cpu_us_per_op`
            (the database's backends; None when they are not on this host),
            `machine_busy` (share of all cores busy) and `others_busy` (share of all cores
            busy with anything else; None without server figures).
        """
        cur = await self._observer.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        backends = [row[0] for row in await cur.fetchall()]

        def snapshot() -> tuple[float, float | None, float, float]:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            server = [_backend_cpu_s(pid) for pid in backends]
            seen = None if None in server else sum(filter(None, server))
            return (usage.ru_utime + usage.ru_stime, seen, *_machine_cpu_s())

        before = snapshot()
        result = await run
        after = snapshot()
        client = after[0] - before[0]
        server = None if after[1] is None or before[1] is None else after[1] - before[1]
        busy, total = after[2] - before[2], after[3] - before[3]
        return result, {
            "client_cpu_us_per_op": client / operations * 1e6,
            "server_cpu_us_per_op": None if server is None else server / operations * 1e6,
            "machine_busy": busy / total if total else None,
            "others_busy": (
                None if server is None or not total else max(0.0, busy - client - server) / total
            ),
        }
