"""A small HTTP/1.1 load generator on raw asyncio streams.

httpx's connection pool schedules queued requests in quadratic time, so with thousands of
requests in flight the client, not the server, sets the pace. This one keeps N keep-alive
connections, each sending the next due request as soon as its previous answer is read.
Latency is measured from the instant a request was *due* (open loop), so a slow server
cannot slow the offered load down and hide its own queueing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    sent: int = 0


async def _read_response(reader: asyncio.StreamReader) -> int:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    status = int(status_line.split()[1])
    length = 0
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def run_load(
    url: str, path: str, *, rate: float | None, seconds: float, connections: int
) -> LoadResult:
    """Offer `rate` requests/s (open loop) or, with `rate=None`, as fast as each of the
    `connections` can go (closed loop); returns latencies and errors."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: application/json\r\n\r\n"
    ).encode()
    result = LoadResult()
    start = time.perf_counter_ns()
    end = start + int(seconds * 1e9)
    interval = int(1e9 / rate) if rate else 0
    next_due = start

    def take_due() -> int | None:
        nonlocal next_due
        due = next_due if rate else time.perf_counter_ns()
        if due >= end:
            return None
        next_due += interval
        return due

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (due := take_due()) is not None:
                wait = (due - time.perf_counter_ns()) / 1e9
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(request)
                result.sent += 1
                try:
                    status = await _read_response(reader)
                except (ConnectionError, asyncio.IncompleteReadError, ValueError):
                    result.errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                result.latencies_ns.append(time.perf_counter_ns() - due)
                if status != 200:
                    result.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return result
