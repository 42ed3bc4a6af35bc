"""API latency under load: `amelia serve` as its own process, clients in this one.

- Closed loop: 50 concurrent clients, each sending its next request when the last answers.
- Open loop (fixed offered rate, so a slow server cannot slow the load down): requests are
  scheduled at exact instants and latency is measured from the scheduled instant.
Load comes from `bench/loadgen.py` (raw asyncio HTTP/1.1), not httpx, whose pool is too
slow to load a server with thousands of requests in flight.

The server's pool is 10 connections, all kept open (`AMELIA_DB_POOL_MIN_SIZE` =
`AMELIA_DB_POOL_MAX_SIZE`): SQLAlchemy closes an overflow connection (above the minimum) as
soon as it is returned, so under a backlog every request opened and closed a connection
(111 new sessions in 15 s at 200/s with 10/20), which costs more than the request itself
and turns a short backlog into a collapse. The server's CPU time per request is read from
/proc: unlike latency, it hardly depends on what else runs on the machine.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from bench.common import summarise, timing_dict
from bench.loadgen import run_load
from tests.e2e.serve_process import ServeProcess

CLIENTS = 50
CLOSED_SECONDS = 15.0
OPEN_RATE = 200
OPEN_SECONDS = 30.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _closed_loop(url: str, path: str, seconds: float, pid: int) -> dict[str, Any]:
    cpu_before = _cpu_seconds(pid)
    result = await run_load(url, path, rate=None, seconds=seconds, connections=CLIENTS)
    cpu = _cpu_seconds(pid) - cpu_before
    timing = summarise(path, result.latencies_ns)
    return {
        **timing_dict(timing),
        "errors": result.errors,
        "throughput_rps": len(result.latencies_ns) / seconds,
        "server_cpu_ms_per_request": cpu * 1000 / max(len(result.latencies_ns), 1),
    }


async def _open_loop(url: str, path: str, rate: float, seconds: float) -> dict[str, Any]:
    # Enough connections that a connection is free whenever a request falls due.
    result = await run_load(url, path, rate=rate, seconds=seconds, connections=64)
    timing = summarise(f"{path} @ {rate}/s", result.latencies_ns)
    return {**timing_dict(timing), "errors": result.errors, "rate": rate}


async def _highest_rate(url: str, path: str) -> dict[str, Any]:
    """Step the offered rate up until p99 passes 50 ms (10 s per step)."""
    best = 0
    steps = []
    for rate in (100, 200, 300, 400, 500, 650, 800):
        result = await _open_loop(url, path, rate, 10.0)
        steps.append({"rate": rate, "p99_ms": result["p99_us"] / 1000})
        if result["p99_us"] > 50_000 or result["errors"]:
            break
        best = rate
    return {"highest_rate_p99_under_50ms": best, "steps": steps}


async def _measure(url: str, pid: int) -> dict[str, Any]:
    list_path = "/api/workflows?limit=20"
    usage_path = "/api/usage?preset=90d"
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for path in (list_path, usage_path):  # warm up
            for _ in range(5):
                (await client.get(path)).raise_for_status()
    return {
        "closed_loop_50_clients": {
            "list": await _closed_loop(url, list_path, CLOSED_SECONDS, pid),
            "usage_90d": await _closed_loop(url, usage_path, CLOSED_SECONDS, pid),
        },
        "open_loop_list_200rps_30s": await _open_loop(url, list_path, OPEN_RATE, OPEN_SECONDS),
        "open_loop_list_max_rate": await _highest_rate(url, list_path),
        "usage_median_single_client_ms": await _single(url, usage_path),
    }


async def _single(url: str, path: str, count: int = 20) -> float:
    """Median of sequential requests on one kept-alive connection (a new client per
    request would time the client's own setup, tens of milliseconds, instead)."""
    samples = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            (await client.get(path)).raise_for_status()
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def _keep_history(url: str) -> None:
    """Retention runs when the server stops: keep the seeded year of history, or stopping
    takes minutes of deletes (and the stop timeout kills the server)."""
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute("UPDATE server_settings SET log_retention_days = 3650")
    finally:
        await conn.close()


def run(url: str, log_dir: str) -> dict[str, Any]:
    """Serve the seeded database at `url` and measure; returns the section for latest.json."""
    asyncio.run(_keep_history(url))
    env = {
        "AMELIA_DATABASE_URL": url,
        "AMELIA_DB_POOL_MIN_SIZE": "10",
        "AMELIA_DB_POOL_MAX_SIZE": "10",
    }
    env["AMELIA_HOME"] = os.path.join(log_dir, "home")
    with ServeProcess(env, log=Path(log_dir) / "serve.log") as server:
        assert server.process is not None
        return asyncio.run(_measure(server.url, server.process.pid))


def render(section: dict[str, Any]) -> list[str]:
    closed = section["closed_loop_50_clients"]
    open_loop = section["open_loop_list_200rps_30s"]
    highest = section["open_loop_list_max_rate"]
    lines = [
        "## HTTP API under load",
        "",
        "`amelia serve` in its own process on the seeded database (100,000 workflows, "
        "1,000,000 token rows); load from a second process on the same 2 cores.",
        "",
        "| Scenario | p50 | p99 | throughput | errors | server CPU / request |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label in (
        ("list", "GET /api/workflows?limit=20"),
        ("usage_90d", "GET /api/usage?preset=90d"),
    ):
        r = closed[name]
        cpu = r.get("server_cpu_ms_per_request")
        cpu_text = f"{cpu:.2f} ms" if cpu is not None else "-"
        lines.append(
            f"| {label}, 50 concurrent clients | {r['median_us'] / 1000:.1f} ms | "
            f"{r['p99_us'] / 1000:.1f} ms | {r['throughput_rps']:.0f}/s | {r['errors']} "
            f"| {cpu_text} |"
        )
    lines.append(
        f"| GET /api/workflows, open loop {open_loop['rate']}/s for 30 s | "
        f"{open_loop['median_us'] / 1000:.1f} ms | {open_loop['p99_us'] / 1000:.1f} ms | "
        f"{open_loop['rate']}/s offered | {open_loop['errors']} | - |"
    )
    steps = ", ".join(f"{s['rate']}/s p99 {s['p99_ms']:.0f} ms" for s in highest["steps"])
    best = highest["highest_rate_p99_under_50ms"]
    usage_ms = section["usage_median_single_client_ms"]
    lines += [
        "",
        f"- Highest offered rate with p99 under 50 ms: **{best}/s** (steps: {steps}).",
        f"- `GET /api/usage?preset=90d` alone: {usage_ms:.0f} ms median.",
        "",
    ]
    return lines
