"""A PostgreSQL server the reliability suite owns, so it may stop, restart and kill it.

Never the machine's shared server: this is a throwaway cluster (the bundled binaries of the
embedded server) in a temporary directory, listening on a free loopback TCP port. One
database per scenario, cloned from a migrated template.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.rows import DictRow, dict_row

from amelia.server.embedded import EmbeddedPostgres, wait_until_accepting
from tests.pg import create_database, drop_database, migrate_to_head, with_database


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnedPostgres:
    """Start with `start()`; `restart()` stops it (fast shutdown) and starts it again."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="amelia-reliability-pg-"))
        self.port = free_port()
        self.server = EmbeddedPostgres(self.directory / "data", port=self.port)
        self.template: str | None = None

    @property
    def admin_url(self) -> str:
        return self.server.url("postgres", tcp=True)

    def url(self, database: str, port: int | None = None) -> str:
        """URL of `database`, on the server's own port or on `port` (a proxy in front)."""
        return f"postgresql://postgres@127.0.0.1:{port or self.port}/{database}"

    def start(self) -> OwnedPostgres:
        self.server.start()
        wait_until_accepting(self.server)
        self.template = create_database(self.admin_url, prefix="amelia_rel_tpl")
        migrate_to_head(with_database(self.admin_url, self.template))
        return self

    def new_database(self) -> str:
        """A fresh migrated database (cloned from the template); its name."""
        assert self.template is not None, "start() first"
        return create_database(self.admin_url, template=self.template, prefix="amelia_rel")

    def drop(self, database: str) -> None:
        drop_database(self.admin_url, database)

    def stop(self, mode: str = "fast") -> None:
        self.server.stop(mode)

    def start_again(self) -> None:
        self.server.start()
        wait_until_accepting(self.server)

    async def restart(self, down_for: float = 2.0, mode: str = "fast") -> tuple[float, float]:
        """Stop, stay down `down_for` seconds, start; (stopped at, accepting at) monotonic."""
        await asyncio.to_thread(self.stop, mode)
        stopped = time.monotonic()
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.start_again)
        return stopped, time.monotonic()

    def destroy(self) -> None:
        self.server.destroy()
        shutil.rmtree(self.directory, ignore_errors=True)


async def observer(url: str) -> psycopg.AsyncConnection[DictRow]:
    """A direct (never proxied) autocommit connection for watching and injecting faults."""
    return await psycopg.AsyncConnection.connect(
        url, autocommit=True, row_factory=dict_row, application_name="reliability-observer"
    )


async def reconnect(url: str, timeout: float = 30.0) -> psycopg.AsyncConnection[DictRow]:
    """`observer(url)`, retried until the server accepts (after a restart)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await observer(url)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
