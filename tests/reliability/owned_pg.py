"""A PostgreSQL server the reliability suite owns, so it may stop, restart and kill it.

Never the machine's shared server: this is a throwaway cluster (the bundled binaries of the
embedded server) in a temporary directory, listening on a free loopback TCP port. One
database per scenario, cloned from a migrated template.

A killed pytest leaves its cluster running. Each directory records the pytest process that
owns it, and `remove_stale_clusters()` (at the start of every run) stops and deletes the
clusters whose owner is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg.rows import DictRow, dict_row

from amelia.server.embedded import EmbeddedPostgres, EmbeddedPostgresError, wait_until_accepting
from tests.pg import create_database, drop_database, migrate_to_head, with_database

PREFIX = "amelia-reliability-pg-"
OWNER_FILE = "owner"


def process_started_at(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), None when it does not
    run. With the pid it names one process: a pid alone may have been reused since."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # from field 3 on, after the command name
    return None if fields[0] in ("Z", "X") else fields[19]  # exited; else field 22


def _owner_alive(directory: Path) -> bool:
    try:
        pid_text, started = (directory / OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        # Made by a run that recorded no owner (or is writing it this instant): stale unless
        # a fault suite runs right now, which may be its owner.
        return _another_suite_running()
    return process_started_at(int(pid_text)) == started


def _another_suite_running() -> bool:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        if cmdline.parent.name == str(os.getpid()):
            continue
        with contextlib.suppress(OSError):
            words = cmdline.read_bytes().split(b"\0")
            if any(b"pytest" in w for w in words) and any(b"reliability" in w for w in words):
                return True
    return False


def _stop_postmaster(data_dir: Path) -> None:
    """Stop the cluster in `data_dir` if it runs: pg_ctl, else a signal to its postmaster."""
    try:
        EmbeddedPostgres(data_dir).stop("immediate")
        return
    except EmbeddedPostgresError:
        pass
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process_started_at(pid) is not None:
            time.sleep(0.1)


def remove_stale_clusters(root: Path | None = None) -> list[Path]:
    """Stop and delete the clusters of earlier runs whose pytest is gone; which ones."""
    removed = []
    for directory in sorted(Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*")):
        if not directory.is_dir() or _owner_alive(directory):
            continue
        _stop_postmaster(directory / "data")
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnedPostgres:
    """Start with `start()`; `restart()` stops it (fast shutdown) and starts it again."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=PREFIX))
        pid = os.getpid()
        (self.directory / OWNER_FILE).write_text(f"{pid} {process_started_at(pid)}\n")
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
