"""A TCP proxy of our own between the server and PostgreSQL, to inject network faults.

Every accepted connection is paired with one to the upstream server and bytes are pumped
both ways. Faults, switchable at any time:

- `latency_s`: added to every round trip (half on the way up, half on the way down); each
  chunk is held until it is due, so back-to-back chunks are not delayed twice.
- `blackhole()` / `heal()`: nothing is delivered in either direction while blackholed, but
  nothing is lost either: bytes wait, as in a network that drops packets TCP keeps
  retransmitting. Connections opened meanwhile are accepted and hang like the others.
- `reset_idle(seconds)`: connections with no traffic for that long are reset (RST) on both
  sides, as a firewall or NAT that forgets idle flows does.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    last_activity: float = field(default_factory=time.monotonic)
    ended: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class TcpProxy:
    """`async with TcpProxy(host, port) as proxy:` listens on 127.0.0.1:`proxy.port`."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.latency_s = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    @property
    def open_links(self) -> int:
        return len(self._links)

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
            self._server = None
        for link in list(self._links):
            self._drop(link, reset=True)
        await asyncio.sleep(0)

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def blackhole(self) -> None:
        """Stop delivering bytes in both directions (they wait, they are not lost)."""
        self._flowing.clear()

    def heal(self) -> None:
        """Deliver again, starting with what waited."""
        self._flowing.set()

    def reset_idle(self, idle_for: float) -> int:
        """Reset every connection with no traffic for `idle_for` seconds; how many."""
        now = time.monotonic()
        idle = [link for link in self._links if now - link.last_activity >= idle_for]
        for link in idle:
            self._drop(link, reset=True)
        return len(idle)

    def reset_all(self) -> int:
        return self.reset_idle(0.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            _reset(writer)  # upstream down: the client sees a refused/reset connection
            return
        link = _Link(client=writer, upstream=up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer)),
            asyncio.create_task(self._pump(link, up_reader, writer)),
        ]

    async def _pump(
        self, link: _Link, source: asyncio.StreamReader, target: asyncio.StreamWriter
    ) -> None:
        # Chunks are read as they come and delivered by a second task when due, in order.
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(link, queue, target))
        try:
            while True:
                chunk = await source.read(65536)
                link.last_activity = time.monotonic()
                queue.put_nowait((time.monotonic() + self.latency_s / 2, chunk))
                if not chunk:
                    break
            await deliver
            link.ended += 1
            if link.ended == 2:  # both directions closed in order
                self._drop(link, reset=False)
        except (OSError, asyncio.IncompleteReadError):
            self._drop(link, reset=True)
        finally:
            deliver.cancel()

    async def _deliver(
        self, link: _Link, queue: asyncio.Queue[tuple[float, bytes]], target: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                due, chunk = await queue.get()
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._flowing.wait()
                if not chunk:  # orderly end of one direction: pass it on
                    with contextlib.suppress(OSError):
                        target.write_eof()
                    return
                target.write(chunk)
                await target.drain()
                link.last_activity = time.monotonic()
        except OSError:
            self._drop(link, reset=True)

    def _drop(self, link: _Link, *, reset: bool) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        for writer in (link.client, link.upstream):
            if reset:
                _reset(writer)
            else:
                writer.close()
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()
